"""Numba kernels for the hot paths of the exact-Jacobian sweeps and of training.

Each kernel is a faster way to compute a formula written once elsewhere: the sweep's three beside their NumPy
references below (``*_reference``); the layers' and the optimisers' in their own modules, which this package does
not import. For a chunk of probe signals ``v`` (k, B, n) (k probes, B samples, n entries per sample) pulled back
through the network, an activation derivative ``d`` (B, n) between two matrix products, and z (B, n):

    scale_sq_norms          out = v * d,  n_in[b] = sum_{i,j} v[i,b,j]^2,  n_out[b] = sum_{i,j} out[i,b,j]^2
    sq_norms                n[b] = sum_{i,j} v[i,b,j]^2
    scale                   v *= d  (in place, for sweeps that need no norms: whole Jacobians)
    batch_standardize_vjp   out = (v - mean_b(v) - y * mean_b(v * y)) / sigma  (``layers.norm.standardize_vjp``;
                            y the standardised batch (B, n), sigma its per-feature scale)
    batch_standardize       (y, mean, var, sigma): y = (z - mean_b(z)) / sigma, sigma = sqrt(var_b(z) + eps)
                            (``layers.norm.standardize`` over the batch axis; three passes, no temporaries)
    relu                    (y, d) = (max(z, 0), 1[z > 0])  (``layers.activations.relu``)
    subtract_scaled         p -= a * u  (an optimiser's update, ``nablax.optim.Optimizer.step``)

NumPy needs three passes over v for the first (a multiply and two reductions); the kernel reads v once and writes
it back in place (an ``out`` other than v receives a copy of v first; the sweeps pass ``out=v``). The sweep kernels
come in both memory orders of v: sample-major (C-contiguous) and feature-major (``*_fm``: memory ``(n, k, B)``, see
``layout``), the order of float64 MLP sweeps (``nablax.fastpath.Sweep``). Norms are returned in float64. The
sample-major kernel sums each row of n entries in v's own dtype first, then in float64 (float32: relative error
about 4e-8 of the norm at n = 100); the feature-major one sums v^2 over the probes of each feature and takes the
norm after the derivative as d^2 times that sum. ``python scripts/bench_kernels.py`` times every kernel.

Numba is imported lazily (``nablax.backend.numba_module()``); without it ``compiled()`` is None and the callers use
the NumPy formulas (``nablax.kernels``). Kernels compile on first use (cached on disk). They are written with
``prange`` but compiled serial: on 2 cores a parallel kernel between two multi-threaded BLAS products measured no
faster; the setting ``numba_parallel``, when on before their first call, compiles them parallel.
"""

from __future__ import annotations

import functools
import types
from typing import Any

from ..backend import array_module, numba_module
from ..performance import current

Array = Any


# --- NumPy references (any array module) -----------------------------------------------------------------


def sq_norms_reference(v: Array) -> Array:
    """n[b] = sum_{i,j} v[i,b,j]^2 for v (k, B, n); float64 (B,)."""
    return array_module(v).einsum("kbn,kbn->b", v, v, dtype="float64")


def scale_sq_norms_reference(v: Array, d: Array, out: Array | None = None) -> tuple[Array, Array, Array]:
    """(v * d, n_in, n_out) for v (k, B, n) and d (B, n), as three array passes; ``out`` may be v."""
    xp = array_module(v, d)
    n_in = sq_norms_reference(v)
    out = xp.multiply(v, d, out=out)
    return out, n_in, sq_norms_reference(out)


def scale_reference(v: Array, d: Array) -> Array:
    """v *= d in place, for v (k, B, n) and d (B, n); returns v."""
    return array_module(v, d).multiply(v, d, out=v)


# --- Numba -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def compiled() -> Any | None:
    """A namespace with the compiled kernels, or None without Numba. Compilation happens per dtype on first call."""
    numba = numba_module()
    if numba is None:
        return None
    njit, prange, parallel = numba.njit, numba.prange, current().numba_parallel
    np = __import__("numpy")  # inside compiled code only (numba needs the module object for np.empty)

    @njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
    def scale_sq_norms(v, d, n_in, n_out):  # pragma: no cover - compiled
        k, b, n = v.shape  # in place, v <- v * d: each entry is read, then written at the same index, so the loop
        zero = v.dtype.type(0)  # vectorises (with a separate output it would not: it might alias v)
        for s in prange(b):
            acc_in = 0.0
            acc_out = 0.0
            for i in range(k):
                row_in = zero  # one row's sums in v's dtype (float32: no widening inside the vector loop),
                row_out = zero  # added to the float64 sums once per row
                for j in range(n):
                    x = v[i, s, j]
                    y = x * d[s, j]
                    v[i, s, j] = y
                    row_in += x * x
                    row_out += y * y
                acc_in += row_in
                acc_out += row_out
            n_in[s] = acc_in
            n_out[s] = acc_out

    @njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
    def sq_norms(v, n_out):  # pragma: no cover - compiled
        k, b, n = v.shape
        for s in prange(b):
            acc = 0.0
            for i in range(k):
                for j in range(n):
                    x = v[i, s, j]
                    acc += x * x
            n_out[s] = acc

    @njit(fastmath=True, cache=True, nogil=True)
    def scale_sq_norms_fm(vt, dt, n_in, n_out):  # pragma: no cover - compiled
        n, k, b = vt.shape  # vt: (n, k, B) and dt: (n, B), the memory of feature-major v (k, B, n), d (B, n)
        acc_in = np.zeros(b)  # float64 per-sample sums, along the contiguous sample axis
        acc_out = np.zeros(b)
        col = np.empty(b)  # sum over probes of v^2 for one feature j: then sum (v d)^2 = d^2 sum v^2
        for j in range(n):
            col[:] = 0.0
            for i in range(k):  # in place, as above
                for s in range(b):
                    x = vt[j, i, s]
                    col[s] += x * x
                    vt[j, i, s] = x * dt[j, s]
            for s in range(b):
                acc_in[s] += col[s]
                acc_out[s] += col[s] * dt[j, s] * dt[j, s]
        n_in[:] = acc_in
        n_out[:] = acc_out

    @njit(fastmath=True, cache=True, nogil=True)
    def scale_fm(vt, dt):  # pragma: no cover - compiled
        n, k, b = vt.shape
        for j in range(n):
            for i in range(k):
                for s in range(b):
                    vt[j, i, s] *= dt[j, s]

    @njit(fastmath=True, cache=True, nogil=True)
    def sq_norms_fm(vt, n_out):  # pragma: no cover - compiled
        n, k, b = vt.shape
        acc = np.zeros(b)
        for j in range(n):
            for i in range(k):
                for s in range(b):
                    x = vt[j, i, s]
                    acc[s] += x * x
        n_out[:] = acc

    @njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
    def batch_standardize_vjp(g, y, sigma, out):  # pragma: no cover - compiled
        k, b, n = g.shape
        inv_sigma = np.empty(n, g.dtype)
        for j in range(n):
            inv_sigma[j] = 1.0 / sigma[j]
        for i in prange(k):
            m1 = np.zeros(n)  # mean over the batch of g, and of g * y (float64 sums)
            m2 = np.zeros(n)
            for s in range(b):
                for j in range(n):
                    x = g[i, s, j]
                    m1[j] += x
                    m2[j] += x * y[s, j]
            for j in range(n):
                m1[j] /= b
                m2[j] /= b
            for s in range(b):
                for j in range(n):
                    out[i, s, j] = (g[i, s, j] - m1[j] - y[s, j] * m2[j]) * inv_sigma[j]

    @njit(cache=True, nogil=True)
    def batch_standardize(z, eps, y, mean, var, sigma):  # pragma: no cover - compiled
        rows, n = z.shape
        m = np.zeros(n)  # float64 sums, also for float32 data
        for i in range(rows):
            for j in range(n):
                m[j] += z[i, j]
        m /= rows
        s2 = np.zeros(n)
        for i in range(rows):
            for j in range(n):
                c = z[i, j] - m[j]
                s2[j] += c * c
        s2 /= rows
        sd = np.sqrt(s2 + eps)
        inv = 1.0 / sd
        mean[:] = m
        var[:] = s2
        sigma[:] = sd
        for i in range(rows):
            for j in range(n):
                y[i, j] = (z[i, j] - m[j]) * inv[j]

    @njit(cache=True, nogil=True)
    def relu(z, y, d):  # pragma: no cover - compiled; flat views; no fastmath (it may drop zi != zi)
        for i in range(z.size):
            zi = z[i]
            positive = zi > 0
            d[i] = positive
            y[i] = zi if positive or zi != zi else 0.0  # max(z, 0), NaN kept

    @njit(cache=True, nogil=True)
    def subtract_scaled(p, u, a):  # pragma: no cover - compiled; flat views; no fastmath: no fused multiply-add
        for i in range(p.size):
            p[i] -= a * u[i]

    return types.SimpleNamespace(
        scale_sq_norms=scale_sq_norms, sq_norms=sq_norms, batch_standardize_vjp=batch_standardize_vjp,
        scale_sq_norms_fm=scale_sq_norms_fm, sq_norms_fm=sq_norms_fm, scale_fm=scale_fm,
        batch_standardize=batch_standardize, relu=relu, subtract_scaled=subtract_scaled)


def layout(a: Array) -> str | None:
    """"C" for a C-contiguous array; "F" (feature-major) when its last axis moved to the front is C-contiguous,
    e.g. v (k, B, n) stored as (n, k, B), or d (B, n) stored as (n, B); None otherwise."""
    if a.flags.c_contiguous:
        return "C"
    return "F" if _front(a).flags.c_contiguous else None


def _front(a: Array) -> Array:
    """a with its last axis moved to the front: the C-contiguous memory of a feature-major array."""
    return a.transpose((a.ndim - 1,) + tuple(range(a.ndim - 1)))


def feature_major_empty(shape: tuple[int, ...], dtype: Any, xp: Any) -> Array:
    """An uninitialised array of the given (logical) shape that lies in memory feature-major (``layout`` "F")."""
    return xp.empty(shape[-1:] + shape[:-1], dtype=dtype).transpose(tuple(range(1, len(shape))) + (0,))


def scale_sq_norms_numba(v: Array, d: Array, out: Array | None = None) -> tuple[Array, Array, Array]:
    """The fused kernel: the contract of ``scale_sq_norms_reference`` (NumPy arrays only), in place (see above).
    v, d and out are all C-contiguous or all feature-major (``layout``); a fresh out takes v's layout."""
    xp = array_module(v, d)
    fm = layout(v) == "F"
    if out is None:
        out = feature_major_empty(v.shape, v.dtype, xp) if fm else xp.empty_like(v)
    if not _same_array(out, v):
        out[...] = v
    n_in, n_out = xp.empty((2, v.shape[1]), dtype="float64")
    if fm:
        compiled().scale_sq_norms_fm(_front(out), _front(d), n_in, n_out)
    else:
        compiled().scale_sq_norms(out, d, n_in, n_out)
    return out, n_in, n_out


def _same_array(a: Array, b: Array) -> bool:
    """Whether a and b are the same memory seen the same way (one object, or two identical views)."""
    return a is b or (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                      and a.shape == b.shape and a.strides == b.strides)


def scale_numba(v: Array, d: Array) -> Array:
    """v *= d in place for feature-major v (k, B, n) and d (B, n) (``layout`` "F"): NumPy's broadcasting multiply
    runs slowly in that order (40-48 against 14-18 us at the float64 sweeps' chunk shapes); returns v."""
    compiled().scale_fm(_front(v), _front(d))
    return v


def sq_norms_numba(v: Array) -> Array:
    """Per-sample squared norms of v (k, B, n): same contract as ``sq_norms_reference`` (NumPy arrays only,
    sample-major or feature-major)."""
    n = array_module(v).empty(v.shape[1], dtype="float64")
    if layout(v) == "F":
        compiled().sq_norms_fm(_front(v), n)
    else:
        compiled().sq_norms(v, n)
    return n


def batch_standardize_vjp_numba(g: Array, y: Array, sigma: Array) -> Array:
    """The fused batch-norm pullback: ``layers.norm.standardize_vjp`` over axis -2 (NumPy arrays only);
    two passes over g (the two batch means, then the output) instead of about eight."""
    xp = array_module(g, y)
    out = xp.empty(g.shape, dtype=g.dtype)
    compiled().batch_standardize_vjp(g, y, sigma.reshape(-1), out)
    return out


def batch_standardize_numba(z: Array, eps: float) -> tuple[Array, Array, Array, Array]:
    """The batch-norm forward pass in three passes over z (B, d) (mean, variance, y), with no temporaries:
    ``layers.norm.standardize`` over axis -2 (C-contiguous NumPy arrays; sums in float64)."""
    xp = array_module(z)
    y = xp.empty_like(z)
    stats = xp.empty((3, 1, z.shape[1]), dtype=z.dtype)
    compiled().batch_standardize(z, float(eps), y, stats[0, 0], stats[1, 0], stats[2, 0])
    return y, stats[0], stats[1], stats[2]


def relu_numba(z: Array) -> tuple[Array, Array]:
    """The rectifier's y and phi' in one pass over z (C-contiguous NumPy arrays), where NumPy makes five (two
    tests, their union, a selection and a cast); the results of ``layers.activations.relu``, bit for bit."""
    xp = array_module(z)
    y, d = xp.empty_like(z), xp.empty_like(z)
    compiled().relu(z.reshape(-1), y.reshape(-1), d.reshape(-1))
    return y, d


def subtract_scaled_numba(p: Array, u: Array, a: float) -> Array:
    """p -= a * u in one pass, without the temporary a * u (C-contiguous NumPy arrays of one shape); the
    results of ``p -= p.dtype.type(a) * u`` (``Optimizer.step``), bit for bit."""
    compiled().subtract_scaled(p.reshape(-1), u.reshape(-1), p.dtype.type(a))
    return p
