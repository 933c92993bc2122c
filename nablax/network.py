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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy

from . import fastpath, network_file
from .backend import Backend, array_module, backend_of
from .layers.base import Array, Cache, Layer, Mode, backward_chain, flat_size, forward_chain, iter_leaves
from .network_file import NetworkFileError, describe_file_format  # noqa: F401 (re-exported)
from .performance import current

DEFAULT_MAX_ELEMENTS = 1 << 24  # per chunk of probe signals: 128 MiB in float64


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


class Network:
    """A sequence of layers applied to inputs of shape ``(B, *in_shape)``; ``meta`` holds JSON-able facts about how
    it was built (architecture name, depth, width, init, seed), saved with it."""

    def __init__(self, layers: list[Layer], in_shape: tuple[int, ...] | int, *, name: str = "",
                 meta: dict[str, Any] | None = None) -> None:
        self.layers = list(layers)
        self.in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)
        self.name = name
        self.meta = dict(meta or {})
        arrays = [*self.named_params().values(), *self.named_state().values()]
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError(f"network parameters mix dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else numpy.dtype("float64")
        self.backend: Backend = backend_of(*arrays)
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
        is_block = [bool(layer.children()) for layer in self.layers] + [False]  # residual blocks
        out = [Position(0, "input", 0, 0, 0, True)]
        n_lin = n_act = block = 0
        for p, layer in enumerate(self.layers, start=1):
            n_lin += layer.n_linear
            n_act += sum(leaf.is_nonlinearity for _, leaf, _, _ in iter_leaves([layer]))
            block += is_block[p - 1]
            on_stream = is_block[p - 1] or is_block[p] or not any(is_block)
            out.append(Position(p, layer.kind, n_lin, n_act, block, on_stream))
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
        return network_file.save(self, path)

    @classmethod
    def load(cls, path: str | Path, backend: str = "numpy") -> "Network":
        """Read a network written by ``save`` (or by anyone following the documented schema)."""
        return network_file.load(cls, path, backend)


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
        return ((layer, x, cache) for _, layer, x, cache in iter_leaves(self.network.layers, self.values, self.caches))

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
    # The plain reference: identity seeds through the layers' own vjp, in chunks of at most max_elements signal
    # entries. ``fastpath`` gives the same numbers (``tests/test_fastpath.py``) unless ``settings(fast=False)``.
    def probe_chunks(self, n_probes: int, max_elements: int, widest: int) -> Iterator[slice]:
        step = max(1, max_elements // max(1, widest))
        for start in range(0, n_probes, step):
            yield slice(start, min(n_probes, start + step))

    def identity_seeds(self, p: int, rows: slice, per_sample: bool) -> Array:
        """One-hot probes at position p: ``e_j`` in every sample at once (per_sample) or ``e_(b, j)`` (batch-level)."""
        xp, shape = self.xp, tuple(self.values[p].shape)
        k, n = rows.stop - rows.start, flat_size(shape[1:]) * (1 if per_sample else shape[0])
        seeds = xp.zeros((k, n), dtype=self.values[p].dtype)
        seeds[xp.arange(k), xp.arange(rows.start, rows.stop)] = 1.0
        if per_sample:
            return xp.broadcast_to(seeds[:, None, :], (k, shape[0], n)).reshape((k,) + shape)
        return seeds.reshape((k,) + shape)

    def _identity_chunks(self, p: int, per_sample: bool, src: int, dst: int,
                         max_elements: int) -> Iterator[tuple[slice, Array]]:
        """``(rows, identity_seeds(p, rows, per_sample))`` for every chunk of a sweep between src and dst."""
        n_seeds = flat_size(self.values[p].shape[1:]) * (1 if per_sample else self.batch_size)
        widest = max(int(self.values[q].size) for q in range(src, dst + 1))
        for rows in self.probe_chunks(n_seeds, max_elements, widest):
            yield rows, self.identity_seeds(p, rows, per_sample)

    def _jacobian_args(self, src: int | None, dst: int | None, batch_level: bool | None) -> tuple[int, int, bool]:
        src, dst = self._pos(src, 0), self._pos(dst, -1)
        batch_level = self.couples_batch if batch_level is None else batch_level
        if self.couples_batch and not batch_level:
            raise ValueError("this pass couples samples (batch norm with batch statistics): per-sample Jacobians "
                             "do not exist; use batch_level=True, or forward(..., hold_stats=True)")
        return src, dst, batch_level

    def jacobian_blocks(self, src: int = 0, dst: int | None = None, *, batch_level: bool | None = None,
                        max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[tuple[slice, Array]]:
        """``jacobian`` a block of rows at a time, so that a Jacobian too large for memory can be reduced or
        written out block by block.

        Parameters
        ----------
        src, dst, batch_level : as in ``jacobian``
        max_elements : signal entries per block, at most

        Yields
        ------
        (rows, block), block ``(k, B, *shape_src)``. Per sample: rows of dst's D_dst entries, ``block[i, b] =
        J_b[rows.start + i]``. Batch-level: rows of the B * D_dst entries of the batch at dst (entry (b, j) is row
        ``b * D_dst + j``), ``block[i]`` the gradient of that entry with respect to the whole batch at src.
        """
        src, dst, batch_level = self._jacobian_args(src, dst, batch_level)
        if current().fast:
            yield from fastpath.jacobian_blocks(self, src, dst, batch_level, max_elements)
            return
        for rows, seeds in self._identity_chunks(dst, not batch_level, src, dst, max_elements):
            yield rows, self.pullback(seeds, dst, src)

    def jacobian(self, src: int = 0, dst: int | None = None, *, batch_level: bool | None = None,
                 method: str = "vjp", max_elements: int = DEFAULT_MAX_ELEMENTS, out: Array | None = None) -> Array:
        """The exact Jacobian from position src to position dst.

        Parameters
        ----------
        src, dst : positions, 0 <= src <= dst <= P (dst None: the output P)
        batch_level : per sample (False) or of the whole batch (True); None: True when the pass couples samples
        method : "vjp" pulls back identity seeds from dst; "jvp" pushes identity seeds forward from src
        max_elements : signal entries per chunk of seeds, at most: memory stays bounded apart from the result
        out : (vjp only) receives the result, e.g. ``numpy.lib.format.open_memmap(path, "w+", dtype, shape)``

        Returns
        -------
        Per sample ``(B, D_dst, D_src)`` (D = entries per sample), or batch-level ``(B, D_dst, B, D_src)``.
        """
        src, dst, batch_level = self._jacobian_args(src, dst, batch_level)
        if method not in ("vjp", "jvp"):
            raise ValueError(f"method must be 'vjp' or 'jvp', got {method!r}")
        xp, b, dtype = self.xp, self.batch_size, self.values[0].dtype
        d_src, d_dst = flat_size(self.values[src].shape[1:]), flat_size(self.values[dst].shape[1:])
        shape = (b, d_dst, b, d_src) if batch_level else (b, d_dst, d_src)
        if out is not None and (method != "vjp" or tuple(out.shape) != shape or out.dtype != dtype):
            raise ValueError(f"out must be a {dtype} array of shape {shape} (method 'vjp'), "
                             f"got {getattr(out, 'dtype', None)} {getattr(out, 'shape', None)} ({method!r})")
        j = xp.empty(shape, dtype=dtype) if out is None else out
        if method == "vjp" and current().fast:
            return fastpath.jacobian(self, j, src, dst, batch_level, max_elements)
        if method == "vjp":  # blocks of rows: identity seeds at dst pulled back
            seeds_first = j.reshape(b * d_dst, b * d_src) if batch_level else j.transpose(1, 0, 2)
            blocks = self.jacobian_blocks(src, dst, batch_level=batch_level, max_elements=max_elements)
        else:  # blocks of columns: identity seeds at src pushed forward
            seeds_first = j.reshape(b * d_dst, b * d_src).T if batch_level else j.transpose(2, 0, 1)
            blocks = ((rows, self.pushforward(seeds, src, dst))
                      for rows, seeds in self._identity_chunks(src, not batch_level, src, dst, max_elements))
        for rows, block in blocks:
            seeds_first[rows] = block.reshape(seeds_first[rows].shape)
        return j

    def jacobian_sq_norms(self, dst: int | None = None, src: int = 0, *,
                          max_elements: int = DEFAULT_MAX_ELEMENTS) -> Array:
        """Per-sample ``||J_{dst<-p}||_F^2`` for every p in src..dst, from ONE identity-seeded sweep: no Jacobian
        is kept; each chunk of seeds is pulled back once and its squared entries summed at every position passed.

        Parameters
        ----------
        dst, src : positions, 0 <= src <= dst <= P (dst None: the output P)
        max_elements : signal entries per chunk of seeds, at most

        Returns
        -------
        ``(dst - src + 1, B)``, row ``p - src`` for position p. Needs a pass without batch coupling (see
        ``batch_jacobian_sq_norms`` otherwise).
        """
        dst, src = self._pos(dst, -1), self._pos(src, 0)
        if self.couples_batch:
            raise ValueError("this pass couples samples: use batch_jacobian_sq_norms, or forward(..., hold_stats=True)")
        return self._sq_norms(src, dst, True, max_elements)

    def batch_jacobian_sq_norms(self, dst: int | None = None, src: int = 0, *,
                                max_elements: int = DEFAULT_MAX_ELEMENTS) -> Array:
        """Batch-level ``||J_batch(dst<-p)||_F^2`` for every p in src..dst, with the parameters of
        ``jacobian_sq_norms``. Without coupling this is the sum of the per-sample norms (D_dst seeds). With coupling
        it takes B * D_dst seeds, in chunks: exact, but costly at large batches (see ``hutchinson_sq_norms``).

        Returns
        -------
        ``(dst - src + 1,)``, entry ``p - src`` for position p.
        """
        dst, src = self._pos(dst, -1), self._pos(src, 0)
        return self._sq_norms(src, dst, not self.couples_batch, max_elements).sum(axis=1)

    def _sq_norms(self, src: int, dst: int, per_sample: bool, max_elements: int) -> Array:
        """The sweep of identity seeds from dst, e_j in every sample at once (per_sample) or e_(b, j): the squared
        entries of the pulled-back seeds at every position p, summed per sample of p, (dst - src + 1, B)."""
        if current().fast:
            return fastpath.sq_norms(self, src, dst, per_sample, max_elements)
        b = self.batch_size
        acc = self.xp.zeros((dst - src + 1, b), dtype="float64")  # float64 sums also for float32 nets
        for _, seeds in self._identity_chunks(dst, per_sample, src, dst, max_elements):
            for p, v in self.pullbacks(seeds, dst, src):
                acc[p - src] += (v * v).reshape(v.shape[0], b, -1).sum(axis=(0, 2), dtype="float64")
        return acc.astype(self.values[0].dtype)

    def hutchinson_sq_norms(self, dst: int | None = None, src: int = 0, *, n_probes: int = 4,
                            rng: numpy.random.Generator | int | None = None, probe: str = "gaussian") -> tuple[Array, Array]:
        """Unbiased estimates of the batch-level ``||J_batch(dst<-p)||_F^2`` for every p in src..dst, with
        their standard errors: ``E_v ||J^T v||^2 = ||J||_F^2`` for v ~ N(0, I) (or Rademacher) of the shape
        of position dst. All probes are pulled back together in one sweep. Returns ``(mean, stderr)``, each of
        shape ``(dst - src + 1,)``; the standard error is the sample std over probes / sqrt(n_probes)."""
        dst, src = self._pos(dst, -1), self._pos(src, 0)
        if n_probes < 2:
            raise ValueError("n_probes must be at least 2 to report a standard error")
        if probe not in ("gaussian", "rademacher"):
            raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
        rng, shape = numpy.random.default_rng(rng), (n_probes,) + tuple(self.values[dst].shape)
        v = rng.standard_normal(shape) if probe == "gaussian" else rng.choice([-1.0, 1.0], size=shape)
        v = self.xp.asarray(v, dtype=self.values[dst].dtype)
        samples = self.xp.zeros((dst - src + 1, n_probes), dtype=v.dtype)
        for p, s in self.pullbacks(v, dst, src):
            samples[p - src] = (s * s).reshape(n_probes, -1).sum(axis=1)
        return samples.mean(axis=1), samples.std(axis=1, ddof=1) / math.sqrt(n_probes)
