"""What every script in ``paper_figures/`` shares: its command line, its JSON record, and resumable pieces.

A figure script is standalone::

    python paper_figures/<paper>/figN.py [--quick | --cifar PATH] [--out DIR] [--seed S] [--backend numpy|cupy]

and writes ``DIR/figN.png`` and ``DIR/figN.json``. The JSON holds every plotted series::

    {"figure": "...", "settings": {...}, "machine": {...},
     "panels": {"A": {"title": ..., "xlabel": ..., "ylabel": ...,
                      "series": {"<legend name>": {"x": [...], "y": [...], "lo": [...], "hi": [...]}}}}}

(``lo``/``hi`` only where a band is drawn; ``machine``: ``records.machine()``, the versions, settings and BLAS
kernels used.) Expensive pieces go through ``cached``: each piece is stored under ``DIR/.cache/`` as soon as it is
computed, so an interrupted run resumes instead of starting over.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable

from .backend import BLAS_THREAD_VARS, tune_allocator
from .records import config_key, jsonable, machine, write_atomic


def figure_args(description: str, argv: list[str] | None = None, default_out: str = "figures", *,
                data: bool = False, sweep: bool = False, extra: Callable[[argparse.ArgumentParser], None] | None = None
                ) -> argparse.Namespace:
    """The command line every figure script shares, in one parser (so ``--help`` lists every option): ``data=True``
    adds ``--cifar PATH`` (scripts that train or read images), ``sweep=True`` the experiment runner's options and
    ``extra(parser)`` a script's own. The result has ``scale``: "quick" (``--quick``), "cifar" (``--cifar PATH``) or
    "digits" (the papers' architectures on the embedded digits: the default). It also tunes the C allocator
    (``backend.tune_allocator``), as the ``nablax`` command does."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small run that finishes in well under a minute")
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--seed", type=int, default=0, help="base random seed")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="array library: numpy (CPU, default) or cupy (a CUDA GPU; pip install -e '.[gpu]')")
    if data:
        p.add_argument("--cifar", metavar="PATH", default=None,
                       help="run the paper's own data, CIFAR-10: cifar-10-python.tar.gz, a folder holding it, or "
                            "the extracted folder (default: the papers' architectures on the embedded digits)")
    if sweep:
        p.add_argument("--executor", choices=["local", "dask"], default="local",
                       help="where the runs go: in this process (default) or a Dask cluster")
        p.add_argument("--scheduler", default=None, help="a running Dask scheduler's address (default: a LocalCluster)")
        p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
        p.add_argument("--seeds", type=int, default=None,
                       help="seeds per configuration (default: the protocol's); finished seeds are reused")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    if args.quick and getattr(args, "cifar", None):
        p.error("--quick runs on the embedded digits; leave out --cifar, or --quick")
    args.scale = "quick" if args.quick else ("cifar" if getattr(args, "cifar", None) else "digits")
    tune_allocator()  # a figure script owns its process (NABLAX_MALLOC_TUNING=0 says no)
    return args


class FigureRecord:
    """The numbers behind one figure, in the JSON layout above."""

    def __init__(self, figure: str, settings: dict[str, Any]) -> None:
        self.figure, self.settings = figure, dict(settings)
        self.panels: dict[str, dict[str, Any]] = {}

    def panel(self, key: str, title: str, xlabel: str, ylabel: str) -> dict[str, Any]:
        return self.panels.setdefault(key, {"title": title, "xlabel": xlabel, "ylabel": ylabel, "series": {}})

    def add(self, key: str, name: str, x: Any, y: Any, lo: Any = None, hi: Any = None, **extra: Any) -> None:
        if key not in self.panels:
            raise KeyError(f"declare panel {key!r} with .panel() first")
        s = {"x": jsonable(x), "y": jsonable(y)}
        if lo is not None:
            s["lo"], s["hi"] = jsonable(lo), jsonable(hi)
        s.update({k: jsonable(v) for k, v in extra.items()})
        self.panels[key]["series"][name] = s

    def to_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, "settings": jsonable(self.settings), "machine": machine(),
                "panels": jsonable(self.panels)}


def save_figure(fig: Any, record: FigureRecord, out: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``out/name.png`` and ``out/name.json``, print where they went, and close ``fig`` in pyplot."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f"{name}.png", out / f"{name}.json"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(js, json.dumps(record.to_dict(), indent=1))
    print(f"wrote {png} and {js}")
    return png, js


def require_cifar(args: argparse.Namespace, md5: str | None = None) -> None:
    """With ``--cifar PATH``: check that CIFAR-10 is there and sound before any work, and exit with one line that
    says how to supply it when it is not (``md5`` only for test archives)."""
    if not getattr(args, "cifar", None):
        return
    from .data import DataUnavailable, load_cifar10

    try:
        load_cifar10(args.cifar, n_train=1, **({"md5": md5} if md5 else {}))
    except DataUnavailable as err:
        raise SystemExit(f"CIFAR-10 is not usable: {err}") from None


def blas_threads(quick: bool) -> Any:
    """A context for a figure's computation: one BLAS thread for ``--quick`` runs (their matrices are small, and
    extra threads on 2 busy cores mostly wait), the library's default otherwise."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    return threadpool_limits(1 if quick else None)


def sweep_executor(args: argparse.Namespace) -> Any:
    """The experiment runner's executor (``nablax.experiments``) for a figure's ``--executor/--scheduler/--workers``:
    "local", or a Dask cluster (a LocalCluster of ``--workers`` single-threaded processes, or the scheduler given)."""
    if args.executor == "local":
        return "local"
    from .experiments import DaskExecutor

    for var in BLAS_THREAD_VARS:  # one BLAS thread per worker process
        os.environ.setdefault(var, "1")
    executor = DaskExecutor(args.scheduler, n_workers=args.workers, processes=True)
    if args.scheduler is None:  # this script's own worker processes: tuned as this one is
        executor.client.run(tune_allocator)
    return executor


def cached(out: str | Path, config: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()`` once per configuration: the result (JSON-able) is stored in ``out/.cache/<hash>.json`` the
    moment it exists and read back on later runs. Written atomically, so a killed run leaves no half file."""
    folder = Path(out) / ".cache"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config_key(config)}.json"
    if path.exists():
        return json.loads(path.read_text())["result"]
    result = jsonable(compute())
    write_atomic(path, json.dumps({"config": jsonable(config), "result": result}))
    return result
