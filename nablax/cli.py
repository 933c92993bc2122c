"""The ``nablax`` command.

    nablax figures [--quick] [--out DIR] [--only NAME ...]   regenerate the paper figures (paper_figures/)
    nablax info                                              architectures, backends, file format
    nablax gsc ...                                           per-layer GSC, pre-activation std, sign diversity
    nablax shatter ...                                       shattered-gradients measurements on the 1-D grid

Each subcommand lives in a ``cmd_<name>`` function below; long-running ones show a progress bar.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from . import __version__


def find_figure_scripts(root: Path | None = None) -> list[Path]:
    """Every paper figure script: ``paper_figures/<paper>/<name>.py``, in a stable order."""
    candidates = [root] if root else [Path.cwd() / "paper_figures", Path(__file__).resolve().parent.parent / "paper_figures"]
    for base in candidates:
        if base is not None and base.is_dir():
            return sorted(p for p in base.glob("*/*.py") if not p.name.startswith("_"))
    raise FileNotFoundError("no paper_figures/ folder found: run `nablax figures` from the nablax repository "
                            "(it is installed with `pip install -e .`)")


def cmd_figures(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    scripts = find_figure_scripts(Path(args.root) if args.root else None)
    if args.only:
        scripts = [s for s in scripts if any(o in f"{s.parent.name}/{s.stem}" for o in args.only)]
        if not scripts:
            print(f"no figure script matches {args.only}", file=sys.stderr)
            return 2
    out = Path(args.out)
    failed = []
    bar = tqdm(scripts, desc="figures", unit="fig", file=sys.stderr)
    for script in bar:
        name = f"{script.parent.name}/{script.stem}"
        bar.set_postfix_str(name)
        cmd = [sys.executable, str(script), "--out", str(out / script.parent.name), "--seed", str(args.seed)]
        if args.quick:
            cmd.append("--quick")
        t0 = time.perf_counter()
        env = {**os.environ, "MPLBACKEND": "Agg"}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            failed.append(name)
            tqdm.write(f"FAILED {name} ({dt:.1f}s):\n{res.stderr[-3000:]}", file=sys.stderr)
        else:
            for line in res.stdout.strip().splitlines():
                tqdm.write(f"{name}: {line}")
    print(f"{len(scripts) - len(failed)} of {len(scripts)} figures written under {out}/")
    return 1 if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    from .architectures import ARCHITECTURES
    from .backend import gpu_available, numba_available
    from .network import describe_file_format

    print(f"nablax {__version__}")
    print(f"backends: numpy (always), numba kernels: {'yes' if numba_available() else 'no'}, "
          f"cupy GPU: {'yes' if gpu_available() else 'no'}")
    print("architectures: " + ", ".join(ARCHITECTURES))
    print(describe_file_format())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nablax", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"nablax {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser("figures", help="regenerate the paper figures into a folder")
    f.add_argument("--quick", action="store_true", help="small runs that finish in well under a minute each")
    f.add_argument("--out", default="figures", help="output folder (default: figures/)")
    f.add_argument("--only", nargs="*", help="substrings of <paper>/<figure> to run, e.g. gradients_explode/fig1")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--root", help="the paper_figures/ folder (default: found from the current directory)")
    f.set_defaults(func=cmd_figures)

    i = sub.add_parser("info", help="architectures, backends and the network file format")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
