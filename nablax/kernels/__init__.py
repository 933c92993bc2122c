"""Fused kernels for the hot paths of the exact-Jacobian sweeps and of training, dispatched by array type and a
setting. Each function below states its formula; ``cpu``'s docstring says how each kernel computes it.

The sweep's three (``scale_sq_norms``, ``sq_norms``, ``scale``) always return a result: the Numba kernel or the
NumPy reference. The other four are faster ways to compute a formula that lives in its layer or optimiser, not
here: where no kernel takes the arrays they return None, and the caller computes its formula.

Which implementation runs (the setting ``kernels``, see ``nablax.performance``; CuPy arrays always take the
reference or the formula, which run on any array module):

    "auto" (default)  Numba for NumPy arrays of at least ``AUTO_MIN_ELEMENTS`` entries (where it measurably
                      beats NumPy, see BENCHMARKS.md), the NumPy reference below that (no compile time for
                      small problems) and whenever Numba is missing
    "numba"           Numba for every NumPy array it can take (float32/float64 of one dtype; C-contiguous, or
                      for the two sweep kernels also all feature-major, see ``cpu.layout``)
    "numpy"           always the NumPy reference (``cpu.*_reference``), or None (the caller's formula), as under
                      ``nablax.settings(fast=False)``

The dense layers' matrix products go through ``blas.matmul``: NumPy's own, or the CBLAS library of the setting
``blas`` (see ``blas``).
"""

from __future__ import annotations

from typing import Any

from ..backend import NUMPY, numba_available
from ..performance import CPU_KERNELS, Settings, current, settings
from . import blas, cpu
from .blas import blas_library, blas_name, check_blas, set_blas, use_blas

_NDARRAY = NUMPY.xp.ndarray

AUTO_MIN_ELEMENTS = 1 << 13


def set_cpu_kernels(name: str) -> str:
    """Choose "auto", "numba" or "numpy" for NumPy arrays (the setting ``kernels``); returns the previous one."""
    previous = current().kernels
    settings(kernels=name)
    return previous


def cpu_kernels() -> str:
    """The current setting ("auto", "numba" or "numpy")."""
    return current().kernels


def use_cpu_kernels(name: str) -> Settings:
    """``with use_cpu_kernels("numpy"): ...`` runs a block with another setting (``nablax.settings(kernels=name)``)."""
    return settings(kernels=name)


def _numba_takes(*arrays: Any, layouts: str = "C") -> bool:
    """Numba runs when the setting allows it and the arrays are NumPy float32/64 of one dtype, all in one of
    ``layouts`` ("C": C-contiguous; "F": feature-major, see ``cpu.layout``)."""
    s = current()
    if s.kernels == "numpy" or not s.fast:
        return False
    dtype, size, kind = arrays[0].dtype, 0, None
    if dtype.char not in "fd":
        return False
    for a in arrays:  # a plain loop: this runs a few hundred times per training step
        if type(a) is not _NDARRAY or a.dtype != dtype:
            return False
        a_kind = cpu.layout(a)
        if a_kind is None or a_kind not in layouts or (kind is not None and a_kind != kind):
            return False
        size, kind = max(size, a.size), a_kind
    return (s.kernels != "auto" or size >= AUTO_MIN_ELEMENTS) and numba_available()


def scale_sq_norms(v: Any, d: Any, out: Any | None = None) -> tuple[Any, Any, Any]:
    """(v * d, n_in, n_out) for v (k, B, n) and d (B, n); ``out`` (may be v itself) receives v * d."""
    if _numba_takes(v, d, *(() if out is None else (out,)), layouts="CF"):
        return cpu.scale_sq_norms_numba(v, d, out)
    return cpu.scale_sq_norms_reference(v, d, out)


def scale(v: Any, d: Any) -> Any:
    """v *= d in place for v (k, B, n) and d (B, n); Numba only for feature-major arrays (NumPy is as fast as a
    kernel in the C order)."""
    if _numba_takes(v, d, layouts="F"):
        return cpu.scale_numba(v, d)
    return cpu.scale_reference(v, d)


def batch_standardize_vjp(g: Any, y: Any, sigma: Any) -> Any | None:
    """(g - mean_b(g) - y mean_b(g y)) / sigma over the batch axis of g (k, B, d); y (B, d), sigma (1, d)
    (``layers.norm.standardize_vjp``), or None."""
    return cpu.batch_standardize_vjp_numba(g, y, sigma) if _numba_takes(g, y) else None


def batch_standardize(z: Any, eps: float) -> tuple[Any, Any, Any, Any] | None:
    """(y, mean, biased variance, sigma) of z (B, d) over the batch axis; the last three of shape (1, d)
    (``layers.norm.standardize``), or None."""
    return cpu.batch_standardize_numba(z, eps) if z.ndim == 2 and _numba_takes(z) else None


def relu(z: Any) -> tuple[Any, Any] | None:
    """(max(z, 0), d) with d = 1[z > 0], for z of any shape: the rectifier and its derivative (NaN stays NaN;
    ``layers.activations.relu``), or None."""
    return cpu.relu_numba(z) if _numba_takes(z) else None


def subtract_scaled(p: Any, u: Any, a: float) -> Any | None:
    """p -= a * u in place for p and u of one shape (a cast to p's dtype); returns p (``Optimizer.step``), or None
    (p untouched)."""
    takes = _numba_takes(p, u) and p.shape == u.shape and p.flags.writeable  # NumPy first: CuPy has no .writeable
    return cpu.subtract_scaled_numba(p, u, a) if takes else None


def sq_norms(v: Any) -> Any:
    """Per-sample squared norms of v (k, B, n), summed over probes and features: float64 (B,)."""
    if _numba_takes(v, layouts="CF"):
        return cpu.sq_norms_numba(v)
    return cpu.sq_norms_reference(v)


__all__ = ["CPU_KERNELS", "AUTO_MIN_ELEMENTS", "set_cpu_kernels", "cpu_kernels", "use_cpu_kernels",
           "scale_sq_norms", "sq_norms", "scale", "batch_standardize_vjp", "batch_standardize", "relu",
           "subtract_scaled", "set_blas", "use_blas", "check_blas", "blas_name", "blas_library"]
