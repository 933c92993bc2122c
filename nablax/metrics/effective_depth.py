"""Effective depth by the exact λ-split of the gradient (gradients-explode spec §3, §5, §5.1), as a training callback.

The residual trick splits every parametrised layer into its initial function and a residual: a linear layer's
weight is ``W_i(t) = W_i(0) + R_i(t)``. Backpropagating the error through ``W(0) + R`` at every linear layer
splits each gradient by λ, the number of residual matrices R on the path from the error down to the layer:

    G[λ]   the part of the cotangent carried by paths with exactly λ residual factors, shape (n, B, d)

Each layer states its own step of the split, with the math, in its ``lambda_split_step`` (``Dense``: W(0) keeps λ,
R moves λ -> λ+1; ``Layer``; ``Residual``: the identity skip keeps λ), walked by ``layers.base.lambda_split_chain``.

Invariant (Derived; tested): ``Σ_λ Γ_i[λ] = dE/dW_i`` exactly for every parameter. At θ(t) = θ(0) only λ = 0 is
nonzero. λ ≤ (parametrised layers above layer i), so the largest λ is D - 1, D = the number of parametrised
layers (the linear layers of the papers' nets).

Accumulated over training (every ``every``-th step, weighted by ``every``):

    "sum_of_norms" (default)  C[λ] += Σ_i w_i ||U_i[λ]||_F
    "norm_of_sum"             M_i[λ] -= U_i[λ];  C[λ] = Σ_i w_i ||M_i[λ]||_F  (the λ-parts of W_i(T) - W_i(0))

where ``U_i[λ]`` is the λ-part of the optimiser's step (``Σ_λ U_i[λ]`` = the step, exactly), as each optimiser
states it (``linearised_update`` in ``nablax.optim``): exact for SGD, U[λ] = α Γ[λ], with momentum too (one buffer
per λ); for RMSprop and Adam a LINEARISATION (their preconditioner applied to Γ[λ]), flagged as
``optimizer_mode = "preconditioner_linearised"``. ``w_i = 1`` (default) or ``1 / ||W_i(0)||_F``
(``layer_weight="inverse_init_norm"``). Only multiplicative parameters count in C (weights, gains, slopes; not
biases: they carry no path factor).

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
from ..layers.base import Array, Layer, Mode, iter_leaves, lambda_split_chain
from ..network import Network, Trace
from . import check_choice
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


class _Split:
    """What each layer's ``lambda_split_step`` is handed: θ(0), the mode (statistics not updated), the parts found so
    far, the parameters asked for (``keys``, None: all) and the ``bottom`` layer whose input cotangent no one wants
    (None: every one), and the sums over the λ axis, as written here (the plain split, ``fast=False``)."""

    def __init__(self, params0: dict[str, Array], mode: Mode, keys: set[str] | None = None,
                 bottom: Layer | None = None) -> None:
        self.params0, self.mode = params0, Mode(train=mode.train, hold_stats=mode.hold_stats)
        self.keys, self.bottom, self.parts = keys, bottom, {}

    def wants(self, name: str) -> bool:
        return self.keys is None or name in self.keys

    @staticmethod
    def shifted(keep: Array, move: Array) -> Array:
        """out[λ] = keep[λ] + move[λ-1]: the λ-components of a layer split into an initial and a residual part."""
        out = array_module(keep).zeros((keep.shape[0] + 1,) + keep.shape[1:], dtype=keep.dtype)
        out[:-1] = keep
        out[1:] += move
        return out

    def shifted_products(self, G: Array, M0: Array, M1: Array) -> Array:
        """out[λ] = G[λ] M0 + G[λ-1] M1."""
        return self.shifted(G @ M0, G @ M1)

    @staticmethod
    def padded_sum(a: Array, b: Array) -> Array:
        """a + b along the λ axis 0, the shorter one padded with zeros."""
        if a.shape[0] < b.shape[0]:
            a, b = b, a
        out = a.copy()
        out[: b.shape[0]] += b
        return out


class _FastSplit(_Split):
    """The same λ-split with less work, agreeing with ``_Split`` to rounding (tested); the one given ``keys`` and a
    ``bottom``. A Dense layer gives parts only for ``keys`` and, as the ``bottom``, skips its two pullbacks (they
    carry the most λ of all); its pullbacks G W(0)^T and G R^T are each ONE matrix product over all (λ, batch) rows,
    written straight into the result; a residual block adds the skip's parts into the branch's in place.
    """

    def shifted_products(self, G: Array, M0: Array, M1: Array) -> Array:
        n, B, d_out = G.shape
        rows, d_in = G.reshape(n * B, d_out), M0.shape[1]
        out = array_module(G).empty((n + 1, B, d_in), dtype=G.dtype)
        matmul(rows, M0, out=out[:n].reshape(n * B, d_in))
        out[n] = 0
        out[1:] += matmul(rows, M1).reshape(n, B, d_in)
        return out

    def padded_sum(self, a: Array, b: Array) -> Array:
        longer, shorter = (b, a) if b.shape[0] >= a.shape[0] else (a, b)
        if array_module(a).may_share_memory(longer, shorter) or not longer.flags.owndata:  # not ours to add into
            return super().padded_sum(a, b)
        longer[: shorter.shape[0]] += shorter
        return longer


def lambda_split(trace: Trace, dE_dout: Array, params0: dict[str, Array], *, keys: Any = None,
                 input_grad: bool = True, fast: bool = True) -> LambdaSplit:
    """The exact λ-split of dE/dθ for the forward pass ``trace`` at θ(t), around the initial parameters
    ``params0`` (``Network.copy_params()`` names). ``dE_dout`` (B, d_out) is the error's output cotangent.

    ``keys`` (parameter names; default all): the Dense layers' parts of other parameters are not computed;
    ``input_grad=False`` leaves ``dx`` None where the first layer is a Dense one. Both only with ``fast``
    (``_FastSplit``, the default; the same numbers to rounding).
    ``fast=False`` runs the plain ``_Split``, which always gives everything."""
    net = trace.network
    split = (_FastSplit(params0, trace.mode, None if keys is None else set(keys), None if input_grad else net.layers[0])
             if fast else _Split(params0, trace.mode))
    dx = lambda_split_chain(net.layers, trace.values, trace.caches, dE_dout[None], "", split)
    return LambdaSplit(split.parts, dx, len(parametrised_leaves(net)))


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

    Options (spec §13) as in the module docstring; ``every`` with momentum or Adam: the per-λ buffers see only the
    measured steps, an approximation. ``fast=False`` takes the plain split (``lambda_split(..., fast=False)``) and
    the norms of the optimiser's ``linearised_update``; the two agree to rounding.
    """

    name = "effective_depth"

    def __init__(self, eps: float = DEFAULT_EPS, eps_grid: tuple[float, ...] = EPS_GRID,
                 accumulate: str = "sum_of_norms", layer_weight: str = "one", every: int = 1,
                 fast: bool = True) -> None:
        check_choice("accumulate", accumulate, ACCUMULATE)
        check_choice("layer_weight", layer_weight, LAYER_WEIGHTS)
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
                norms = (update_norms(opt, k, parts, self.buffers) if self.fast
                         else _norms(opt.linearised_update(k, parts, self.buffers)))
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
