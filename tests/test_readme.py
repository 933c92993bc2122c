"""The README's code runs as written (docs that match the code)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_engine_example_runs(tmp_path, monkeypatch):
    code = re.search(r"## Using the engine\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "net.npz").exists()


def test_readme_own_layer_check_runs_and_catches_a_wrong_vjp():
    """The "Checking a layer of your own" example passes, and fails once its vjp loses the factor 2."""
    import pytest

    from nablax.testing import DerivativeError, dottest

    code = re.search(r"### Checking a layer of your own\n\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    square, x = namespace["Square"](), namespace["x"]
    square.vjp = lambda cache, dy: cache.x * dy
    with pytest.raises(DerivativeError, match="adjoint"):
        dottest(square, x)


def test_readme_quickstart_is_two_commands():
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", README.read_text(), re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert "nablax figures --quick" in block[0] and "pytest" in block[1]
    assert "pytest" in (README.parent / ".ci" / "run").read_text()
