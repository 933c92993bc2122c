"""The Layer protocol, the cache type, and the chain rule over a sequence of layers.

Every layer is a map ``y = f(x; params)`` on a batch. It provides, by hand:

    forward(x, mode)        -> (y, cache)        the cache holds what the derivatives need
    vjp(cache, dy)          -> dx = J^T dy        reverse mode (vector-Jacobian product)
    jvp(cache, dx)          -> dy = J dx          forward mode (Jacobian-vector product)
    jacobian(cache)         -> J                  exact, per sample (B, d_out, d_in), or batch-level
                                                  (B, d_out, B, d_in) when the layer couples samples
    param_grads(cache, dy)  -> {name: dE/dparam}  for a cotangent dy of shape (B, d_out)
    param_jvp(cache, dp)    -> dy                 output tangent for a parameter tangent {name: dparam} (missing: 0)

Shapes. Dense data is ``(B, d)``; convolutional data ``(B, C, H, W)``. ``vjp`` and ``jvp`` accept any number
of extra *leading probe axes*: a cotangent of shape ``(P, B, d_out)`` pulls back P signals in one call. This
is what turns an exact Jacobian into one identity-seeded sweep. All formulas therefore address the batch and
feature axes from the right (axis -1 is the feature axis of dense data, axis -2 its batch axis).

A layer whose output for one sample depends on other samples (batch norm with batch statistics) has
``couples_batch = True``; for a given forward pass, ``cache.coupled`` says whether that coupling is live
(it is not in eval mode, nor when the batch statistics are held constant). A coupled ``jacobian`` is batch-level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, Iterable, Iterator

from ..backend import array_module

Array = Any  # numpy.ndarray or cupy.ndarray

LAYER_KINDS: dict[str, type["Layer"]] = {}


@dataclass(frozen=True)
class Mode:
    """How a forward pass runs.

    train         batch norm uses the batch statistics (True) or its running statistics (False)
    hold_stats    batch statistics are treated as constants by vjp/jvp/jacobian, so every Jacobian is
                  per-sample (batch norm becomes a fixed per-feature affine map of this batch)
    update_stats  batch norm updates its running statistics (training loops set this; metrics do not)
    """

    train: bool = True
    hold_stats: bool = False
    update_stats: bool = False


class Cache(SimpleNamespace):
    """What a forward pass keeps for the derivatives. ``coupled`` is True when samples interact."""

    coupled: bool = False


class Layer:
    """Base class. Subclasses set ``kind`` (the name used in saved files) and implement the methods below."""

    kind: ClassVar[str] = ""
    couples_batch: ClassVar[bool] = False
    n_linear: ClassVar[int] = 0  # parametrised weight layers inside (compositional depth)
    is_nonlinearity: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            LAYER_KINDS[cls.kind] = cls

    # -- parameters and state -------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Array]:
        """Trainable arrays by name (the same array objects the layer computes with)."""
        return {}

    @property
    def state(self) -> dict[str, Array]:
        """Non-trainable arrays that are saved with the layer (batch-norm running statistics)."""
        return {}

    def config(self) -> dict[str, Any]:
        """Hyperparameters as JSON-able values; ``type(self)(**config, **params, **state)`` rebuilds the layer."""
        return {}

    # -- the maps -------------------------------------------------------------------------------------
    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        raise NotImplementedError

    def vjp(self, cache: Cache, dy: Array) -> Array:
        raise NotImplementedError

    def jvp(self, cache: Cache, dx: Array) -> Array:
        raise NotImplementedError

    def jacobian(self, cache: Cache) -> Array:
        raise NotImplementedError

    def param_grads(self, cache: Cache, dy: Array) -> dict[str, Array]:
        return {}

    def param_jvp(self, cache: Cache, dparams: dict[str, Array]) -> Array:
        return None

    def backward(self, cache: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
        """``(vjp(dy), param_grads(dy))`` in one call (layers with inner layers do both in one pass)."""
        return self.vjp(cache, dy), self.param_grads(cache, dy)

    # -- what metrics ask a layer -----------------------------------------------------------------------
    def children(self, cache: Cache | None = None) -> list[tuple[str, "Layer", Array, Cache]]:
        """The layers inside this one as ``(name, layer, input value, cache)`` in the forward pass of ``cache``
        (value and cache None without one); a leaf has none."""
        return []

    def diagonal_derivative(self, cache: Cache) -> Array | None:
        """phi'(z), the data's shape (B, *feat), where the vjp is ``dy * phi'(z)``; None for other layers."""
        return None

    def lambda_split_step(self, cache: Cache, x: Array, G: Array, prefix: str, split: Any) -> Array | None:
        """This layer's step of the λ-split of the gradient around θ = θ(0) + R (``metrics.effective_depth``): from
        G (n, B, *out), G[λ] the part of the output cotangent carried by paths with exactly λ factors R, it writes the
        λ-parts Γ_θ (n', *θ.shape) of its parameter gradients into ``split.parts[prefix + name]`` and returns those of
        the input cotangent, G' (n', B, *in); x (B, *in) is its input. ``split`` holds θ(0) (``params0``), the
        ``mode``, and the sums over the λ axis. This default (norm gains, PReLU slopes, convolution kernels):

            no parameters  G'[λ] = Back(G[λ])          the vjp at the current pass, all λ at once (probe axis)
            parameters     Γ_θ[λ] = param_grads(G[λ])
                           G'[λ]  = Back_θ(0)(G[λ]) + (Back_θ(t) - Back_θ(0))(G[λ-1])

        the initial backward keeps λ, the change moves λ -> λ+1 (exact when Back is affine in θ). Back_θ(0) is the
        vjp of a copy of the layer built at θ(0), run forward on x; the layer itself is left as it is. The copy is
        ``type(self)(**config(), **params, **state)``: a layer of your own either takes those by name or overrides this.
        """
        if not self.params:
            return self.vjp(cache, G)
        for k, g in self.param_grads(cache, G).items():
            split.parts[prefix + k] = g
        initial = type(self)(**self.config(), **{k: split.params0[prefix + k] for k in self.params}, **self.state)
        back0 = initial.vjp(initial.forward(x, split.mode)[1], G)
        return split.shifted(back0, self.vjp(cache, G) - back0)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one sample's output for one sample's input shape (no batch axis)."""
        return in_shape

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in self.config().items() if not isinstance(v, (list, dict)))
        return f"{type(self).__name__}({cfg})"


# --- the chain rule over a sequence of layers ------------------------------------------------------------


def forward_chain(layers: list[Layer], x: Array, mode: Mode) -> tuple[list[Array], list[Cache]]:
    """Values at every position (``values[0] = x``) and every layer's cache."""
    values, caches = [x], []
    for layer in layers:
        x, cache = layer.forward(x, mode)
        values.append(x)
        caches.append(cache)
    return values, caches


def vjp_chain(layers: list[Layer], caches: list[Cache], dy: Array) -> Array:
    for layer, cache in zip(reversed(layers), reversed(caches)):
        dy = layer.vjp(cache, dy)
    return dy


def jvp_chain(layers: list[Layer], caches: list[Cache], dx: Array) -> Array:
    for layer, cache in zip(layers, caches):
        dx = layer.jvp(cache, dx)
    return dx


def backward_chain(layers: list[Layer], caches: list[Cache], dy: Array,
                   input_grad: bool = True) -> tuple[Array | None, list[dict[str, Array]]]:
    """Input cotangent and each layer's parameter gradients, in forward order. ``input_grad=False`` skips the
    first layer's vjp (a training step never uses it) and returns None for the input cotangent."""
    grads = []
    for i, (layer, cache) in enumerate(zip(reversed(layers), reversed(caches))):
        if input_grad or i < len(layers) - 1:
            dy, g = layer.backward(cache, dy)
        else:
            dy, g = None, layer.param_grads(cache, dy)
        grads.append(g)
    return dy, grads[::-1]


def param_jvp_chain(
    layers: list[Layer], caches: list[Cache], dparams: list[dict[str, Array]], dx: Array | None = None
) -> Array | None:
    """Output tangent of the chain for per-layer parameter tangents (and an optional input tangent dx)."""
    t = dx
    for layer, cache, dp in zip(layers, caches, dparams):
        t = layer.jvp(cache, t) if t is not None else None
        if dp:
            tp = layer.param_jvp(cache, dp)
            if tp is not None:
                t = tp if t is None else t + tp
    return t


def jacobian_chain(layers: list[Layer], caches: list[Cache]) -> Array:
    """Product of the layers' explicit Jacobians (batch-level as soon as one of them is coupled)."""
    coupled = any(c.coupled for c in caches)
    total = None
    for layer, cache in zip(layers, caches):
        j = layer.jacobian(cache)
        if coupled and not cache.coupled:
            j = block_diagonal(j)
        if total is None:
            total = j
        elif coupled:
            total = array_module(j).einsum("aibj,bjck->aick", j, total)
        else:
            total = j @ total
    return total


def block_diagonal(j: Array) -> Array:
    """Per-sample Jacobians (B, m, n) as the batch-level Jacobian (B, m, B, n), zero between samples."""
    eye = array_module(j).eye(j.shape[0], dtype=j.dtype)
    return j[:, :, None, :] * eye[:, None, :, None]


def lambda_split_chain(layers: list[Layer], values: list[Array], caches: list[Cache], G: Array, prefix: str,
                       split: Any) -> Array | None:
    """The λ-split pulled back through a sequence of layers: each one's ``lambda_split_step``, last to first."""
    for i in reversed(range(len(layers))):
        G = layers[i].lambda_split_step(caches[i], values[i], G, f"{prefix}{i}.", split)
    return G


def iter_leaves(layers: list[Layer], values: list[Array] | None = None, caches: list[Cache] | None = None,
                prefix: str = "") -> Iterator[tuple[str, Layer, Array, Cache]]:
    """The walk of the layer tree: every leaf layer in forward order, descending into ``children`` (residual
    blocks), as ``(prefix, layer, input value, cache)``; prefix is the one of its parameter names (``"3.branch.2."``),
    value and cache are None without ``values`` and ``caches``."""
    n = len(layers)
    return _leaves(zip(map(str, range(n)), layers, values or [None] * n, caches or [None] * n), prefix)


def _leaves(named: Iterable[tuple[str, Layer, Array, Cache]], prefix: str) -> Iterator[tuple[str, Layer, Array, Cache]]:
    for name, layer, x, cache in named:
        inner = layer.children(cache)
        if inner:
            yield from _leaves(inner, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}.", layer, x, cache


def sum_to_param(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum a per-sample gradient g of shape (..., B, *data) down to a parameter of ``shape``.

    ``shape`` lines up with the trailing data axes; the batch axis and every axis where ``shape`` is 1
    (spatial axes of per-channel parameters) are summed. Leading probe axes are kept.
    """
    batch_axis = g.ndim - len(shape) - 1
    ones = tuple(batch_axis + 1 + i for i, s in enumerate(shape) if s == 1)
    if ones:
        g = g.sum(axis=ones, keepdims=True)
    return g.sum(axis=batch_axis)


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(int(s) for s in shape)
