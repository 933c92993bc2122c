"""Network (a sequence of layers) and Trace (one forward pass, with the values at every position).

Positions: position 0 is the network input, position p is the output of the p-th layer (layers counted from 1),
position P = len(layers) is the network output. A loss, if any, sits after position P.

    net = Network([Dense(W1, b1), ReLU(), Dense(W2, b2)], in_shape=(3,))
    tr = net.forward(x)                     # x (B, 3)
    tr.values[p]                            # the value at position p
    tr.pullback(v, dst=3, src=1)            # J^T v from position 3 back to position 1 (v may have probe axes)
    tr.pushforward(u, src=0, dst=2)         # J u from position 0 to position 2
    tr.jacobian(src=0, dst=3)               # exact per-sample Jacobians (B, d_3, d_0)
    tr.jacobian_sq_norms(dst=3)             # ||J_{3<-p}||_F^2 for every p <= 3, per sample, in ONE sweep
"""

from __future__ import annotations

import functools
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy

from .backend import Backend, array_module, backend_of
from . import kernels
from .layers.activations import Elementwise, PReLU
from .layers.base import LAYER_KINDS, Array, Cache, Layer, Mode, backward_chain, flat_size, forward_chain, iter_leaves
from .layers.linear import Dense
from .layers.residual import Residual

FILE_FORMAT = "nablax-network"
FILE_VERSION = 1
DEFAULT_MAX_ELEMENTS = 1 << 24  # per chunk of probe signals: 128 MiB in float64
SWEEP_CHUNK_BYTES = 1 << 20  # exact sweeps go in chunks of about 1 MiB of signal, which stay in cache (Trace._chunk)
SWEEP_THREADS_ENV = "NABLAX_SWEEP_THREADS"  # chunks pulled back at once on the CPU (sweep_threads) ...
MIN_CHUNKS_PER_THREAD = 4  # ... when each thread gets at least this many chunks (_run_chunks)
SAMPLE_BLOCK_BYTES = 4 << 20  # per-sample MLP sweeps of large batches go a block of samples at a time (Trace._sample_blocks)
FEATURE_MAJOR_SWEEPS = True  # sweeps through MLPs keep their signals feature-major (Trace._sweep_derivatives) ...
FEATURE_MAJOR_DTYPES = ("float64",)  # ... in these dtypes, where it measured faster with numpy.matmul (OpenBLAS)
FEATURE_MAJOR_DTYPES_CBLAS = ("float64", "float32")  # ... and with a library chosen by kernels.set_blas (AOCL-BLAS)


class NetworkFileError(ValueError):
    """A ``.npz`` file that is not a valid nablax network file."""


@dataclass(frozen=True)
class Position:
    """What sits at a forward position.

    index     the position p (0 = input)
    kind      the kind of the layer that produced it ("input" at p = 0)
    n_lin     linear layers among layers 1..p (compositional depth reached)
    n_act     nonlinearity layers among layers 1..p
    block     residual blocks among layers 1..p
    on_stream True at the input, at block inputs and outputs, and everywhere in a network without residual blocks
    """

    index: int
    kind: str
    n_lin: int
    n_act: int
    block: int
    on_stream: bool


def _n_act(layer: Layer) -> int:
    if isinstance(layer, Residual):
        return sum(_n_act(inner) for inner in layer.sublayers().values())
    return int(layer.is_nonlinearity)


class Network:
    """A sequence of layers applied to inputs of shape ``(B, *in_shape)``.

    ``meta`` holds JSON-able facts about how the network was built (architecture name, depth, width, init,
    seed); it is saved with the network.
    """

    def __init__(self, layers: list[Layer], in_shape: tuple[int, ...] | int, *, name: str = "",
                 meta: dict[str, Any] | None = None) -> None:
        self.layers = list(layers)
        self.in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)
        self.name = name
        self.meta = dict(meta or {})
        arrays = list(self.named_params().values()) + list(self.named_state().values())
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"network parameters mix dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else numpy.dtype("float64")
        self.backend: Backend = backend_of(*arrays) if arrays else backend_of()
        self.shapes = [self.in_shape]
        for layer in self.layers:
            self.shapes.append(tuple(layer.out_shape(self.shapes[-1])))

    # -- structure ------------------------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        """P + 1: the input and one position after every layer."""
        return len(self.layers) + 1

    @property
    def n_linear(self) -> int:
        return sum(layer.n_linear for layer in self.layers)

    def positions(self) -> list[Position]:
        has_blocks = any(isinstance(layer, Residual) for layer in self.layers)
        out = [Position(0, "input", 0, 0, 0, True)]
        n_lin = n_act = block = 0
        for p, layer in enumerate(self.layers, start=1):
            n_lin += layer.n_linear
            n_act += _n_act(layer)
            is_block = isinstance(layer, Residual)
            block += is_block
            feeds_block = p < len(self.layers) and isinstance(self.layers[p], Residual)
            out.append(Position(p, layer.kind, n_lin, n_act, block, is_block or feeds_block or not has_blocks))
        return out

    def named_params(self) -> dict[str, Array]:
        """Every trainable array under ``<layer index>.<name>`` (residual blocks: ``3.branch.1.W``)."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    def named_state(self) -> dict[str, Array]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.state.items()}

    def n_params(self) -> int:
        return sum(int(a.size) for a in self.named_params().values())

    def copy_params(self) -> dict[str, Array]:
        return {k: v.copy() for k, v in self.named_params().items()}

    def set_params(self, values: dict[str, Array]) -> None:
        """Overwrite parameters in place (shapes must match)."""
        params = self.named_params()
        for k, v in values.items():
            if k not in params:
                raise KeyError(f"no parameter named {k!r}")
            if params[k].shape != v.shape:
                raise ValueError(f"parameter {k!r} has shape {params[k].shape}, got {v.shape}")
            params[k][...] = v

    def __repr__(self) -> str:
        lines = [f"Network {self.name or ''}(in_shape={self.in_shape}, {len(self.layers)} layers, "
                 f"{self.n_linear} linear, {self.n_params()} parameters, {self.dtype}, {self.backend.name})"]
        lines += [f"  {i + 1:3d}: {layer!r}" for i, layer in enumerate(self.layers)]
        return "\n".join(lines)

    # -- forward --------------------------------------------------------------------------------------
    def check_input(self, x: Array) -> None:
        """Raise a clear error for an input the network cannot take."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"input must be an array, got {type(x).__name__}")
        if backend_of(x).name != self.backend.name:
            raise TypeError(f"input is a {backend_of(x).name} array but the network lives on {self.backend.name}")
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the network dtype {self.dtype}; "
                            f"convert with x.astype('{self.dtype}')")
        if x.ndim != len(self.in_shape) + 1 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"input shape {tuple(x.shape)} does not match (batch, {', '.join(map(str, self.in_shape))})")
        if x.shape[0] < 1:
            raise ValueError("input batch is empty")
        if not bool(array_module(x).isfinite(x).all()):
            raise ValueError("input contains NaN or inf")

    def forward(self, x: Array, *, train: bool = True, hold_stats: bool = False, update_stats: bool = False) -> "Trace":
        """Run the network and keep everything the derivatives need. See ``layers.base.Mode`` for the flags."""
        self.check_input(x)
        mode = Mode(train=train, hold_stats=hold_stats, update_stats=update_stats)
        values, caches = forward_chain(self.layers, x, mode)
        return Trace(self, values, caches, mode)

    def __call__(self, x: Array, **mode: bool) -> Array:
        return self.forward(x, **mode).output

    # -- save and load --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the network to a ``.npz`` file (no pickles). See ``describe_file_format()`` for the schema."""
        path = Path(path)
        arrays: dict[str, numpy.ndarray] = {}
        specs = [_layer_spec(layer, f"layers.{i}", arrays, self.backend) for i, layer in enumerate(self.layers)]
        header = {"name": self.name, "in_shape": list(self.in_shape), "dtype": str(self.dtype),
                  "meta": self.meta, "layers": specs}
        arrays["__format__"] = numpy.array(FILE_FORMAT)
        arrays["__version__"] = numpy.array(FILE_VERSION)
        arrays["__network__"] = numpy.array(json.dumps(header))
        with open(path, "wb") as fh:
            numpy.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path, backend: str = "numpy") -> "Network":
        """Read a network written by ``save`` (or by anyone following the documented schema)."""
        from .backend import get_backend

        be = get_backend(backend)
        path = Path(path)
        try:
            npz = numpy.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise NetworkFileError(f"{path}: not a readable .npz file ({err})") from err
        with npz:
            keys = set(npz.files)
            for k in ("__format__", "__version__", "__network__"):
                if k not in keys:
                    raise NetworkFileError(f"{path}: not a nablax network file (missing {k!r})")
            try:
                fmt, version = str(npz["__format__"]), int(npz["__version__"])
                header = json.loads(str(npz["__network__"]))
            except Exception as err:
                raise NetworkFileError(f"{path}: corrupt header ({err})") from err
            if fmt != FILE_FORMAT:
                raise NetworkFileError(f"{path}: format {fmt!r} is not {FILE_FORMAT!r}")
            if version != FILE_VERSION:
                raise NetworkFileError(f"{path}: format version {version} is not supported (this nablax reads {FILE_VERSION})")
            try:
                arrays = {k: npz[k] for k in keys if not k.startswith("__")}
            except Exception as err:
                raise NetworkFileError(f"{path}: corrupt array data ({err})") from err
        try:
            dtype = numpy.dtype(header["dtype"])
            used: set[str] = set()
            layers = [_layer_from_spec(spec, f"layers.{i}", arrays, used, dtype, be)
                      for i, spec in enumerate(header["layers"])]
            extra = set(arrays) - used
            if extra:
                raise NetworkFileError(f"arrays not described by the header: {sorted(extra)[:5]}")
            net = cls(layers, tuple(header["in_shape"]), name=header.get("name", ""), meta=header.get("meta", {}))
            try:  # the layers must fit together: run one tiny batch through them
                net.forward(be.xp.zeros((2,) + net.in_shape, dtype=net.dtype), train=False)
            except Exception as err:
                raise NetworkFileError(f"the layers do not fit together ({type(err).__name__}: {err})") from err
        except NetworkFileError as err:
            raise NetworkFileError(f"{path}: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise NetworkFileError(f"{path}: invalid network description ({type(err).__name__}: {err})") from err
        return net


def _layer_spec(layer: Layer, prefix: str, arrays: dict[str, numpy.ndarray], be: Backend) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": layer.kind, "config": layer.config()}
    if isinstance(layer, Residual):
        spec["branch"] = [_layer_spec(inner, f"{prefix}.branch.{j}", arrays, be) for j, inner in enumerate(layer.branch)]
        spec["skip"] = None if layer.skip is None else _layer_spec(layer.skip, f"{prefix}.skip", arrays, be)
        return spec
    own = {**layer.params, **layer.state}
    spec["arrays"] = sorted(own)
    for k, v in own.items():
        arrays[f"{prefix}.{k}"] = be.asnumpy(v)
    return spec


def _layer_from_spec(spec: dict[str, Any], prefix: str, arrays: dict[str, numpy.ndarray], used: set[str],
                     dtype: numpy.dtype, be: Backend) -> Layer:
    kind = spec.get("kind")
    if kind not in LAYER_KINDS:
        raise NetworkFileError(f"{prefix}: unknown layer kind {kind!r} (known: {sorted(LAYER_KINDS)})")
    cls = LAYER_KINDS[kind]
    config = dict(spec.get("config", {}))
    if cls is Residual:
        branch = [_layer_from_spec(s, f"{prefix}.branch.{j}", arrays, used, dtype, be) for j, s in enumerate(spec["branch"])]
        skip = None if spec.get("skip") is None else _layer_from_spec(spec["skip"], f"{prefix}.skip", arrays, used, dtype, be)
        return Residual(branch, skip, **config)
    kwargs = {}
    for name in spec.get("arrays", []):
        key = f"{prefix}.{name}"
        if key not in arrays:
            raise NetworkFileError(f"missing array {key!r}")
        a = arrays[key]
        if a.dtype != dtype:
            raise NetworkFileError(f"array {key!r} has dtype {a.dtype}, the header says {dtype}")
        if not numpy.isfinite(a).all():
            raise NetworkFileError(f"array {key!r} contains NaN or inf")
        kwargs[name] = be.xp.asarray(a)
        used.add(key)
    try:
        return cls(**config, **kwargs)
    except (TypeError, ValueError) as err:
        raise NetworkFileError(f"{prefix}: {kind} cannot be built from {sorted(config) + sorted(kwargs)} ({err})") from err


def describe_file_format() -> str:
    """The ``.npz`` schema, for people who want to write weights trained elsewhere and audit them here."""
    kinds = ", ".join(sorted(LAYER_KINDS))
    return f"""nablax network file, format {FILE_FORMAT!r} version {FILE_VERSION}: a NumPy .npz (no pickles) with
  __format__   0-d string array '{FILE_FORMAT}'
  __version__  0-d integer array {FILE_VERSION}
  __network__  0-d string array holding JSON:
               {{"name": str, "in_shape": [int, ...], "dtype": "float64" | "float32", "meta": {{...}},
                 "layers": [LAYER, ...]}}
  LAYER        {{"kind": one of {kinds},
                 "config": {{hyperparameters, e.g. "eps", "momentum", "beta", "axis"}},
                 "arrays": [names of this layer's arrays]}}
               a residual block instead has "branch": [LAYER, ...] and "skip": LAYER or null
  layers.<i>.<name>                 each array, e.g. layers.0.W (d_in, d_out), layers.0.b (d_out,)
  layers.<i>.branch.<j>.<name>      arrays inside residual block i
Layers in forward order; dense weights in row convention (y = x W + b). Array names per kind: dense W [b];
batchnorm running_mean running_var [gamma beta]; layernorm [gamma beta]; prelu a;
conv2d K (c_out, c_in, kh, kw) [b] (config: stride, padding). Image data is (B, C, H, W)."""


def _diagonal_derivative(layer: Layer, cache: Cache) -> Array | None:
    """phi'(z) of shape (B, *feat) for a layer whose vjp is ``dy * phi'(z)`` (activations, PReLU), else None."""
    return cache.d if isinstance(layer, (Elementwise, PReLU)) else None


def sweep_threads() -> int:
    """How many chunks of an exact sweep run at once on the CPU: ``$NABLAX_SWEEP_THREADS`` if set, else the BLAS's
    current thread count (so ``OPENBLAS_NUM_THREADS=1`` or a ``threadpoolctl`` limit of 1 keeps sweeps serial),
    at most the CPUs this process may use. Each chunk then runs with one BLAS thread. On 2 cores, two chunks side by
    side took 0.60-0.82 of the time of two BLAS threads inside every product for width-100 MLPs at batch 1000 in
    float64 (0.77-1.03 in float32), 0.74-1.05 at batch 256 in float64 but 1.06-1.41 in float32, where a sample
    block has only 4-5 chunks; the exact batch-level GSC (20 chunks) took 0.33 against 0.51 of JAX's time in float32
    (``scripts/bench_sweep_options.py threads``, ``scripts/bench.py --threads 2``; BENCHMARKS.md). So chunks go
    side by side only when every thread gets ``MIN_CHUNKS_PER_THREAD`` of them (``_run_chunks``)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = os.environ.get(SWEEP_THREADS_ENV)
    if wanted is not None:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ValueError(f"{SWEEP_THREADS_ENV} must be a positive integer, got {wanted!r}")
        return int(wanted)
    blas = [lib["num_threads"] for lib in _threadpools(kernels.blas_library()).info() if lib["user_api"] == "blas"]
    return max(1, min([cpus] + blas))


@functools.lru_cache(maxsize=None)
def _threadpools(blas: str) -> Any:
    """threadpoolctl's view of the loaded thread pools, looked up again when ``kernels.set_blas`` loads a library."""
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415 (a few ms to set up, so only once)

    return ThreadpoolController()


def _run_chunks(work: Callable[[slice, Any], None], chunks: list[slice], threads: int,
                new_state: Callable[[], Any] = lambda: None) -> list[Any]:
    """``work(rows, state)`` for every chunk. With ``threads`` > 1, and at least ``MIN_CHUNKS_PER_THREAD`` chunks
    for each, the chunks are dealt into groups run side by side, each with its own ``new_state()`` (e.g. an
    accumulator) and one BLAS thread (NumPy's matrix products and nablax's Numba kernels release the GIL);
    otherwise one group, serially, and the BLAS keeps its own threads. Returns the groups' states."""
    n = max(1, min(threads, len(chunks) // MIN_CHUNKS_PER_THREAD))

    def run_group(group: list[slice]) -> Any:
        state = new_state()
        for rows in group:
            work(rows, state)
        return state

    groups = [chunks[i::n] for i in range(n)]
    if n == 1:
        return [run_group(chunks)]
    with _threadpools(kernels.blas_library()).limit(limits=1, user_api="blas"), ThreadPoolExecutor(n) as pool:
        return list(pool.map(run_group, groups))


def _feature_major_dtypes() -> tuple[str, ...]:
    """Dtypes whose MLP sweeps run feature-major. With AOCL-BLAS (``kernels.set_blas("aocl")``) float32 products
    are faster feature-major too: 97-103 against 71-77 GFLOP/s on the (1280, 100) chain, and 0.89-0.91 of the
    sample-major sweep's time under NumPy's OpenBLAS (BENCHMARKS.md, "The BLAS")."""
    return FEATURE_MAJOR_DTYPES if kernels.blas_name() == "numpy" else FEATURE_MAJOR_DTYPES_CBLAS


def _feature_major_copy(v: Array) -> Array:
    """A copy of v (k, B, n) that lies in memory as (n, k, B) (see ``Trace._sweep_derivatives``)."""
    out = kernels.cpu.feature_major_empty(v.shape, v.dtype, array_module(v))
    out[...] = v
    return out


def _sq_norms(v: Array, b: int) -> Array:
    """Per-sample squared norms (float64, (B,)) of a chunk of signals v (k, B, *feat)."""
    return kernels.sq_norms(v.reshape(v.shape[0], b, -1))


class Trace:
    """One forward pass: ``values[p]`` at every position p, and each layer's cache.

    Signals: a cotangent or tangent at position p has shape ``(*probe, B, *shape_p)``; any number of leading
    probe axes go through together.
    """

    def __init__(self, network: Network, values: list[Array], caches: list[Cache], mode: Mode) -> None:
        self.network, self.values, self.caches, self.mode = network, values, caches, mode

    @property
    def output(self) -> Array:
        return self.values[-1]

    @property
    def batch_size(self) -> int:
        return int(self.values[0].shape[0])

    @property
    def couples_batch(self) -> bool:
        """True when some layer made one sample's output depend on other samples in this pass."""
        return any(c.coupled for c in self.caches)

    @property
    def xp(self) -> Any:
        return array_module(self.values[0])

    def leaves(self) -> Iterator[tuple[Layer, Array, Cache]]:
        """Every leaf layer in forward order (inside residual blocks too) with its input and cache."""
        return iter_leaves(self.network.layers, self.values, self.caches)

    def _pos(self, p: int | None, default: int) -> int:
        """The one rule for positions a caller passes: 0..P, anything else (negative ones too: no wrap-around)
        is refused. ``None`` takes ``default``, where -1 stands for the output P."""
        n = len(self.values)
        if p is None:
            return n - 1 if default == -1 else default
        if not 0 <= int(p) < n:
            raise IndexError(f"position {p} is outside 0..{n - 1}")
        return int(p)

    def _check_signal(self, s: Array, p: int, what: str) -> None:
        shape = tuple(self.values[p].shape)
        if tuple(s.shape[s.ndim - len(shape):]) != shape or s.ndim < len(shape):
            raise ValueError(f"{what} of shape {tuple(s.shape)} does not end with the shape {shape} of position {p}")
        if s.dtype != self.values[p].dtype:
            raise TypeError(f"{what} dtype {s.dtype} does not match the network dtype {self.values[p].dtype}")

    # -- reverse and forward mode ---------------------------------------------------------------------
    def pullbacks(self, cotangent: Array, dst: int | None = None, src: int = 0) -> Iterator[tuple[int, Array]]:
        """Yield ``(p, J_{dst<-p}^T v)`` for p = dst, dst-1, ..., src (the first item is the seed itself)."""
        dst, src = self._pos(dst, -1), self._pos(src, 0)
        if src > dst:
            raise ValueError(f"pullback goes from dst to an earlier src, got src={src} > dst={dst}")
        self._check_signal(cotangent, dst, "cotangent")
        v = cotangent
        yield dst, v
        for p in range(dst, src, -1):
            v = self.network.layers[p - 1].vjp(self.caches[p - 1], v)
            yield p - 1, v

    def pullback(self, cotangent: Array, dst: int | None = None, src: int = 0) -> Array:
        """J^T v: the cotangent at position dst pulled back to position src."""
        for _, v in self.pullbacks(cotangent, dst, src):
            pass
        return v

    def pushforwards(self, tangent: Array, src: int = 0, dst: int | None = None) -> Iterator[tuple[int, Array]]:
        """Yield ``(p, J_{p<-src} u)`` for p = src, ..., dst (the first item is the seed itself)."""
        src, dst = self._pos(src, 0), self._pos(dst, -1)
        if src > dst:
            raise ValueError(f"pushforward goes from src to a later dst, got src={src} > dst={dst}")
        self._check_signal(tangent, src, "tangent")
        u = tangent
        yield src, u
        for p in range(src, dst):
            u = self.network.layers[p].jvp(self.caches[p], u)
            yield p + 1, u

    def pushforward(self, tangent: Array, src: int = 0, dst: int | None = None) -> Array:
        """J u: the tangent at position src pushed forward to position dst."""
        for _, u in self.pushforwards(tangent, src, dst):
            pass
        return u

    def backward(self, cotangent: Array, *, input_grad: bool = True) -> tuple[Array | None, dict[str, Array]]:
        """Input cotangent and every parameter gradient (named as in ``Network.named_params``) for a
        cotangent of shape ``(B, *out_shape)`` at the output. ``input_grad=False`` skips the input cotangent
        (returned as None): a training step does not need it, and for a wide input it is a large GEMM."""
        self._check_signal(cotangent, len(self.values) - 1, "cotangent")
        dx, grads = backward_chain(self.network.layers, self.caches, cotangent, input_grad)
        return dx, {f"{i}.{k}": v for i, g in enumerate(grads) for k, v in g.items()}

    # -- exact Jacobians ------------------------------------------------------------------------------
    def probe_chunks(self, n_probes: int, max_elements: int, widest: int) -> Iterator[slice]:
        step = max(1, max_elements // max(1, widest))
        for start in range(0, n_probes, step):
            yield slice(start, min(n_probes, start + step))

    def identity_seeds(self, p: int, rows: slice, per_sample: bool) -> Array:
        """One-hot probes at position p: ``e_j`` in every sample at once (per_sample) or ``e_(b, j)`` (batch-level)."""
        xp, shape = self.xp, tuple(self.values[p].shape)
        b, d = shape[0], flat_size(shape[1:])
        k = rows.stop - rows.start
        idx = xp.arange(rows.start, rows.stop)
        if per_sample:
            seeds = xp.zeros((k, d), dtype=self.values[p].dtype)
            seeds[xp.arange(k), idx] = 1.0
            return xp.broadcast_to(seeds[:, None, :], (k, b, d)).reshape((k,) + shape)
        seeds = xp.zeros((k, b * d), dtype=self.values[p].dtype)
        seeds[xp.arange(k), idx] = 1.0
        return seeds.reshape((k,) + shape)

    def _chunk(self, max_elements: int) -> int:
        """Signal entries per chunk of an exact sweep: at most max_elements, and about SWEEP_CHUNK_BYTES, so that
        each layer's matrix product and the fused kernel after it work in cache (a float64 width-100 product then
        has about 1300 rows, where OpenBLAS is fastest here). Smaller chunks measured slower on one core in both
        dtypes (float32 at 512 KiB: up to 10 %; BENCHMARKS.md)."""
        return max(1, min(max_elements, SWEEP_CHUNK_BYTES // self.values[0].dtype.itemsize))

    def _widest(self, lo: int, hi: int) -> int:
        return max(int(self.values[p].size) for p in range(lo, hi + 1))

    def _jacobian_args(self, src: int | None, dst: int | None, batch_level: bool | None) -> tuple[int, int, bool]:
        src, dst = self._pos(src, 0), self._pos(dst, -1)
        batch_level = self.couples_batch if batch_level is None else batch_level
        if self.couples_batch and not batch_level:
            raise ValueError("this pass couples samples (batch norm with batch statistics): per-sample Jacobians "
                             "do not exist; use batch_level=True, or forward(..., hold_stats=True)")
        return src, dst, batch_level

    def jacobian_blocks(self, src: int = 0, dst: int | None = None, *, batch_level: bool | None = None,
                        max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[tuple[slice, Array]]:
        """The exact Jacobian from position src to position dst, a block of rows at a time (identity seeds at
        dst, pulled back in chunks): at most one block of ``max_elements`` signal entries is alive at once, so
        a Jacobian too large for memory can be reduced or written out block by block (``jacobian(out=...)``).

        Yields ``(rows, block)``. Per sample: rows is a slice of dst's D_dst entries and
        ``block[i, b] = J_b[rows.start + i]``, shape ``(k, B, *shape_src)``. Batch-level (the default when the
        pass couples samples): rows is a slice of the B * D_dst entries of the whole batch at dst, in sample-major
        order (entry (b, j) is row ``b * D_dst + j``), and ``block[i]`` is the gradient of that entry with respect
        to the whole batch at src, ``(k, B, *shape_src)``.
        """
        src, dst, batch_level = self._jacobian_args(src, dst, batch_level)
        block = self._jacobian_block_work(src, dst, batch_level, max_elements)
        for rows in self._jacobian_chunks(src, dst, batch_level, max_elements):
            yield rows, block(rows)

    def _jacobian_chunks(self, src: int, dst: int, batch_level: bool, max_elements: int) -> list[slice]:
        n_seeds = flat_size(self.values[dst].shape[1:]) * (self.batch_size if batch_level else 1)
        return self._seed_chunks(n_seeds, src, dst, max_elements)

    def _seed_chunks(self, n_seeds: int, src: int, dst: int, max_elements: int) -> list[slice]:
        """The chunks of an exact sweep between src and dst over n_seeds seeds (``_chunk``)."""
        return list(self.probe_chunks(n_seeds, self._chunk(max_elements), self._widest(src, dst)))

    def _jacobian_block_work(self, src: int, dst: int, batch_level: bool, max_elements: int) -> Callable[[slice], Array]:
        """The rows of J from dst back to src for one chunk of identity seeds at dst."""
        sweep = self._sweep_derivatives(src, dst)
        if batch_level:
            return lambda rows: self._pull_chunk(self.identity_seeds(dst, rows, False), dst, src, plan=sweep)
        return lambda rows: self._pull_units(self._seed_units(None, rows), dst, src, plan=sweep)

    def _threads(self) -> int:
        return sweep_threads() if self.network.backend.name == "numpy" else 1

    def jacobian(self, src: int = 0, dst: int | None = None, *, batch_level: bool | None = None,
                 method: str = "vjp", max_elements: int = DEFAULT_MAX_ELEMENTS, out: Array | None = None) -> Array:
        """The exact Jacobian from position src to position dst.

        Per sample ``(B, D_dst, D_src)`` (D = entries per sample), or batch-level ``(B, D_dst, B, D_src)``,
        which is the default when this pass couples samples. ``method="vjp"`` pulls back identity seeds
        from dst; ``"jvp"`` pushes identity seeds forward from src. Seeds go in chunks of at most
        ``max_elements`` signal entries, so memory stays bounded apart from the result itself; ``out`` (vjp
        only) receives the result instead of a fresh array, e.g. a disk-backed
        ``numpy.lib.format.open_memmap(path, "w+", dtype, shape)`` for a batch-level Jacobian larger than memory
        (``jacobian_blocks`` streams the same rows).
        """
        src, dst, batch_level = self._jacobian_args(src, dst, batch_level)
        if method not in ("vjp", "jvp"):
            raise ValueError(f"method must be 'vjp' or 'jvp', got {method!r}")
        xp = self.xp
        b, dtype = self.batch_size, self.values[0].dtype
        d_src, d_dst = flat_size(self.values[src].shape[1:]), flat_size(self.values[dst].shape[1:])
        shape = (b, d_dst, b, d_src) if batch_level else (b, d_dst, d_src)
        if out is not None and (method != "vjp" or tuple(out.shape) != shape or out.dtype != dtype):
            raise ValueError(f"out must be a {dtype} array of shape {shape} (method 'vjp'), "
                             f"got {getattr(out, 'dtype', None)} {getattr(out, 'shape', None)} ({method!r})")
        blocks = self._sample_blocks(src, dst) if method == "vjp" and not batch_level else None
        if blocks is not None:
            j = xp.empty(shape, dtype=dtype) if out is None else out
            for s0, s1 in blocks:
                self._sample_block(s0, s1, src, dst).jacobian(src, dst, batch_level=False, max_elements=max_elements,
                                                              out=j[s0:s1])
            return j
        plan = self._live_seed_plan(dst, src) if method == "vjp" and not batch_level else None
        if plan is not None:  # rows of J that a final rectifier zeroes are not computed
            j = xp.zeros(shape, dtype=dtype) if out is None else out
            if out is not None:
                j[...] = 0
            sweep = self._sweep_derivatives(src, dst)

            def fill_live(rows: slice, _: None) -> None:
                units = self._seed_units(plan, rows)
                sig = self._pull_units(units, dst, src, plan=sweep)
                j[xp.arange(b)[None, :], units] = sig.reshape(rows.stop - rows.start, b, d_src)

            _run_chunks(fill_live, self._seed_chunks(plan[1].shape[1], src, dst, max_elements), self._threads())
            return j
        if method == "vjp":
            j = xp.empty(shape, dtype=dtype) if out is None else out
            rows_view = j.reshape(b * d_dst, b * d_src) if batch_level else j.transpose(1, 0, 2)  # seeds first
            blocks = self._jacobian_block_work(src, dst, batch_level, max_elements)

            def fill(rows: slice, _: None) -> None:
                rows_view[rows] = blocks(rows).reshape(rows_view[rows].shape)

            _run_chunks(fill, self._jacobian_chunks(src, dst, batch_level, max_elements), self._threads())
            return j
        n_seeds = d_src if not batch_level else b * d_src
        out_flat = xp.empty((n_seeds, b * d_dst), dtype=dtype)
        for rows in self._seed_chunks(n_seeds, src, dst, max_elements):
            out_flat[rows] = self.pushforward(self.identity_seeds(src, rows, not batch_level), src, dst).reshape(
                rows.stop - rows.start, -1)
        if not batch_level:
            return out_flat.reshape(d_src, b, d_dst).transpose(1, 2, 0)
        return out_flat.reshape(b, d_src, b, d_dst).transpose(2, 3, 0, 1)

    def jacobian_sq_norms(self, dst: int | None = None, src: int = 0, *,
                          max_elements: int = DEFAULT_MAX_ELEMENTS) -> Array:
        """Per-sample ``||J_{dst<-p}||_F^2`` for every p in src..dst, from ONE identity-seeded sweep.

        Returns shape ``(dst - src + 1, B)``; row ``p - src`` belongs to position p. No Jacobian is kept:
        each chunk of seeds is pulled back once and its squared entries summed at every position passed.
        Needs a pass without batch coupling (see ``batch_jacobian_sq_norms`` otherwise).
        """
        dst, src = self._pos(dst, -1), self._pos(src, 0)
        if self.couples_batch:
            raise ValueError("this pass couples samples: use batch_jacobian_sq_norms, or forward(..., hold_stats=True)")
        return self._sweep_sq_norms(dst, src, per_sample=True, max_elements=max_elements)

    def batch_jacobian_sq_norms(self, dst: int | None = None, src: int = 0, *,
                                max_elements: int = DEFAULT_MAX_ELEMENTS) -> Array:
        """Batch-level ``||J_batch(dst<-p)||_F^2`` for every p in src..dst, shape ``(dst - src + 1,)``.

        Without coupling this is the sum of the per-sample norms (D_dst seeds). With coupling it takes
        B * D_dst seeds, in chunks: exact, but costly at large batches (see ``hutchinson_sq_norms``).
        """
        dst, src = self._pos(dst, -1), self._pos(src, 0)
        if not self.couples_batch:
            return self._sweep_sq_norms(dst, src, per_sample=True, max_elements=max_elements).sum(axis=1)
        return self._sweep_sq_norms(dst, src, per_sample=False, max_elements=max_elements)

    def _sweep_sq_norms(self, dst: int, src: int, per_sample: bool, max_elements: int) -> Array:
        """Squared norms of the identity-seeded sweep from dst: per sample (n_pos, B), or batch-level (n_pos,).

        Unit seeds first meet the layer before dst; when that layer is diagonal (an activation, dy * phi'(z)) a
        seed e_(b,j) leaves it as phi'(z_bj) e_(b,j), so only the seeds with phi'(z_bj) != 0 are pulled further:
        batch-level, exactly those (about half after a ReLU); per sample, the most any sample has, each sample's
        own units (``_live_seed_plan``). Fewer FLOPs, the same exact norms. Per-sample seeds also pass the first
        Dense layer as columns of its weight, not a product (``_pull_units``). Chunks: ``_chunk``.
        """
        xp = self.xp
        blocks = self._sample_blocks(src, dst) if per_sample else None
        if blocks is not None:
            return xp.concatenate([self._sample_block(s0, s1, src, dst)._sweep_sq_norms(dst, src, True, max_elements)
                                   for s0, s1 in blocks], axis=1)
        b = self.batch_size
        d_dst = flat_size(self.values[dst].shape[1:])
        acc = xp.zeros((dst - src + 1, b), dtype="float64")  # per-sample sums (float64 also for float32 nets)
        diag = _diagonal_derivative(self.network.layers[dst - 1], self.caches[dst - 1]) if dst > src else None
        sweep = self._sweep_derivatives(src, dst)
        if per_sample:  # unit seeds (only those a final rectifier lets through, when it has zeros)
            acc[dst - src] = d_dst  # the d_dst unit seeds per sample at dst
            plan = self._live_seed_plan(dst, src)
            n_seeds = d_dst if plan is None else plan[1].shape[1]

            def pull(rows: slice, part: Array) -> None:
                self._pull_units(self._seed_units(plan, rows), dst, src, part, sweep)
        elif diag is None:
            n_seeds = b * d_dst

            def pull(rows: slice, part: Array) -> None:
                self._pull_chunk(self.identity_seeds(dst, rows, False), dst, src, part, sweep)
        else:  # batch-level: only the (b, j) that the final diagonal layer lets through
            acc[dst - src] = d_dst  # b * d_dst unit seeds at dst
            scale = diag.reshape(-1)
            live = xp.flatnonzero(scale)
            n_seeds = int(live.size)

            def pull(rows: slice, part: Array) -> None:
                idx = live[rows]
                seeds = xp.zeros((idx.size, scale.size), dtype=scale.dtype)
                seeds[xp.arange(idx.size), idx] = scale[idx]
                self._pull_chunk(seeds.reshape((idx.size,) + tuple(diag.shape)), dst - 1, src, part, sweep)

        chunks = self._seed_chunks(n_seeds, src, dst, max_elements)
        for part in _run_chunks(pull, chunks, self._threads(), lambda: xp.zeros_like(acc)):
            acc += part
        out = acc.astype(self.values[0].dtype)
        return out if per_sample else out.sum(axis=1)

    def _live_seed_plan(self, dst: int, src: int) -> tuple[Array, Array] | None:
        """Per-sample seeds that survive the layer before dst, when it is diagonal with zeros (a rectifier).

        A unit seed e_j at dst leaves a diagonal layer as phi'(z_bj) e_j, which is zero where the unit is off.
        Returns ``(phi' as (B, n), units (B, m))``: each sample's units ordered live first, m = the most live
        units of any sample; a sweep from dst - 1 needs only these m seeds per sample instead of n (about 0.6 n
        after a ReLU). None when no seed can be dropped.
        """
        if dst <= src:
            return None
        d = _diagonal_derivative(self.network.layers[dst - 1], self.caches[dst - 1])
        if d is None:
            return None
        xp = self.xp
        d2 = d.reshape(d.shape[0], -1)
        live = d2 != 0
        m = int(live.sum(axis=1).max())
        if m == d2.shape[1]:
            return None
        return d2, xp.argsort(~live, axis=1)[:, :m]

    def _seed_units(self, plan: tuple[Array, Array] | None, rows: slice) -> Array:
        """The units (k, B) of a chunk of per-sample unit seeds at dst: seed i of sample b is ``e_units[i, b]``;
        ``rows`` of dst's units (the same in every sample), or of each sample's own units in ``plan``
        (``_live_seed_plan``: live units first; padding units are off, and their seeds vanish below dst)."""
        if plan is not None:
            return plan[1][:, rows].T
        xp = self.xp
        return xp.broadcast_to(xp.arange(rows.start, rows.stop)[:, None], (rows.stop - rows.start, self.batch_size))

    def _pull_units(self, units: Array, dst: int, src: int, acc: Array | None = None,
                    plan: tuple[bool, dict[int, Array]] | None = None) -> Array:
        """Pull per-sample unit seeds ``e_units[i, b]`` (units (k, B)) from dst back to src; like ``_pull_chunk``,
        except that ``acc`` gets the norms below dst only (the caller knows those at dst), and that the seeds stay
        sparse while they can:

            through diagonal layers     c e_u  ->  c phi'(z_bu) e_u          (a lookup)
            through the first Dense     c e_u  ->  c W[:, u]                 (a column of W, no matrix product)

        after which the dense signal goes on through ``_pull_chunk``. Unit seeds at the output of an MLP (a Dense
        layer, and any diagonal layers after it) so skip one matrix product of the sweep's L.
        """
        xp, layers = self.xp, self.network.layers
        plan = plan if plan is not None else self._sweep_derivatives(src, dst)
        feature_major, derivs = plan
        k, b = units.shape
        coef, p = xp.ones((k, b), dtype=self.values[dst].dtype), dst  # seeds coef[i, b] e_units[i, b] at p

        def by_lookup(p: int) -> bool:  # the layer below p is Dense on flat data
            return p > src and isinstance(layers[p - 1], Dense) and self.values[p].ndim == 2

        while p > src and p in derivs:
            coef = coef * xp.take_along_axis(derivs[p].reshape(b, -1), units.T, axis=1).T
            p -= 1
            if acc is not None and (p in derivs and p > src or by_lookup(p)):  # else _pull_chunk adds p's norms
                acc[p - src] += (coef.astype("float64") ** 2).sum(axis=0)
        if by_lookup(p):
            W = layers[p - 1].W  # (d_in, d_out): the pullback of e_u is row u of W^T, that is column u of W
            if feature_major:  # take() lays the columns out (d_in, k, B), the feature-major memory
                v = (xp.take(W, units, axis=1) * coef).transpose(1, 2, 0)
            else:
                v = W.T[units] * coef[:, :, None]
            return self._pull_chunk(v, p - 1, src, acc, plan, owned=True)
        shape = tuple(self.values[p].shape)
        v = xp.zeros((k, b, flat_size(shape[1:])), dtype=coef.dtype)
        v[xp.arange(k)[:, None], xp.arange(b)[None, :], units] = coef
        v = v.reshape((k,) + shape)
        if p == dst:  # dst's norms are the caller's: take the first step here
            if p == src:
                return v
            v, p = layers[p - 1].vjp(self.caches[p - 1], v), p - 1
        return self._pull_chunk(v, p, src, acc, plan, owned=True)  # fresh; copied only if not in the sweep's layout

    def _sweep_derivatives(self, src: int, dst: int) -> tuple[bool, dict[int, Array]]:
        """How a sweep between src and dst runs: ``(feature_major, {p: phi'(z) of layer p, (B, *shape)})`` for
        every diagonal layer p (an activation) in the range.

        Feature-major: the probe signal, logical shape (k, B, n), lies in memory as (n, k, B), so that its rows
        (probe, sample) axis is the contiguous one. Why: a pullback through Dense is one product
        (k B, n_out) @ (n_out, n_in); OpenBLAS runs a chain of them at 49.9 GFLOP/s (float64, one core, 1280
        rows) with the rows contiguous against 46.0 with the features contiguous (``scripts/bench_gemm.py``; in
        column-major terms the M dimension is then 100, which a 16-row register blocking does not divide). In
        whole sweeps that gave 0.92-1.02 of the time in float64 but 0.98-1.13 in float32
        (``scripts/bench_sweep_options.py layout``), so it is used for NumPy arrays of the
        ``FEATURE_MAJOR_DTYPES`` (float64; both dtypes with another BLAS, ``_feature_major_dtypes``;
        ``FEATURE_MAJOR_SWEEPS = False`` turns it off) on chains of Dense and
        diagonal layers of flat data, where every step keeps the order; the derivatives are then copied
        transposed ((n, B) in memory, one copy for the length of the sweep) so the fused kernel reads them in the
        signal's order. Anything else (batch norm, convolutions, residual blocks) keeps the C order its kernels
        expect. The results do not depend on the order (``tests/test_kernels.py``).
        """
        layers, caches = self.network.layers, self.caches
        derivs = {p: d for p in range(src + 1, dst + 1)
                  if (d := _diagonal_derivative(layers[p - 1], caches[p - 1])) is not None}
        feature_major = (FEATURE_MAJOR_SWEEPS and self.network.backend.name == "numpy"
                         and self.values[src].dtype.name in _feature_major_dtypes() and self._is_mlp_chain(src, dst))
        if feature_major:
            derivs = {p: self.xp.ascontiguousarray(d.T).T for p, d in derivs.items()}
        return feature_major, derivs

    def _is_mlp_chain(self, src: int, dst: int) -> bool:
        """Whether layers src+1..dst are Dense and diagonal layers on flat data (every cache then holds per-sample,
        batch-first arrays)."""
        layers, caches = self.network.layers, self.caches
        return (all(self.values[p].ndim == 2 for p in range(src, dst + 1))
                and all(isinstance(layers[p - 1], Dense) or _diagonal_derivative(layers[p - 1], caches[p - 1])
                        is not None for p in range(src + 1, dst + 1)))

    def _sample_blocks(self, src: int, dst: int) -> list[tuple[int, int]] | None:
        """Sample ranges for a per-sample sweep of a large batch through an MLP chain, or None.

        Every chunk of a sweep reads every activation derivative between dst and src; at batch 1000 and width
        100 that is 40 MB over 50 layers, more than the cache, for each of the 100 probe chunks. Swept a block
        of samples at a time (``_sample_block``), each block's derivatives (about ``SAMPLE_BLOCK_BYTES``) stay in
        cache while all its probes pass; the blocks are of equal size, so that none is a small remainder with
        poorly filled chunks. Results are identical (per-sample sweeps do not mix samples).
        """
        if (self.couples_batch or SAMPLE_BLOCK_BYTES <= 0 or self.network.backend.name != "numpy"
                or not self._is_mlp_chain(src, dst)):
            return None  # (a CPU cache matter: a GPU wants the whole batch at once)
        per_sample = sum(int(self.values[p].size) // self.batch_size * self.values[p].dtype.itemsize
                         for p in range(src + 1, dst + 1)
                         if _diagonal_derivative(self.network.layers[p - 1], self.caches[p - 1]) is not None)
        size = max(1, SAMPLE_BLOCK_BYTES // max(1, per_sample))
        if per_sample == 0 or size >= self.batch_size:
            return None
        n_blocks = -(-self.batch_size // size)
        edges = [round(i * self.batch_size / n_blocks) for i in range(n_blocks + 1)]  # blocks of equal size (+-1)
        return list(zip(edges[:-1], edges[1:]))

    def _sample_block(self, s0: int, s1: int, src: int, dst: int) -> "Trace":
        """This pass restricted to samples s0:s1, as views: values everywhere, and the caches of layers
        src+1..dst (an MLP chain, whose caches hold batch-first arrays only); other caches are left whole."""

        def cut(cache: Cache) -> Cache:
            return Cache(**{k: v[s0:s1] if hasattr(v, "shape") and v.shape[:1] == (self.batch_size,) else v
                            for k, v in vars(cache).items()})

        caches = [cut(c) if src <= i < dst else c for i, c in enumerate(self.caches)]
        return Trace(self.network, [v[s0:s1] for v in self.values], caches, self.mode)

    def _pull_chunk(self, v: Array, dst: int, src: int, acc: Array | None = None,
                    plan: tuple[bool, dict[int, Array]] | None = None, owned: bool = False) -> Array:
        """Pull a chunk of probe signals v (k, *shape_dst) from dst back to src and return it at src.

        With ``acc`` (float64, (dst - src + 1, B) or larger), add every position's per-sample squared norms
        to ``acc[p - src]`` on the way; a diagonal layer (an activation) and the norms on both sides of it take
        one fused kernel (``kernels.scale_sq_norms``). Diagonal layers multiply in place: v is copied once at
        the start, and every later signal is a fresh vjp result or a view of one, so nothing outside the sweep
        is overwritten (``owned``: v is the caller's fresh array, in the sweep's layout, and is used as it is).
        ``plan``: ``_sweep_derivatives(src, dst)``, computed once per sweep by callers that pull several chunks.
        """
        xp = self.xp
        feature_major, derivs = plan if plan is not None else self._sweep_derivatives(src, dst)
        if not (owned and kernels.cpu.layout(v) == ("F" if feature_major else "C")):
            v = _feature_major_copy(v) if feature_major else xp.array(v, copy=True, order="C")
        known = None  # per-sample squared norms of v when a fused kernel already gave them
        for p in range(dst, src, -1):
            layer, cache = self.network.layers[p - 1], self.caches[p - 1]
            d = derivs.get(p)
            if d is not None and acc is None and not v.flags.writeable:
                v = v * d
            elif d is not None and acc is None:
                b = d.shape[0]
                v = kernels.scale(v.reshape(-1, b, d.size // b), d.reshape(b, -1)).reshape(v.shape)
            elif d is not None:
                b = d.shape[0]
                v3 = v.reshape(-1, b, d.size // b)
                out, n_in, known = kernels.scale_sq_norms(v3, d.reshape(b, -1), out=v3)
                acc[p - src] += n_in
                v = out.reshape(v.shape)
            else:
                if acc is not None:
                    acc[p - src] += known if known is not None else _sq_norms(v, self.values[p].shape[0])
                known = None
                v = layer.vjp(cache, v)
        if acc is not None:
            acc[0] += known if known is not None else _sq_norms(v, self.values[src].shape[0])
        return v

    def hutchinson_sq_norms(self, dst: int | None = None, src: int = 0, *, n_probes: int = 4,
                            rng: numpy.random.Generator | int | None = None, probe: str = "gaussian") -> tuple[Array, Array]:
        """Unbiased estimates of the batch-level ``||J_batch(dst<-p)||_F^2`` for every p in src..dst, with
        their standard errors: ``E_v ||J^T v||^2 = ||J||_F^2`` for v ~ N(0, I) (or Rademacher) of the shape
        of position dst. All probes are pulled back together in one sweep. Returns ``(mean, stderr)``, each of
        shape ``(dst - src + 1,)``; the standard error is the sample std over probes / sqrt(n_probes)."""
        dst, src = self._pos(dst, -1), self._pos(src, 0)
        if n_probes < 2:
            raise ValueError("n_probes must be at least 2 to report a standard error")
        rng = numpy.random.default_rng(rng)
        shape = (n_probes,) + tuple(self.values[dst].shape)
        if probe == "gaussian":
            v = rng.standard_normal(shape)
        elif probe == "rademacher":
            v = rng.choice([-1.0, 1.0], size=shape)
        else:
            raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
        v = self.xp.asarray(v, dtype=self.values[dst].dtype)
        samples = self.xp.zeros((dst - src + 1, n_probes), dtype=v.dtype)
        for p, s in self.pullbacks(v, dst, src):
            samples[p - src] = (s * s).reshape(n_probes, -1).sum(axis=1)
        mean = samples.mean(axis=1)
        stderr = samples.std(axis=1, ddof=1) / math.sqrt(n_probes)
        return mean, stderr
