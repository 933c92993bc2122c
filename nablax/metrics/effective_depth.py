"""Effective depth by the exact λ-split of the gradient (gradients-explode spec §3, §5, §5.1), as a training callback.

The residual trick splits every parametrised layer into its initial function and a residual: a linear layer's
weight is ``W_i(t) = W_i(0) + R_i(t)``. Backpropagating the error through ``W(0) + R`` at every linear layer
splits each gradient by λ, the number of residual matrices R on the path from the error down to the layer:

    G[λ]   the part of the cotangent carried by paths with exactly λ residual factors, shape (B, d)
    Dense  Γ_i[λ] = A_{i-1}^T G[λ]                        λ-part of dE/dW_i           (d_{i-1}, d_i)
           γ_i[λ] = 1^T G[λ]                              λ-part of dE/db_i (a bias adds no factor)
           G'[λ]  = G[λ] W_i(0)^T + G[λ-1] R_i^T          the pass below: R moves λ -> λ+1
    other  G'[λ]  = Back(G[λ])                            any unparametrised layer: its vjp at the CURRENT
                                                          forward pass, linear in the cotangent, all λ at once
                                                          through the layer's leading probe axis
    block  G_in[λ] = G_out[λ] + β BranchBack(G_out)[λ]    residual block: the skip keeps λ (identity skip is
                                                          part of the initial function)
    gains  G'[λ]  = Back_θ(0)(G[λ]) + (Back_θ(t) - Back_θ(0))(G[λ-1])
                                                          a layer with other parameters (norm gains, PReLU
                                                          slopes): its initial backward keeps λ, the change
                                                          moves λ -> λ+1 (exact when Back is affine in θ)

Invariant (Derived; tested): ``Σ_λ Γ_i[λ] = dE/dW_i`` exactly for every parameter. At θ(t) = θ(0) only λ = 0 is
nonzero. λ ≤ (parametrised layers above layer i), so the largest λ is D - 1, D = the number of parametrised
layers (the linear layers of the papers' nets).

Accumulated over training (every ``every``-th step, weighted by ``every``):

    "sum_of_norms" (default)  C[λ] += Σ_i w_i ||U_i[λ]||_F
    "norm_of_sum"             M_i[λ] -= U_i[λ];  C[λ] = Σ_i w_i ||M_i[λ]||_F  (the λ-parts of W_i(T) - W_i(0))

where ``U_i[λ]`` is the λ-part of the optimiser's step (``Σ_λ U_i[λ]`` = the step, exactly), as each optimiser
states it (``nablax.optim``, ``linearised_update``):
    SGD                  U[λ] = α Γ[λ]                               exact
    SGD with momentum    v[λ] <- μ v[λ] + Γ[λ];  U[λ] = α v[λ]       exact (momentum is linear; one buffer per λ)
    RMSprop, Adam        the step's own per-coordinate preconditioner applied to Γ[λ] (Adam's first moment
                         kept per λ): a LINEARISATION, flagged as ``optimizer_mode = "preconditioner_linearised"``
and ``w_i = 1`` (default) or ``1 / ||W_i(0)||_F`` (``layer_weight="inverse_init_norm"``). Only multiplicative
parameters count in C (weights, gains, slopes; not biases: they carry no path factor).

    effective_depth(ε) = 1 + max{ λ : C[λ] >= ε Σ_λ' C[λ'] }

The threshold ε is Open (the paper's is unknown): it is a required option, default ``DEFAULT_EPS = 0.01`` — a
λ-component is negligible when it carries less than 1% of the accumulated update magnitude, the order of the
minibatch-to-minibatch noise of one step — and every report also gives the sweep over ``EPS_GRID``. With ε = 0 the
effective depth is D; with nothing accumulated (or only λ = 0) it is 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy

from ..backend import array_module
from ..kernels.blas import matmul
from ..layers import Dense, Residual
from ..layers.base import Array, Cache, Layer, Mode, iter_leaves
from ..network import Network, Trace
from .training import Step, TrainingCallback

DEFAULT_EPS = 0.01
EPS_GRID = (0.1, 0.03, 0.01, 0.003, 0.001, 1e-4)
ACCUMULATE = ("sum_of_norms", "norm_of_sum")
LAYER_WEIGHTS = ("one", "inverse_init_norm")
BIAS_NAMES = ("b", "beta")  # parameters that shift, not scale: no path factor, not counted in C


def parametrised_leaves(net: Network) -> list[str]:
    """Name prefixes of the leaf layers that have parameters, forward order; their number is D."""
    return [pre for pre, layer, _, _ in iter_leaves(net.layers) if layer.params]


def counted_params(net: Network) -> list[str]:
    """The parameters whose λ-parts enter C: every parameter of a parametrised leaf except biases."""
    return [f"{pre}{k}" for pre, layer, _, _ in iter_leaves(net.layers) for k in layer.params if k not in BIAS_NAMES]


@dataclass
class LambdaSplit:
    """parts[name]: (n, *shape) with parts[name][λ] the λ-contribution to dE/dθ[name] (n <= D);
    dx: (n, B, d_0) the λ-split of dE/dx at the input; D the number of parametrised layers."""

    parts: dict[str, Array]
    dx: Array
    D: int


def _pad_add(a: Array, b: Array) -> Array:
    """a + b along the λ axis 0, the shorter one padded with zeros."""
    if a.shape[0] < b.shape[0]:
        a, b = b, a
    out = a.copy()
    out[: b.shape[0]] += b
    return out


def _shifted(keep: Array, move: Array) -> Array:
    """out[λ] = keep[λ] + move[λ-1]: the λ-components of a layer split into an initial and a residual part."""
    xp = array_module(keep)
    out = xp.zeros((keep.shape[0] + 1,) + keep.shape[1:], dtype=keep.dtype)
    out[:-1] = keep
    out[1:] += move
    return out


class _Splitter:
    """The plain λ-split (``lambda_split(..., fast=False)``): every parameter's parts and the input cotangent,
    each formula of the module docstring as written."""

    def __init__(self, params0: dict[str, Array], mode: Mode) -> None:
        self.params0, self.mode = params0, mode
        self.parts: dict[str, Array] = {}

    def back(self, layers: list[Layer], values: list[Array], caches: list[Cache], prefix: str, G: Array) -> Array:
        for i in reversed(range(len(layers))):
            layer, cache, pre = layers[i], caches[i], f"{prefix}{i}."
            if isinstance(layer, Residual):
                G = self.residual(layer, cache, pre, G)
            elif isinstance(layer, Dense):
                G = self.dense(layer, cache, pre, G)
            elif layer.params:
                G = self.gains(layer, values[i], cache, pre, G)
            else:
                G = layer.vjp(cache, G)
        return G

    def residual(self, layer: Residual, cache: Cache, pre: str, G: Array) -> Array:
        branch = self.back(layer.branch, cache.values, cache.caches, pre + "branch.", layer.beta * G)
        skip = G if layer.skip is None else self.dense(layer.skip, cache.skip, pre + "skip.", G)
        return _pad_add(skip, branch)

    def dense(self, layer: Dense, cache: Cache, pre: str, G: Array) -> Array:
        self.parts[pre + "W"] = cache.x.T @ G  # (d_in, B) @ (n, B, d_out) -> (n, d_in, d_out)
        if layer.b is not None:
            self.parts[pre + "b"] = G.sum(axis=-2)
        W0 = self.params0[pre + "W"]
        return _shifted(G @ W0.T, G @ (layer.W - W0).T)

    def gains(self, layer: Layer, x: Array, cache: Cache, pre: str, G: Array) -> Array:
        for k, g in layer.param_grads(cache, G).items():
            self.parts[pre + k] = g
        current = {k: v.copy() for k, v in layer.params.items()}
        try:
            for k, v in layer.params.items():
                v[...] = self.params0[pre + k]
            _, cache0 = layer.forward(x, Mode(train=self.mode.train, hold_stats=self.mode.hold_stats))
            G0 = layer.vjp(cache0, G)
        finally:
            for k, v in layer.params.items():
                v[...] = current[k]
        return _shifted(G0, layer.vjp(cache, G) - G0)


class _FastSplitter(_Splitter):
    """The same λ-split with less work; it agrees with ``_Splitter`` to rounding (tested):

    - a Dense layer's λ-parts only for the parameters in ``keys`` (``EffectiveDepth``'s: no bias parts), and no
      input cotangent when ``bottom`` is the first layer, a Dense one: its two pullbacks, which carry the most λ
      of all (D of them), are skipped
    - a Dense layer's pullbacks G W(0)^T and G R^T are each ONE matrix product over all (λ, batch) rows, the first
      written straight into the (n + 1, B, d_in) result (rows λ = 0..n-1), the second added to its rows 1..n; the
      plain ``_shifted`` also zero-fills and copies
    - a residual block adds the skip's parts into the branch's (the longer one, a fresh array) in place, and does
      not scale by beta = 1
    """

    def __init__(self, params0: dict[str, Array], mode: Mode, keys: set[str] | None, bottom: Layer | None) -> None:
        super().__init__(params0, mode)
        self.keys, self.bottom = keys, bottom

    def residual(self, layer: Residual, cache: Cache, pre: str, G: Array) -> Array:
        branch = self.back(layer.branch, cache.values, cache.caches, pre + "branch.",
                           G if layer.beta == 1.0 else layer.beta * G)
        skip = G if layer.skip is None else self.dense(layer.skip, cache.skip, pre + "skip.", G)
        longer, shorter = (branch, skip) if branch.shape[0] >= skip.shape[0] else (skip, branch)
        xp = array_module(G)
        if xp.may_share_memory(longer, G) or xp.may_share_memory(longer, shorter):  # not ours to add into
            return _pad_add(skip, branch)
        longer[: shorter.shape[0]] += shorter
        return longer

    def dense(self, layer: Dense, cache: Cache, pre: str, G: Array) -> Array | None:
        if self.keys is None or pre + "W" in self.keys:
            self.parts[pre + "W"] = cache.x.T @ G
        if layer.b is not None and (self.keys is None or pre + "b" in self.keys):
            self.parts[pre + "b"] = G.sum(axis=-2)
        if layer is self.bottom:
            return None
        W0 = self.params0[pre + "W"]
        n, B, d_out = G.shape
        rows = G.reshape(n * B, d_out)
        out = array_module(G).empty((n + 1, B, layer.d_in), dtype=G.dtype)
        matmul(rows, W0.T, out=out[:n].reshape(n * B, layer.d_in))
        out[n] = 0
        out[1:] += matmul(rows, (layer.W - W0).T).reshape(n, B, layer.d_in)
        return out


def lambda_split(trace: Trace, dE_dout: Array, params0: dict[str, Array], *, keys: Any = None,
                 input_grad: bool = True, fast: bool = True) -> LambdaSplit:
    """The exact λ-split of dE/dθ for the forward pass ``trace`` at θ(t), around the initial parameters
    ``params0`` (``Network.copy_params()`` names). ``dE_dout`` (B, d_out) is the error's output cotangent.

    ``keys`` (parameter names; default all): the Dense layers' parts of other parameters are not computed;
    ``input_grad=False`` leaves ``dx`` None where the first layer is a Dense one. Both only with ``fast``
    (``_FastSplitter``, the default; the same numbers to rounding).
    ``fast=False`` runs the plain ``_Splitter``, which always gives everything."""
    net = trace.network
    if fast:
        first = net.layers[0]
        bottom = first if not input_grad and isinstance(first, Dense) else None
        splitter: _Splitter = _FastSplitter(params0, trace.mode, None if keys is None else set(keys), bottom)
    else:
        splitter = _Splitter(params0, trace.mode)
    dx = splitter.back(net.layers, trace.values, trace.caches, "", dE_dout[None])
    return LambdaSplit(splitter.parts, dx, len(parametrised_leaves(net)))


def effective_depth(C: Any, eps: float) -> int:
    """``1 + max{λ : C[λ] >= eps * Σ C}`` for accumulated λ-contributions C (length D); 1 if nothing is accumulated
    or no λ reaches the threshold (the updated layer itself)."""
    C = numpy.asarray(C, dtype=float)
    if eps < 0:
        raise ValueError(f"the threshold eps must be >= 0, got {eps}")
    total = C.sum()
    if eps > 0 and not total > 0:
        return 1
    above = numpy.nonzero(C >= eps * total)[0]
    return 1 + int(above.max()) if above.size else 1


def _norms(parts: Array) -> numpy.ndarray:
    """Frobenius norm of each λ-component of a (n, *shape) array."""
    xp = array_module(parts)
    sq = (parts * parts).reshape(parts.shape[0], -1).sum(axis=1)
    return numpy.asarray(xp.sqrt(sq).tolist(), dtype=float)


def _norms_fast(parts: Array) -> numpy.ndarray:
    """``_norms`` in one pass, without the (n, *shape) temporary, where the array module has ``vecdot``."""
    xp = array_module(parts)
    if not hasattr(xp, "vecdot"):
        return _norms(parts)
    flat = parts.reshape(parts.shape[0], -1)
    return numpy.asarray(xp.sqrt(xp.vecdot(flat, flat)).tolist(), dtype=float)


def update_norms(opt: Any, key: str, parts: Array, buffers: dict[str, Array]) -> numpy.ndarray:
    """``_norms(opt.linearised_update(key, parts, buffers))`` with less work (the fast path; the same to
    rounding): for plain SGD as α ||Γ[λ]||_F, without the temporary α Γ."""
    if getattr(opt, "name", "") == "sgd" and opt.momentum == 0.0:
        return opt.lr * _norms_fast(parts)
    return _norms_fast(opt.linearised_update(key, parts, buffers))


class EffectiveDepth(TrainingCallback):
    """Accumulates the λ-contributions C during training; reports ``effective_depth`` (at ``eps``) and the sweep
    ``effective_depth_sweep`` over ``eps_grid`` per epoch, and the array ``lambda_contributions`` (C, length D).

    Options (spec §13): ``eps`` (required threshold, default 0.01), ``accumulate`` ("sum_of_norms" |
    "norm_of_sum"), ``layer_weight`` ("one" | "inverse_init_norm"), ``every`` (measure every s-th step, weight s;
    with momentum or Adam the per-λ buffers then see only the measured steps, an approximation). ``fast=False``
    takes the plain split (``lambda_split(..., fast=False)``) and the norms of the optimiser's
    ``linearised_update``;
    the two agree to rounding.
    """

    name = "effective_depth"

    def __init__(self, eps: float = DEFAULT_EPS, eps_grid: tuple[float, ...] = EPS_GRID,
                 accumulate: str = "sum_of_norms", layer_weight: str = "one", every: int = 1,
                 fast: bool = True) -> None:
        if accumulate not in ACCUMULATE:
            raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
        if layer_weight not in LAYER_WEIGHTS:
            raise ValueError(f"layer_weight must be one of {LAYER_WEIGHTS}, got {layer_weight!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps, self.eps_grid = float(eps), tuple(float(e) for e in eps_grid)
        self.accumulate, self.layer_weight, self.every = accumulate, layer_weight, int(every)
        self.fast = bool(fast)
        self.C: numpy.ndarray | None = None
        self.buffers: dict[str, Array] = {}
        self.M: dict[str, Array] = {}
        self._pending: dict[str, Array] | None = None

    def start(self, trainer: Any) -> None:
        net = trainer.net
        self.params0 = trainer.params0
        self.D = len(parametrised_leaves(net))
        self.keys = counted_params(net)
        if self.layer_weight == "one":
            self.weights = {k: 1.0 for k in self.keys}
        else:
            self.weights = {k: 1.0 / max(float(_norms(self.params0[k][None])[0]), 1e-300) for k in self.keys}
        if self.C is None:
            self.C = numpy.zeros(self.D)
        self.optimizer_mode = "exact" if trainer.opt.name == "sgd" else "preconditioner_linearised"

    def before_step(self, trainer: Any, step: Step) -> None:
        if step.index % self.every:
            self._pending = None
            return
        split = lambda_split(step.trace, step.dE_dout, self.params0, keys=self.keys, input_grad=False,
                             fast=self.fast)
        self._pending = {k: split.parts[k] for k in self.keys}

    def after_step(self, trainer: Any, step: Step) -> None:
        if self._pending is None:
            return
        opt = trainer.opt
        for k, parts in self._pending.items():
            if self.accumulate == "sum_of_norms":
                if self.fast:
                    norms = update_norms(opt, k, parts, self.buffers)
                else:
                    norms = _norms(opt.linearised_update(k, parts, self.buffers))
                self.C[: parts.shape[0]] += self.every * self.weights[k] * norms
            else:
                U = opt.linearised_update(k, parts, self.buffers)
                m = self.M.setdefault(k, array_module(U).zeros_like(U))
                m -= self.every * U
        self._pending = None

    def contributions(self) -> numpy.ndarray:
        """C[λ], λ = 0..D-1."""
        if self.accumulate == "sum_of_norms":
            return self.C.copy()
        C = numpy.zeros(self.D)
        for k, m in self.M.items():
            C[: m.shape[0]] += self.weights[k] * _norms(m)
        return C

    def depth(self, eps: float | None = None) -> int:
        return effective_depth(self.contributions(), self.eps if eps is None else eps)

    def end_epoch(self, trainer: Any) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
        C = self.contributions()
        sweep = {f"{e:g}": effective_depth(C, e) for e in self.eps_grid}
        return ({"effective_depth": effective_depth(C, self.eps), "effective_depth_sweep": sweep},
                {"lambda_contributions": C})

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"C": self.C}
        state.update({f"buffer.{k}": v for k, v in self.buffers.items()})
        state.update({f"M.{k}": v for k, v in self.M.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.C = numpy.asarray(state["C"], dtype=float).copy()
        self.buffers = {k[len("buffer."):]: v for k, v in state.items() if k.startswith("buffer.")}
        self.M = {k[len("M."):]: v for k, v in state.items() if k.startswith("M.")}

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "eps_grid": list(self.eps_grid), "accumulate": self.accumulate,
                "layer_weight": self.layer_weight, "every_s_steps": self.every,
                "optimizer_mode": getattr(self, "optimizer_mode", None)}


__all__ = ["DEFAULT_EPS", "EPS_GRID", "LambdaSplit", "lambda_split", "effective_depth", "update_norms",
           "EffectiveDepth", "parametrised_leaves", "counted_params"]
