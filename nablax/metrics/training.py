"""Measurements taken while a network trains (gradients-explode spec §2.6, §2.10), as training callbacks.

    relative update size   rel_i   = ||W_i(t+1) - W_i(t)|| / ||W_i(t)||            per linear layer i, per step
    "bound" (Fig. 2A)      bound_i = c |E| / ( ||W_i(t)||_F ||dE/dW_i||_F )         per step; c = ``bound_scale``
    residual operator norm ||R_i||_2,  R_i = W_i(t) - W_i(0)                         and ||R_i||_2 / ||W_i(0)||_2

The bound's formula is Open in the spec; this one (the relative step at which a first-order gradient step would
drive the error to zero, ~ 1 / (sqrt(m n) GSC(k_i, 0))) is its candidate. The update norm is Open as well:
Frobenius (default) or spectral (``norm="spectral"``). Per-step values are averaged over the steps of each epoch.

A callback has five hooks, all optional: ``start(trainer)`` once before training (or after a resume),
``before_step(trainer, step)`` with the forward pass and gradients at θ(t), ``after_step(trainer, step)`` once the
optimiser has moved the parameters, ``end_epoch(trainer)`` returning ``(scalars, arrays)`` for the epoch's record,
and ``state_dict()`` / ``load_state_dict()`` for checkpoints (arrays and JSON-able values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy

from ..backend import array_module
from ..layers.base import Array, iter_leaves
from ..network import Network, Trace


@dataclass
class Step:
    """One training step as the callbacks see it.

    trace     the forward pass at θ(t) (training mode, with its caches)
    dE_dout   dE/d(output) of the minibatch error E, shape (B, d_out)
    loss      E (the mean softmax cross-entropy of the minibatch)
    grads     dE/dθ by parameter name (``Network.named_params`` names)
    lr        the step size used for this step
    index     the number of steps taken before this one
    """

    trace: Trace
    dE_dout: Array
    loss: float
    grads: dict[str, Array]
    lr: float
    index: int


class TrainingCallback:
    """Base class: every hook does nothing; subclasses override what they need (see the module docstring)."""

    name = ""

    def start(self, trainer: Any) -> None:
        pass

    def before_step(self, trainer: Any, step: Step) -> None:
        pass

    def after_step(self, trainer: Any, step: Step) -> None:
        pass

    def end_epoch(self, trainer: Any) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
        return {}, {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def linear_keys(net: Network) -> list[str]:
    """Names of the weight matrices of the linear layers, in forward order (linear layer i = 1, 2, ...)."""
    return [f"{pre}W" for pre, layer, _, _ in iter_leaves(net.layers) if layer.kind == "dense"]


def matrix_norm(a: Array, norm: str = "fro") -> float:
    """The Frobenius (``norm="fro"``, default) or spectral (``"spectral"``, the largest singular value) norm of a
    matrix a (m, n), as a float."""
    xp = array_module(a)
    if norm == "fro":
        return float(xp.sqrt((a * a).sum()))
    if norm == "spectral":
        return float(xp.linalg.svd(a, compute_uv=False)[0]) if a.size else 0.0
    raise ValueError(f"norm must be 'fro' or 'spectral', got {norm!r}")


def residual_opnorms(net: Network, params0: dict[str, Array], keys: list[str] | None = None) -> tuple[numpy.ndarray, numpy.ndarray]:
    """``(||R_i||_2, ||R_i||_2 / ||W_i(0)||_2)`` per linear layer, with R_i = W_i(now) - W_i(0) (spec §2.10).

    Parameters
    ----------
    net, params0 : Network, dict of arrays
        Holding W(now), and W(0) named as ``Network.named_params``.
    keys : list of str, optional
        The weight matrices (default: ``linear_keys(net)``, every linear layer's).

    Returns
    -------
    (numpy.ndarray (n,), numpy.ndarray (n,))
        One entry per key; the relative norm is 0 where W_i(0) = 0.
    """
    keys = linear_keys(net) if keys is None else keys
    params = net.named_params()
    absolute = numpy.array([matrix_norm(params[k] - params0[k], "spectral") for k in keys])
    initial = numpy.array([matrix_norm(params0[k], "spectral") for k in keys])
    return absolute, absolute / numpy.where(initial > 0, initial, 1.0)


class UpdateSizes(TrainingCallback):
    """Relative update size and the "bound" per linear layer, averaged over the steps of an epoch: the epoch's
    arrays ``relative_update`` and ``bound`` (one value per linear layer, forward order)."""

    name = "update_sizes"

    def __init__(self, norm: str = "fro", bound_scale: float = 1.0) -> None:
        if norm not in ("fro", "spectral"):
            raise ValueError(f"norm must be 'fro' or 'spectral', got {norm!r}")
        self.norm, self.bound_scale = norm, float(bound_scale)
        self.keys: list[str] = []
        self._reset(0)

    def _reset(self, n: int) -> None:
        self.rel_sum, self.bound_sum, self.count = numpy.zeros(n), numpy.zeros(n), 0

    def start(self, trainer: Any) -> None:
        self.keys = linear_keys(trainer.net)
        if self.rel_sum.size != len(self.keys):
            self._reset(len(self.keys))

    def before_step(self, trainer: Any, step: Step) -> None:
        params = trainer.net.named_params()
        self._before = {k: params[k].copy() for k in self.keys}
        self._w_norms = numpy.array([matrix_norm(self._before[k], self.norm) for k in self.keys])
        g_norms = numpy.array([matrix_norm(step.grads[k], "fro") for k in self.keys])
        w_fro = numpy.array([matrix_norm(self._before[k], "fro") for k in self.keys])
        with numpy.errstate(divide="ignore"):
            self.bound_sum += self.bound_scale * abs(step.loss) / (w_fro * g_norms)

    def after_step(self, trainer: Any, step: Step) -> None:
        params = trainer.net.named_params()
        delta = numpy.array([matrix_norm(params[k] - self._before[k], self.norm) for k in self.keys])
        self.rel_sum += delta / self._w_norms
        self.count += 1
        del self._before

    def end_epoch(self, trainer: Any) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
        n = self.count if self.count else float("nan")
        arrays = {"relative_update": self.rel_sum / n, "bound": self.bound_sum / n}
        self._reset(len(self.keys))
        return {}, arrays

    def state_dict(self) -> dict[str, Any]:
        return {"rel_sum": self.rel_sum, "bound_sum": self.bound_sum, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rel_sum, self.bound_sum = numpy.asarray(state["rel_sum"]), numpy.asarray(state["bound_sum"])
        self.count = int(state["count"])


__all__ = ["Step", "TrainingCallback", "linear_keys", "matrix_norm", "residual_opnorms",
           "UpdateSizes"]
