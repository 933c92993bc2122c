"""Numba kernels for the hot path of the exact-Jacobian sweeps, each beside its NumPy reference.

The sweep pulls a chunk of probe signals ``v`` of shape ``(k, B, n)`` (k probes, B samples, n entries per
sample) back through the network. Between two matrix products it multiplies by an activation derivative
``d`` of shape ``(B, n)`` and needs the per-sample squared norms of the signal before and after:

    scale_sq_norms   out = v * d,   n_in[b] = sum_{i,j} v[i,b,j]^2,   n_out[b] = sum_{i,j} out[i,b,j]^2
    sq_norms         n[b] = sum_{i,j} v[i,b,j]^2

NumPy needs three passes over v for the first (a multiply and two reductions); the Numba kernel reads v once,
writes out once. ``out`` may be ``v`` itself, but a separate ``out`` is faster (no aliasing, so the loop vectorises).
Norms are accumulated and returned in float64.

Numba is imported lazily through ``nablax.backend.numba_module()``; without it ``compiled()`` is None and the
callers (``nablax.kernels``) use the NumPy references. Kernels compile on first use (and are cached on disk).
"""

from __future__ import annotations

import functools
from typing import Any

from ..backend import array_module, numba_module

Array = Any
PARALLEL = __import__("os").environ.get("NABLAX_NUMBA_PARALLEL", "0") == "1"


# --- NumPy references (any array module) -----------------------------------------------------------------


def sq_norms_reference(v: Array) -> Array:
    """n[b] = sum_{i,j} v[i,b,j]^2 for v (k, B, n); float64 (B,)."""
    xp = array_module(v)
    return xp.einsum("kbn,kbn->b", v, v, dtype="float64")


def scale_sq_norms_reference(v: Array, d: Array, out: Array | None = None) -> tuple[Array, Array, Array]:
    """(v * d, n_in, n_out) for v (k, B, n) and d (B, n), as three array passes; ``out`` may be v."""
    xp = array_module(v, d)
    n_in = sq_norms_reference(v)
    out = xp.multiply(v, d, out=out)
    return out, n_in, sq_norms_reference(out)


# --- Numba -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def compiled() -> Any | None:
    """A namespace with the compiled kernels, or None without Numba. Compilation happens per dtype on first call."""
    numba = numba_module()
    if numba is None:
        return None
    njit, prange = numba.njit, numba.prange

    @njit(parallel=PARALLEL, fastmath=True, cache=True)
    def scale_sq_norms(v, d, out, n_in, n_out):  # pragma: no cover - compiled
        k, b, n = v.shape
        for s in prange(b):
            acc_in = 0.0
            acc_out = 0.0
            for i in range(k):
                for j in range(n):
                    x = v[i, s, j]
                    y = x * d[s, j]
                    out[i, s, j] = y
                    acc_in += x * x
                    acc_out += y * y
            n_in[s] = acc_in
            n_out[s] = acc_out

    @njit(parallel=PARALLEL, fastmath=True, cache=True)
    def sq_norms(v, n_out):  # pragma: no cover - compiled
        k, b, n = v.shape
        for s in prange(b):
            acc = 0.0
            for i in range(k):
                for j in range(n):
                    x = v[i, s, j]
                    acc += x * x
            n_out[s] = acc

    class Kernels:
        pass

    ns = Kernels()
    ns.scale_sq_norms, ns.sq_norms = scale_sq_norms, sq_norms
    return ns


def scale_sq_norms_numba(v: Array, d: Array, out: Array | None = None) -> tuple[Array, Array, Array]:
    """The fused kernel: same contract as ``scale_sq_norms_reference`` (NumPy arrays only)."""
    xp = array_module(v, d)
    if out is None:
        out = xp.empty(v.shape, dtype=v.dtype)
    n_in = xp.empty(v.shape[1], dtype="float64")
    n_out = xp.empty(v.shape[1], dtype="float64")
    compiled().scale_sq_norms(v, d, out, n_in, n_out)
    return out, n_in, n_out


def sq_norms_numba(v: Array) -> Array:
    """Per-sample squared norms of v (k, B, n): same contract as ``sq_norms_reference`` (NumPy arrays only)."""
    n = array_module(v).empty(v.shape[1], dtype="float64")
    compiled().sq_norms(v, n)
    return n
