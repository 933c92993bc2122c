"""The fast path of the exact sweeps: the numbers of ``Trace``'s reference methods, computed faster.

``Trace.jacobian_blocks``, ``jacobian`` (method "vjp"), ``jacobian_sq_norms`` and ``batch_jacobian_sq_norms`` come
here while the setting ``fast`` is on (the default); with ``nablax.settings(fast=False)`` their reference code runs
instead. The same numbers to rounding (``tests/test_fastpath.py``: every entry point against the reference, on every
architecture), from (measurements: BENCHMARKS.md, "What changed"):

    chunks         of about ``SWEEP_CHUNK_BYTES`` of signal, which stay in cache (``seed_chunks``)
    fused kernels  an activation and the squared norms on both sides of it in one pass, in place (``Sweep.pull_chunk``)
    live seeds     unit seeds that a final rectifier zeroes are not pulled back (``live_seed_plan``)
    lookups        unit seeds pass the first Dense layer as columns of its weight, not a product (``Sweep.pull_units``)
    layout         MLP signals feature-major in memory, the faster shape for OpenBLAS (``Sweep``)
    sample blocks  per-sample MLP sweeps of large batches a block of samples at a time (``sample_blocks``)
    threads        chunks side by side, one BLAS thread each (``run_chunks``, ``sweep_threads``)

The one module outside ``layers/`` that reads layers' weights (``Dense.W``) and derivatives
(``diagonal_derivative``) to skip work.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

from . import kernels
from .backend import array_module
from .layers.base import Array, Cache, flat_size
from .layers.linear import Dense
from .performance import current

SWEEP_CHUNK_BYTES = 1 << 20  # exact sweeps go in chunks of about 1 MiB of signal, which stay in cache (seed_chunks)
MIN_CHUNKS_PER_THREAD = 1  # workers side by side when each gets this many chunks (run_chunks; bench_threads.py)
FEATURE_MAJOR_DTYPES = ("float64",)  # MLP sweeps keep their signals feature-major in these dtypes (Sweep) with
FEATURE_MAJOR_DTYPES_CBLAS = ("float64", "float32")  # numpy.matmul (OpenBLAS), and in these with another BLAS


# --- the entry points (their arguments are checked by Trace) --------------------------------------------------


def jacobian_blocks(tr: Any, src: int, dst: int, batch_level: bool, max_elements: int) -> Iterator[tuple[slice, Array]]:
    """``Trace.jacobian_blocks``: ``(rows, block)`` a chunk of seeds at a time."""
    block = Sweep(tr, src, dst).block_work(batch_level)
    for rows in jacobian_chunks(tr, src, dst, batch_level, max_elements):
        yield rows, block(rows)


def jacobian(tr: Any, j: Array, src: int, dst: int, batch_level: bool, max_elements: int) -> Array:
    """``Trace.jacobian(method="vjp")``, written into j (``(B, D_dst, D_src)`` or ``(B, D_dst, B, D_src)``)."""
    xp, b = tr.xp, tr.batch_size
    blocks = None if batch_level else sample_blocks(tr, src, dst)
    if blocks is not None:
        for s0, s1 in blocks:
            jacobian(sample_block(tr, s0, s1, src, dst), j[s0:s1], src, dst, False, max_elements)
        return j
    sweep = Sweep(tr, src, dst)
    plan = None if batch_level else live_seed_plan(tr, dst, src)
    if plan is not None:  # rows of J that a final rectifier zeroes are not computed
        j[...] = 0

        def fill_live(rows: slice, _: None) -> None:
            units = seed_units(tr, plan, rows)
            j[xp.arange(b)[None, :], units] = sweep.pull_units(units).reshape(rows.stop - rows.start, b, -1)

        run_chunks(fill_live, seed_chunks(tr, plan[1].shape[1], src, dst, max_elements), threads_for(tr))
        return j
    rows_view = j.reshape(b * j.shape[1], -1) if batch_level else j.transpose(1, 0, 2)  # seeds first
    block = sweep.block_work(batch_level)

    def fill(rows: slice, _: None) -> None:
        rows_view[rows] = block(rows).reshape(rows_view[rows].shape)

    run_chunks(fill, jacobian_chunks(tr, src, dst, batch_level, max_elements), threads_for(tr))
    return j


def sq_norms(tr: Any, src: int, dst: int, per_sample: bool, max_elements: int) -> Array:
    """``Trace._sq_norms``: the squared norms (n_pos, B) of the identity-seeded sweep from dst. When the layer before
    dst is diagonal, a seed e_(b,j) leaves it as phi'(z_bj) e_(b,j): only those with phi'(z_bj) != 0 are pulled
    further, batch-level exactly those, per sample each sample's own (``live_seed_plan``, ``Sweep.pull_units``)."""
    xp = tr.xp
    blocks = sample_blocks(tr, src, dst) if per_sample else None
    if blocks is not None:
        return xp.concatenate([sq_norms(sample_block(tr, s0, s1, src, dst), src, dst, True, max_elements)
                               for s0, s1 in blocks], axis=1)
    b, d_dst = tr.batch_size, flat_size(tr.values[dst].shape[1:])
    acc = xp.zeros((dst - src + 1, b), dtype="float64")  # per-sample sums (float64 also for float32 nets)
    diag = tr.network.layers[dst - 1].diagonal_derivative(tr.caches[dst - 1]) if dst > src else None
    sweep = Sweep(tr, src, dst)
    if per_sample:  # unit seeds (only those a final rectifier lets through, when it has zeros)
        acc[dst - src] = d_dst  # the d_dst unit seeds per sample at dst
        plan = live_seed_plan(tr, dst, src)
        n_seeds = d_dst if plan is None else plan[1].shape[1]

        def pull(rows: slice, part: Array) -> None:
            sweep.pull_units(seed_units(tr, plan, rows), part)
    elif diag is None:
        n_seeds = b * d_dst

        def pull(rows: slice, part: Array) -> None:
            sweep.pull_chunk(tr.identity_seeds(dst, rows, False), dst, part)
    else:  # batch-level: only the (b, j) that the final diagonal layer lets through
        acc[dst - src] = d_dst  # b * d_dst unit seeds at dst
        scale = diag.reshape(-1)
        live = xp.flatnonzero(scale)
        n_seeds = int(live.size)

        def pull(rows: slice, part: Array) -> None:
            idx = live[rows]
            seeds = xp.zeros((idx.size, scale.size), dtype=scale.dtype)
            seeds[xp.arange(idx.size), idx] = scale[idx]
            sweep.pull_chunk(seeds.reshape((idx.size,) + tuple(diag.shape)), dst - 1, part)

    pulled = run_chunks(pull, seed_chunks(tr, n_seeds, src, dst, max_elements), threads_for(tr),
                        lambda: xp.zeros_like(acc))
    return (acc if pulled is None else acc + pulled).astype(tr.values[0].dtype)


# --- one sweep -----------------------------------------------------------------------------------------------


class Sweep:
    """How one sweep from dst back to src runs: ``derivs``, phi'(z) (B, *shape) of every diagonal layer p (an
    activation) in the range by p, and ``feature_major``, the memory order of its signals.

    Feature-major: the signal, logical shape (k, B, n), lies in memory as (n, k, B), its (probe, sample) rows
    contiguous, which OpenBLAS multiplies faster (BENCHMARKS.md, "What changed"). Used for NumPy arrays of the
    dtypes of ``feature_major_dtypes`` on chains of Dense and diagonal layers of flat data, where every step keeps
    the order; the derivatives are then copied transposed, once per sweep, so the fused kernel reads them in the
    signal's order. Anything else (batch norm, convolutions, residual blocks) keeps the C order its kernels expect.
    """

    def __init__(self, tr: Any, src: int, dst: int) -> None:
        layers, caches = tr.network.layers, tr.caches
        self.tr, self.src, self.dst = tr, src, dst
        self.derivs = {p: d for p in range(src + 1, dst + 1)
                       if (d := layers[p - 1].diagonal_derivative(caches[p - 1])) is not None}
        self.feature_major = (tr.network.backend.name == "numpy" and tr.values[src].dtype.name in feature_major_dtypes()
                              and is_mlp_chain(tr, src, dst))
        if self.feature_major:
            self.derivs = {p: tr.xp.ascontiguousarray(d.T).T for p, d in self.derivs.items()}

    def block_work(self, batch_level: bool) -> Callable[[slice], Array]:
        """The rows of J from dst back to src for one chunk of identity seeds at dst."""
        if batch_level:
            return lambda rows: self.pull_chunk(self.tr.identity_seeds(self.dst, rows, False), self.dst)
        return lambda rows: self.pull_units(seed_units(self.tr, None, rows))

    def pull_chunk(self, v: Array, start: int, acc: Array | None = None, owned: bool = False) -> Array:
        """Pull a chunk of probe signals v (k, *shape_start) from start back to src and return it at src.

        With ``acc`` (float64, (dst - src + 1, B) or larger), add every position's per-sample squared norms
        to ``acc[p - src]`` on the way; a diagonal layer (an activation) and the norms on both sides of it take
        one fused kernel (``kernels.scale_sq_norms``). Diagonal layers multiply in place: v is copied once at
        the start, and every later signal is a fresh vjp result or a view of one, so nothing outside the sweep
        is overwritten (``owned``: v is the caller's fresh array, in the sweep's layout, and is used as it is).
        """
        tr, src, b = self.tr, self.src, self.tr.batch_size
        if not (owned and kernels.cpu.layout(v) == ("F" if self.feature_major else "C")):
            v = feature_major_copy(v) if self.feature_major else tr.xp.array(v, copy=True, order="C")
        known = None  # per-sample squared norms of v when a fused kernel already gave them
        for p in range(start, src, -1):
            d = self.derivs.get(p)
            if d is not None and acc is None and not v.flags.writeable:
                v = v * d
            elif d is not None and acc is None:
                v = kernels.scale(v.reshape(-1, b, d.size // b), d.reshape(b, -1)).reshape(v.shape)
            elif d is not None:
                v3 = v.reshape(-1, b, d.size // b)
                out, n_in, known = kernels.scale_sq_norms(v3, d.reshape(b, -1), out=v3)
                acc[p - src] += n_in
                v = out.reshape(v.shape)
            else:
                if acc is not None:
                    acc[p - src] += known if known is not None else kernels.sq_norms(v.reshape(v.shape[0], b, -1))
                known = None
                v = tr.network.layers[p - 1].vjp(tr.caches[p - 1], v)
        if acc is not None:
            acc[0] += known if known is not None else kernels.sq_norms(v.reshape(v.shape[0], b, -1))
        return v

    def pull_units(self, units: Array, acc: Array | None = None) -> Array:
        """Pull per-sample unit seeds ``e_units[i, b]`` (units (k, B)) from dst back to src; like ``pull_chunk``,
        except that ``acc`` gets the norms below dst only (the caller knows those at dst), and that the seeds stay
        sparse while they can:

            through diagonal layers     c e_u  ->  c phi'(z_bu) e_u          (a lookup)
            through the first Dense     c e_u  ->  c W[:, u]                 (a column of W, no matrix product)

        after which the dense signal goes on through ``pull_chunk``. Unit seeds at the output of an MLP (a Dense
        layer, and any diagonal layers after it) so skip one matrix product of the sweep's L.
        """
        tr, src, dst, derivs = self.tr, self.src, self.dst, self.derivs
        xp, layers = tr.xp, tr.network.layers
        k, b = units.shape
        coef, p = xp.ones((k, b), dtype=tr.values[dst].dtype), dst  # seeds coef[i, b] e_units[i, b] at p

        def by_lookup(p: int) -> bool:  # the layer below p is Dense on flat data
            return p > src and isinstance(layers[p - 1], Dense) and tr.values[p].ndim == 2

        while p > src and p in derivs:
            coef = coef * xp.take_along_axis(derivs[p].reshape(b, -1), units.T, axis=1).T
            p -= 1
            if acc is not None and (p in derivs and p > src or by_lookup(p)):  # else pull_chunk adds p's norms
                acc[p - src] += (coef.astype("float64") ** 2).sum(axis=0)
        if by_lookup(p):
            W = layers[p - 1].W  # (d_in, d_out): the pullback of e_u is row u of W^T, that is column u of W
            if self.feature_major:  # take() lays the columns out (d_in, k, B), the feature-major memory
                v = (xp.take(W, units, axis=1) * coef).transpose(1, 2, 0)
            else:
                v = W.T[units] * coef[:, :, None]
            return self.pull_chunk(v, p - 1, acc, owned=True)
        shape = tuple(tr.values[p].shape)
        v = xp.zeros((k, b, flat_size(shape[1:])), dtype=coef.dtype)
        v[xp.arange(k)[:, None], xp.arange(b)[None, :], units] = coef
        v = v.reshape((k,) + shape)
        if p == dst:  # dst's norms are the caller's: take the first step here
            if p == src:
                return v
            v, p = layers[p - 1].vjp(tr.caches[p - 1], v), p - 1
        return self.pull_chunk(v, p, acc, owned=True)  # fresh; copied only if not in the sweep's layout


def is_mlp_chain(tr: Any, src: int, dst: int) -> bool:
    """Whether layers src+1..dst are Dense and diagonal layers on flat data (every cache then holds per-sample,
    batch-first arrays)."""
    layers, caches = tr.network.layers, tr.caches
    return (all(tr.values[p].ndim == 2 for p in range(src, dst + 1))
            and all(isinstance(layers[p - 1], Dense) or layers[p - 1].diagonal_derivative(caches[p - 1]) is not None
                    for p in range(src + 1, dst + 1)))


def feature_major_dtypes() -> tuple[str, ...]:
    """Dtypes whose MLP sweeps run feature-major (the setting ``feature_major``: "auto", "on" or "off"); "auto"
    adds float32 with another BLAS, where it measured faster too (BENCHMARKS.md, "The BLAS")."""
    s = current()
    if s.feature_major != "auto":
        return FEATURE_MAJOR_DTYPES_CBLAS if s.feature_major == "on" else ()
    return FEATURE_MAJOR_DTYPES if s.blas == "numpy" else FEATURE_MAJOR_DTYPES_CBLAS


def feature_major_copy(v: Array) -> Array:
    """A copy of v (k, B, n) that lies in memory as (n, k, B) (see ``Sweep``)."""
    out = kernels.cpu.feature_major_empty(v.shape, v.dtype, array_module(v))
    out[...] = v
    return out


# --- seeds ---------------------------------------------------------------------------------------------------


def live_seed_plan(tr: Any, dst: int, src: int) -> tuple[Array, Array] | None:
    """Per-sample seeds that survive the layer before dst, when it is diagonal with zeros (a rectifier).

    A unit seed e_j at dst leaves a diagonal layer as phi'(z_bj) e_j, which is zero where the unit is off.
    Returns ``(phi' as (B, n), units (B, m))``: each sample's units ordered live first, m = the most live
    units of any sample; a sweep from dst - 1 needs only these m seeds per sample instead of n (about 0.6 n
    after a ReLU). None when no seed can be dropped.
    """
    d = tr.network.layers[dst - 1].diagonal_derivative(tr.caches[dst - 1]) if dst > src else None
    if d is None:
        return None
    d2 = d.reshape(d.shape[0], -1)
    live = d2 != 0
    m = int(live.sum(axis=1).max())
    if m == d2.shape[1]:
        return None
    return d2, tr.xp.argsort(~live, axis=1)[:, :m]


def seed_units(tr: Any, plan: tuple[Array, Array] | None, rows: slice) -> Array:
    """The units (k, B) of a chunk of per-sample unit seeds at dst: seed i of sample b is ``e_units[i, b]``;
    ``rows`` of dst's units (the same in every sample), or of each sample's own units in ``plan``
    (``live_seed_plan``: live units first; padding units are off, and their seeds vanish below dst)."""
    if plan is not None:
        return plan[1][:, rows].T
    xp = tr.xp
    return xp.broadcast_to(xp.arange(rows.start, rows.stop)[:, None], (rows.stop - rows.start, tr.batch_size))


def seed_chunks(tr: Any, n_seeds: int, src: int, dst: int, max_elements: int) -> list[slice]:
    """The chunks of an exact sweep between src and dst over n_seeds seeds: at most max_elements signal entries,
    and about SWEEP_CHUNK_BYTES, so that each layer's product and the fused kernel after it work in cache."""
    entries = max(1, min(max_elements, SWEEP_CHUNK_BYTES // tr.values[0].dtype.itemsize))
    return list(tr.probe_chunks(n_seeds, entries, max(int(tr.values[p].size) for p in range(src, dst + 1))))


def jacobian_chunks(tr: Any, src: int, dst: int, batch_level: bool, max_elements: int) -> list[slice]:
    n_seeds = flat_size(tr.values[dst].shape[1:]) * (tr.batch_size if batch_level else 1)
    return seed_chunks(tr, n_seeds, src, dst, max_elements)


# --- sample blocks ---------------------------------------------------------------------------------------------


def sample_blocks(tr: Any, src: int, dst: int) -> list[tuple[int, int]] | None:
    """Sample ranges for a per-sample sweep of a large batch through an MLP chain, or None. Every chunk reads
    every activation derivative in the range (at batch 1000, width 100 and depth 50: 40 MB); a block of samples
    at a time (``sample_block``), each block's derivatives (about ``sample_block_bytes``) stay in cache while all
    its probes pass. Blocks of equal size; per-sample sweeps do not mix samples."""
    block_bytes = current().sample_block_bytes
    if (tr.couples_batch or block_bytes <= 0 or tr.network.backend.name != "numpy" or not is_mlp_chain(tr, src, dst)):
        return None  # (a CPU cache matter: a GPU wants the whole batch at once)
    per_sample = sum(int(tr.values[p].size) // tr.batch_size * tr.values[p].dtype.itemsize
                     for p in range(src + 1, dst + 1)
                     if tr.network.layers[p - 1].diagonal_derivative(tr.caches[p - 1]) is not None)
    size = max(1, block_bytes // max(1, per_sample))
    if per_sample == 0 or size >= tr.batch_size:
        return None
    n_blocks = -(-tr.batch_size // size)
    edges = [round(i * tr.batch_size / n_blocks) for i in range(n_blocks + 1)]  # blocks of equal size (+-1)
    return list(zip(edges[:-1], edges[1:]))


def sample_block(tr: Any, s0: int, s1: int, src: int, dst: int) -> Any:
    """The pass tr restricted to samples s0:s1, as views: values everywhere, and the caches of layers
    src+1..dst (an MLP chain, whose caches hold batch-first arrays only); other caches are left whole."""

    def cut(cache: Cache) -> Cache:
        return Cache(**{k: v[s0:s1] if hasattr(v, "shape") and v.shape[:1] == (tr.batch_size,) else v
                        for k, v in vars(cache).items()})

    caches = [cut(c) if src <= i < dst else c for i, c in enumerate(tr.caches)]
    return type(tr)(tr.network, [v[s0:s1] for v in tr.values], caches, tr.mode)


# --- threads ---------------------------------------------------------------------------------------------------


def sweep_threads() -> int:
    """How many threads an exact sweep on the CPU uses, each with one BLAS thread (``run_chunks``): the setting
    ``sweep_threads`` if not 0, else the BLAS's current thread count (so ``OPENBLAS_NUM_THREADS=1`` or a
    ``threadpoolctl`` limit of 1 keeps sweeps serial), at most the CPUs this process may use."""
    wanted = current().sweep_threads
    if wanted:
        return wanted
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    blas = [lib["num_threads"] for lib in _threadpools(kernels.blas_library()).info() if lib["user_api"] == "blas"]
    return max(1, min([cpus] + blas))


def threads_for(tr: Any) -> int:
    return sweep_threads() if tr.network.backend.name == "numpy" else 1


@functools.lru_cache(maxsize=None)
def _threadpools(blas: str) -> Any:
    """threadpoolctl's view of the loaded thread pools, looked up again when ``kernels.set_blas`` loads a library."""
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415 (a few ms to set up, so only once)

    return ThreadpoolController()


_limits_lock = threading.Lock()
_limits: list[int] = []  # the BLAS thread counts that the blas_threads blocks running now ask for
_own_counts: Any = None  # threadpoolctl's limiter of the first of them: it restores the BLAS's own counts


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """A block in which the BLAS uses at most ``n`` threads (0: leaves it alone). threadpoolctl's limits hold for
    the whole process, so blocks that run at once in several threads (a sweep's, a threaded Dask worker's) share
    one: the smallest count asked for, until the last block ends and the BLAS gets its own counts back. (OpenBLAS
    0.3.31 ignores the counts other threads set once the main thread has set one: their blocks then keep it.)"""
    global _own_counts
    if not n:
        yield
        return
    pools = _threadpools(kernels.blas_library())
    with _limits_lock:
        _limits.append(n)
        limiter = pools.limit(limits=min(_limits), user_api="blas")
        if _own_counts is None:
            _own_counts = limiter
    try:
        yield
    finally:
        with _limits_lock:
            _limits.remove(n)
            if _limits:
                pools.limit(limits=min(_limits), user_api="blas")
            else:
                _own_counts.restore_original_limits()
                _own_counts = None


def run_chunks(work: Callable[[slice, Any], None], chunks: list[slice], threads: int,
               new_state: Callable[[], Any] | None = None) -> Any:
    """``work(rows, state)`` for every chunk, always with one BLAS thread (on a shared machine BLAS threads wait
    for a busy core at every small product: BENCHMARKS.md, "Threads on a shared machine"). On ``threads`` workers
    side by side when each gets ``MIN_CHUNKS_PER_THREAD`` chunks, each taking the next chunk when done (NumPy's
    products and nablax's Numba kernels release the GIL), else serially in this thread. With ``new_state`` (e.g.
    an accumulator) every chunk works on its own fresh state, and the states are added up in chunk order as they
    come in, so that the sum is the same, bit for bit, for any number of threads and any timing. Returns that sum
    (None without ``new_state`` or chunks)."""
    n = max(1, min(threads, len(chunks) // MIN_CHUNKS_PER_THREAD))
    todo = iter(enumerate(chunks))  # shared: next() on it is atomic under the GIL
    lock, waiting, total, next_k = threading.Lock(), {}, None, 0

    def worker(_: int) -> None:
        nonlocal total, next_k
        for k, rows in todo:
            state = None if new_state is None else new_state()
            work(rows, state)
            if state is not None:
                with lock:  # add the finished chunks in order; a chunk that finished early waits for those before it
                    waiting[k] = state
                    while next_k in waiting:
                        part = waiting.pop(next_k)
                        if total is None:
                            total = part
                        else:
                            total += part  # in place: the chunks' own states
                        next_k += 1

    with blas_threads(1), ThreadPoolExecutor(n) as pool:
        if n == 1:
            worker(0)  # (no thread starts)
        else:
            list(pool.map(worker, range(n)))
    return total
