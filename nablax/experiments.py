"""Experiment grids (architecture x step size x seed x ...) through one executor interface: the experiment runner.

On the command line and in these names a grid of runs is a "sweep" (``nablax sweep FILE``, a sweep file,
``run_sweep``); everywhere else in nablax a sweep is the Jacobian sweep of ``Trace``.

    configs = expand_grid({"data": "digits", "depth": 10, "epochs": 5}, {"arch": ["batch-tanh", "SeLU"], "seed": [0, 1]})
    results = run_sweep(configs, "runs/")                                  # in-process, one after another
    results = run_sweep(configs, "runs/", executor="dask")                 # Dask LocalCluster on this machine
    results = run_sweep(configs, "runs/", executor="dask", scheduler="tcp://host:8786")   # an existing cluster

Each run lives in ``out/<key>/`` where ``key = TrainConfig.key()`` hashes the configuration, so a rerun skips the
runs that finished (``result.json`` exists) without submitting them, and resumes the ones that were interrupted
from their last checkpoint. ``out/index.json`` maps every key to its configuration and status.

Executors have one method, ``map(fn, items)`` (results in the order of ``items``), and ``close()``: the
``LocalExecutor`` (the default) runs in-process, the ``DaskExecutor`` on a Dask cluster (optional:
``pip install -e .[sweep]``; imported only here, when asked for).

A sweep file (``nablax sweep CONFIG``; ``examples/sweep.json``) is JSON, or TOML when it ends in ``.toml``, of the
shape ``SWEEP_SHAPE``: ``base`` holds the options every run shares, ``grid`` the ones to vary.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from pathlib import Path
from typing import Any, Callable

from .records import write_atomic
from .train import TrainConfig, progress_bar, run


def require_distributed() -> Any:
    """``dask.distributed``, or an ImportError that says how to install it."""
    try:
        import distributed  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError as err:
        raise ImportError("the Dask executor needs dask.distributed: install it with `pip install -e .[sweep]` "
                          "(or `pip install 'dask[distributed]'`), or use the local executor") from err
    return distributed


class LocalExecutor:
    """Runs every item in this process, one after another."""

    name = "local"

    def map(self, fn: Callable[[Any], Any], items: list[Any], progress: bool = True) -> list[Any]:
        return [fn(item) for item in progress_bar("sweep", progress, "run", iterable=items)]

    def close(self) -> None:
        pass


class DaskExecutor:
    """Runs items as Dask futures on a LocalCluster (``n_workers``, threads or ``processes``; the default) or on the
    scheduler at ``scheduler``, whose workers must have nablax installed and see ``out`` (and the CIFAR-10 archive)
    at the same paths."""

    name = "dask"

    def __init__(self, scheduler: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1,
                 processes: bool = False) -> None:
        distributed = require_distributed()
        self.cluster = None
        if scheduler:
            self.client = distributed.Client(scheduler)
        else:
            self.cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                                    processes=processes, dashboard_address=None)
            self.client = distributed.Client(self.cluster)

    def map(self, fn: Callable[[Any], Any], items: list[Any], progress: bool = True) -> list[Any]:
        distributed = require_distributed()
        futures = self.client.map(fn, items, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        out: list[Any] = [None] * len(items)
        bar = progress_bar("sweep (dask)", progress, "run", total=len(items))
        for fut in distributed.as_completed(futures):
            out[index[fut.key]] = fut.result()
            bar.update(1)
        bar.close()
        return out

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_executor(kind: str = "local", scheduler: str | None = None, **kw: Any) -> LocalExecutor | DaskExecutor:
    if kind == "local":
        if scheduler:
            raise ValueError("a scheduler address needs executor='dask'")
        return LocalExecutor()
    if kind == "dask":
        return DaskExecutor(scheduler, **kw)
    raise ValueError(f"executor must be 'local' or 'dask', got {kind!r}")


def expand_grid(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[TrainConfig]:
    """Every combination of the ``grid`` values on top of ``base`` (the first grid axis varies slowest)."""
    return [TrainConfig.from_dict({**base, **dict(zip(grid, values))}) for values in itertools.product(*grid.values())]


def run_config(task: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """One run of a sweep: ``(config dict, sweep folder)`` -> its result (resumed or started in ``folder/<key>``).
    A top-level function, so Dask can ship it to workers."""
    config_dict, folder = task
    config = TrainConfig.from_dict(config_dict)
    return run(config, Path(folder) / config.key(), resume=True, progress=False)


def run_sweep(configs: list[TrainConfig | dict[str, Any]], out: str | Path, *, executor: Any = "local",
              scheduler: str | None = None, progress: bool = True, **executor_kw: Any) -> list[dict[str, Any]]:
    """Run every configuration (skipping finished ones) and return their results in order.

    ``executor``: "local", "dask", or an executor object (which the caller then closes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [c if isinstance(c, TrainConfig) else TrainConfig.from_dict(c) for c in configs]
    keys = [c.key() for c in configs]
    done = [out / key / "result.json" for key in keys]
    results = [{**json.loads(d.read_text()), "skipped": True} if d.exists() else None for d in done]
    todo = [i for i, r in enumerate(results) if r is None]
    _write_index(out, configs, keys, results)
    if todo:
        own = isinstance(executor, str)
        ex = make_executor(executor, scheduler, **executor_kw) if own else executor
        watch = _EpochWatcher([(out / keys[i], configs[i].epochs) for i in todo]) if progress and ex.name != "local" else None
        try:
            fresh = ex.map(run_config, [(configs[i].to_dict(), str(out)) for i in todo], progress=progress)
        finally:
            if watch is not None:
                watch.stop()
            if own:
                ex.close()
        for i, r in zip(todo, fresh):
            results[i] = {**r, "skipped": False}
        _write_index(out, configs, keys, results)
    return results  # type: ignore[return-value]


class _EpochWatcher:
    """A progress bar of the epochs finished by runs that train elsewhere (Dask workers show no bars): every few
    seconds it counts the lines of each run's ``metrics.jsonl`` (one per epoch, after epoch 0)."""

    def __init__(self, runs: list[tuple[Path, int]], every: float = 5.0) -> None:
        self.runs, self.every = runs, every
        self.bar = progress_bar("epochs", True, "epoch", total=sum(e for _, e in runs))
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _count(self) -> int:
        paths = [(folder / "metrics.jsonl", epochs) for folder, epochs in self.runs]
        return sum(min(epochs, max(0, len(p.read_bytes().splitlines()) - 1)) for p, epochs in paths if p.exists())

    def _loop(self) -> None:
        while not self.done.wait(self.every):
            self.bar.update(self._count() - self.bar.n)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.bar.update(self._count() - self.bar.n)
        self.bar.close()


def lr_grid(lo: float = 1e-4, hi: float = 1.0, factor: float = 3.0) -> list[float]:
    """A geometric step-size grid lo, lo*factor, ... up to hi (the spec's x3 grid)."""
    out, lr = [], lo
    while lr <= hi * (1 + 1e-9):
        out.append(float(f"{lr:.6g}"))
        lr *= factor
    return out


def search_configs(config: TrainConfig, lrs: list[float], epochs: int) -> list[TrainConfig]:
    """The trial runs of a step-size search: ``config`` for ``epochs`` at each step size, without effective
    depth or Taylor."""
    trial = dataclasses.replace(config, epochs=epochs, taylor=False, measure_effective_depth=False)
    return [dataclasses.replace(trial, lr=lr) for lr in lrs]


def pick_lr(configs: list[TrainConfig], results: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """The step size of the trial with the lowest final training error (diverged: error 1; ties: the larger
    step size), and the table of (lr, train_error, status)."""
    table = [{"lr": c.lr, "train_error": r["final"]["train_error"] if r["status"] == "done" else 1.0,
              "status": r["status"]} for c, r in zip(configs, results)]
    best = min(table, key=lambda row: (row["train_error"], -row["lr"]))
    return best["lr"], table


def grid_search_lr(config: TrainConfig, lrs: list[float], out: str | Path, *, epochs: int = 3,
                   executor: Any = "local", scheduler: str | None = None, progress: bool = True) -> tuple[float, list[dict[str, Any]]]:
    """Train ``config`` for ``epochs`` at every step size of ``lrs`` (through the experiment runner, resumably) and
    return ``pick_lr``'s step size and table."""
    configs = search_configs(config, lrs, epochs)
    return pick_lr(configs, run_sweep(configs, out, executor=executor, scheduler=scheduler, progress=progress))


def _write_index(out: Path, configs: list[TrainConfig], keys: list[str], results: list[Any]) -> None:
    path = out / "index.json"
    index = json.loads(path.read_text()) if path.exists() else {}
    for c, k, r in zip(configs, keys, results):
        index[k] = {"config": c.key_dict(), "status": None if r is None else r.get("status")}
    write_atomic(path, json.dumps(index, indent=1, sort_keys=True))


SWEEP_SHAPE = '{"out": DIR, "base": {OPTION: VALUE, ...}, "grid": {OPTION: [VALUE, ...], ...}}'


def _shape_problem(spec: Any) -> str | None:
    """What keeps a parsed sweep file from the shape ``SWEEP_SHAPE``, or None."""
    if not isinstance(spec, dict):
        return f"the file holds a {type(spec).__name__}, not an object"
    unknown = set(spec) - {"base", "grid", "out"}
    if unknown:
        return f"unknown sweep keys {sorted(unknown)}"
    for key in ("base", "grid"):
        if not isinstance(spec.get(key, {}), dict):
            return f"{key!r} is not an object"
    return next((f"grid axis {k!r} must be a non-empty list" for k, v in spec.get("grid", {}).items()
                 if not isinstance(v, list) or not v), None)


def load_sweep_file(path: str | Path) -> tuple[list[TrainConfig], dict[str, Any]]:
    """(configurations, options) from a sweep file: keys ``base`` and ``grid`` (see the module docstring), and
    optionally ``out``. Anything else raises ValueError naming the file (and the line, for a syntax error) and
    the expected shape ``SWEEP_SHAPE``."""
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            spec = tomllib.loads(text)
        else:
            spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}); expected {SWEEP_SHAPE}") from None
    except ValueError as err:  # tomllib.TOMLDecodeError, whose message gives the line
        raise ValueError(f"{path}: not valid TOML ({err}); expected the tables of {SWEEP_SHAPE}") from None
    problem = _shape_problem(spec)
    if problem:
        raise ValueError(f"{path}: {problem}; expected {SWEEP_SHAPE}")
    try:
        return expand_grid(spec.get("base", {}), spec.get("grid", {})), {"out": spec.get("out")}
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


__all__ = ["LocalExecutor", "DaskExecutor", "make_executor", "expand_grid", "run_config", "run_sweep",
           "load_sweep_file", "require_distributed", "lr_grid", "grid_search_lr", "search_configs", "pick_lr"]
