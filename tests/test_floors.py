"""The floors of the house hold (DESIGN.md, "The house"): which modules of nablax may import which. Every import
statement counts, also the lazy ones inside functions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nablax"


def imported_modules(path: Path) -> set[str]:
    """The nablax modules a file imports, as dotted names ("nablax.layers.norm"), relative imports resolved."""
    here = ["nablax", *path.relative_to(PACKAGE).with_suffix("").parts]
    if here[-1] == "__init__":
        here.pop()
    else:
        here.pop()  # a module's relative imports start from its package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "nablax" or m.startswith("nablax.")}


def files(where: str) -> list[Path]:
    p = PACKAGE / where
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


@pytest.mark.parametrize("where, forbidden", [
    ("kernels", ("nablax.layers",)),  # a kernel is only a faster way to compute a layer's formula
    ("metrics", ("nablax.losses",)),  # the loss is passed in
    ("train.py", ("nablax.experiments",)),  # the experiment runner drives training, not the other way round
])
def test_a_floor_does_not_import_upward(where, forbidden):
    for path in files(where):
        bad = {m for m in imported_modules(path) if m.startswith(forbidden)}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_the_check_sees_relative_and_lazy_imports():
    assert {"nablax.kernels", "nablax.backend.array_module"} <= imported_modules(PACKAGE / "layers" / "norm.py")
    assert "nablax.experiments.run_sweep" in imported_modules(PACKAGE / "cli.py")  # inside cmd_sweep
