"""Losses: a scalar error E of the network output and its gradient dE/d(output), written by hand.

Each loss has ``values(out, y) -> (B,)`` (each example's own error E_b), ``value(out, y) -> float`` (the batch
error, their MEAN) and ``grad(out, y) -> array like out`` (dE/d(output) of the mean; row b is dE_b/d(out_b) / B).
"""

from __future__ import annotations

from typing import Any

from .backend import array_module


def _check(out: Any, y: Any, classes: bool) -> None:
    if out.ndim != 2:
        raise ValueError(f"loss expects outputs of shape (B, k), got {tuple(out.shape)}")
    if classes:
        if y.ndim != 1 or y.shape[0] != out.shape[0]:
            raise ValueError(f"class labels must have shape ({out.shape[0]},), got {tuple(y.shape)}")
        if y.dtype.kind not in "iu":
            raise TypeError(f"class labels must be integers, got {y.dtype}")
        if int(y.min()) < 0 or int(y.max()) >= out.shape[1]:
            raise ValueError(f"class labels must lie in 0..{out.shape[1] - 1}")
    elif tuple(y.shape) != tuple(out.shape):
        raise ValueError(f"targets of shape {tuple(y.shape)} do not match outputs {tuple(out.shape)}")


def log_softmax(o: Any) -> Any:
    """log softmax(o) over the last axis, stabilised by subtracting the row maximum."""
    xp = array_module(o)
    s = o - o.max(axis=-1, keepdims=True)
    return s - xp.log(xp.exp(s).sum(axis=-1, keepdims=True))


class SoftmaxCrossEntropy:
    """E = -(1/B) sum_b log softmax(o_b)[y_b];   dE/do = (softmax(o) - onehot(y)) / B.   o (B, k), y (B,) integers."""

    name = "softmax_cross_entropy"

    def values(self, out: Any, y: Any) -> Any:
        """E_b = -log softmax(o_b)[y_b], shape (B,)."""
        _check(out, y, classes=True)
        xp = array_module(out)
        return -log_softmax(out)[xp.arange(out.shape[0]), y]

    def value(self, out: Any, y: Any) -> float:
        return float(self.values(out, y).mean())

    def grad(self, out: Any, y: Any) -> Any:
        _check(out, y, classes=True)
        xp = array_module(out)
        g = xp.exp(log_softmax(out))
        g[xp.arange(out.shape[0]), y] -= 1.0
        return g / out.shape[0]


class MeanSquaredError:
    """E = (1/B) sum_b ||o_b - y_b||^2 / 2;   dE/do = (o - y) / B.   o, y (B, k)."""

    name = "mse"

    def values(self, out: Any, y: Any) -> Any:
        """E_b = ||o_b - y_b||^2 / 2, shape (B,)."""
        _check(out, y, classes=False)
        d = (out - y).reshape(out.shape[0], -1)
        return (d * d).sum(axis=1) / 2

    def value(self, out: Any, y: Any) -> float:
        return float(self.values(out, y).mean())

    def grad(self, out: Any, y: Any) -> Any:
        _check(out, y, classes=False)
        return (out - y) / out.shape[0]
