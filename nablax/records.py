"""The JSON form of results and configurations, shared by training runs (``nablax.train``), experiment grids and
figure scripts (``nablax.figures``): ``jsonable`` converts, ``config_key`` names a configuration by a short stable
hash, ``write_atomic`` writes a file that a killed process never leaves half-written, ``machine`` says where a result
was computed, ``run_machines`` where a figure's training runs were."""

from __future__ import annotations

import hashlib
import json
import math
import platform
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable


def jsonable(v: Any) -> Any:
    """JSON-able copy: arrays and NumPy scalars to lists and numbers, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return jsonable(v.tolist())
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v


def config_key(config: dict[str, Any]) -> str:
    """A stable short hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(jsonable(config), sort_keys=True).encode()).hexdigest()[:16]


def write_atomic(path: Path, content: str | Callable[[BinaryIO], Any]) -> None:
    """Write ``content`` (text, or a function that writes to a binary file) to ``path`` through ``path.tmp`` and a
    rename: a process killed midway leaves the old file or none, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        if callable(content):
            content(fh)
        else:
            fh.write(content.encode())
    tmp.replace(path)


def machine() -> dict[str, Any]:
    """Versions, platform, the performance settings (``nablax.settings()``) and the BLAS libraries loaded, each with
    the kernels it chose and its thread count: everything that sets the rounding, and a training run is the same bit
    for bit only with the same rounding (OpenBLAS picks its kernels by CPU; README, Data)."""
    import dataclasses

    import numpy
    from threadpoolctl import threadpool_info

    from . import __version__
    from .performance import current

    now = current()
    performance = {f.name: getattr(now, f.name) for f in dataclasses.fields(now) if f.init}
    blas = [{k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return {"nablax": __version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "performance": performance, "blas": blas}


def run_machines(results: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The distinct ``machine`` records of training results (``result.json``): a figure's runs may come from
    several worker processes or hosts, whose BLAS kernels and threads are not the figure script's."""
    found = {json.dumps(r["machine"], sort_keys=True): r["machine"] for r in results if r and r.get("machine")}
    return list(found.values())
