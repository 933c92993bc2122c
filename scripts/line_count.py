"""Lines of ``nablax/`` by kind: code, docstrings, comments and blank lines (issue 16's line budget).

    python scripts/line_count.py              # the working tree, per file and in total
    python scripts/line_count.py 5fb929b      # the same at a git revision, and the change from it to now

A line is "doc" when it lies in a module, class or function docstring (found with ``ast``), "blank" when it is
empty, "comment" when it starts with ``#``, and "code" otherwise. The kinds add up to ``wc -l``. The last column,
"numpydoc", counts the doc lines that lie in numpydoc sections (from a "Parameters", "Returns", "Yields" or "Raises"
header underlined with dashes to the end of its docstring): they are part of "doc", not a kind of their own.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

KINDS = ("code", "doc", "comment", "blank")
SECTIONS = ("Parameters", "Returns", "Yields", "Raises")
ROOT = Path(__file__).resolve().parent.parent


def kinds_of(source: str) -> dict[str, int]:
    """How many lines of ``source`` are of each kind."""
    lines = source.splitlines()
    kind = ["blank" if not s.strip() else "comment" if s.strip().startswith("#") else "code" for s in lines]
    numpydoc = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                kind[first.lineno - 1:first.end_lineno] = ["doc"] * (first.end_lineno - first.lineno + 1)
                doc = [s.strip() for s in lines[first.lineno - 1:first.end_lineno]]
                starts = [i for i in range(len(doc) - 1) if doc[i] in SECTIONS and doc[i + 1] and set(doc[i + 1]) == {"-"}]
                numpydoc += len(doc) - starts[0] if starts else 0
    return {**{k: kind.count(k) for k in KINDS}, "numpydoc": numpydoc}


def total(counts: dict[str, int]) -> int:
    """All lines (the kinds; numpydoc lines are already doc lines)."""
    return sum(counts[k] for k in KINDS)


def sources(rev: str | None) -> dict[str, str]:
    """Every ``nablax/**.py`` file's text, in the working tree (``rev`` None) or at a git revision."""
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "nablax").rglob("*.py"))}
    git = ["git", "-C", str(ROOT)]
    names = subprocess.run(git + ["ls-tree", "-r", "--name-only", rev, "nablax"], check=True, capture_output=True,
                           text=True).stdout.split()
    return {n: subprocess.run(git + ["show", f"{rev}:{n}"], check=True, capture_output=True, text=True).stdout
            for n in names if n.endswith(".py")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", help="a git revision to compare the working tree with")
    args = parser.parse_args()
    now = {name: kinds_of(text) for name, text in sources(None).items()}
    then = {name: kinds_of(text) for name, text in sources(args.rev).items()} if args.rev else {}
    zero = dict.fromkeys(KINDS + ("numpydoc",), 0)
    print(f"{'file':40s}" + "".join(f"{k:>9s}" for k in KINDS) + f"{'total':>9s}" + ("   change" if args.rev else "")
          + f"{'numpydoc':>10s}")
    for name in sorted(set(now) | set(then)):
        a, b = then.get(name, zero), now.get(name, zero)
        change = f"{total(b) - total(a):+9d}" if args.rev else ""
        print(f"{name:40s}" + "".join(f"{b[k]:9d}" for k in KINDS) + f"{total(b):9d}" + change + f"{b['numpydoc']:10d}")
    for label, counts in (("total now", now), (f"total at {args.rev}", then)):
        if counts:
            sums = {k: sum(c[k] for c in counts.values()) for k in zero}
            print(f"{label:40s}" + "".join(f"{sums[k]:9d}" for k in KINDS) + f"{total(sums):9d}"
                  + " " * (9 if args.rev else 0) + f"{sums['numpydoc']:10d}")


if __name__ == "__main__":
    main()
