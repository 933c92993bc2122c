"""The performance settings: one object, read from the environment once, changed only through ``settings``.

    nablax.settings()                           # the settings in effect (a frozen ``Settings``)
    nablax.settings(kernels="numpy")            # change some; returns the settings now in effect
    with nablax.settings(fast=False): ...       # change some for a block, then put the previous ones back

The variables of ``ENVIRONMENT`` (``NABLAX_FAST``, ...; booleans as 1/0) give the initial values, read once when
nablax is imported (a value that cannot be used is ignored with a warning). Settings are per process: worker
processes take theirs from the environment.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Mapping

CPU_KERNELS = ("auto", "numba", "numpy")
CHOICES = {"kernels": CPU_KERNELS, "feature_major": ("auto", "on", "off")}
ENVIRONMENT = {"fast": "NABLAX_FAST", "kernels": "NABLAX_KERNELS", "blas": "NABLAX_BLAS",
               "sweep_threads": "NABLAX_SWEEP_THREADS", "train_threads": "NABLAX_TRAIN_THREADS",
               "numba_parallel": "NABLAX_NUMBA_PARALLEL", "malloc_tuning": "NABLAX_MALLOC_TUNING"}
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How nablax computes, never what: no setting changes a result beyond rounding (README, Performance, has the
    same table). ``fast=False`` is the one switch for an audit."""

    fast: bool = True  # False: Trace's reference sweeps, the NumPy kernels and numpy.matmul; the rest then idle
    kernels: str = "auto"  # "numba", "numpy", or "auto": Numba from kernels.AUTO_MIN_ELEMENTS entries (nablax.kernels)
    blas: str = "numpy"  # the dense products: "numpy", "aocl" or a CBLAS library's path (kernels.blas), loaded when set
    sweep_threads: int = 0  # threads of a sweep, one BLAS thread each; 0: as many as the BLAS (fastpath.sweep_threads)
    train_threads: int = 1  # BLAS threads while Trainer.fit runs; 0: the BLAS's own (fastpath.blas_threads)
    numba_parallel: bool = False  # the Numba kernels compiled with parallel=True (read at their first compilation)
    malloc_tuning: bool = True  # False: backend.tune_allocator() (the command line's, the figure scripts') does nothing
    feature_major: str = "auto"  # MLP sweep signals: "auto" (float64; both dtypes with another BLAS), "on", "off"
    sample_block_bytes: int = 4 << 20  # per-sample MLP sweeps of large batches by blocks of samples; 0: off
    _previous: Settings | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            if f.init and type(value) is not kind:  # strictly: True is no thread count
                raise ValueError(f"setting {f.name} must be a {kind.__name__}, got {value!r}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"setting {name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("sweep_threads", "train_threads", "sample_block_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name} must not be negative, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """The settings that the variables of ``ENVIRONMENT`` in ``env`` give, the defaults for those unset; a value
        that cannot be used is left at its default with a RuntimeWarning (``blas`` is loaded, and warned about, by
        ``nablax.kernels.blas``)."""
        values: dict[str, Any] = {}
        for name, var in ENVIRONMENT.items():
            raw = env.get(var)
            if raw is None:
                continue
            kind = type(getattr(cls, name))
            try:
                value = _BOOLEANS.get(raw.strip().lower(), raw) if kind is bool else kind(raw)
                cls(**{name: value})
                values[name] = value
            except ValueError as err:
                warnings.warn(f"{var}={raw!r} ignored: {err}", RuntimeWarning, stacklevel=2)
        return cls(**values)

    def __enter__(self) -> Settings:
        return self

    def __exit__(self, *exc: Any) -> None:
        global _current
        if self._previous is not None:
            _current = self._previous


_current = Settings.from_env()


def current() -> Settings:
    """The settings in effect (what the fast paths read; ``settings()`` without arguments returns the same)."""
    return _current


def settings(**changes: Any) -> Settings:
    """Read or change the performance settings.

    Parameters
    ----------
    **changes : new values for fields of ``Settings`` (unknown names: TypeError; bad values: ValueError, and
        nothing changes)

    Returns
    -------
    Settings, the settings now in effect. As a context manager (``with nablax.settings(...)``) it puts back the
    settings that were in effect before the call when the block ends.
    """
    global _current
    previous = _current
    new = dataclasses.replace(previous, **changes)
    if new.blas != previous.blas:
        from .kernels.blas import check_blas  # noqa: PLC0415 (loads the library once; kernels import this module)

        check_blas(new.blas)
    _current = new
    returned = dataclasses.replace(new)
    object.__setattr__(returned, "_previous", previous)
    return returned


__all__ = ["Settings", "settings", "current", "ENVIRONMENT", "CPU_KERNELS"]
