"""Batch normalisation and layer normalisation.

Both standardise z over a set of axes and share the same derivative formula. With
``y = (z - mean(z)) / sigma``, ``sigma = sqrt(var(z) + eps)`` (biased variance), means over n entries:

    vjp       dz = ( g - mean(g) - y * mean(g * y) ) / sigma            g = gamma * dy'   (affine)
    jvp       dy' = gamma * ( dz - mean(dz) - y * mean(dz * y) ) / sigma
    Jacobian  gamma (I - 1 1^T / n - y y^T / n) / sigma                  (per normalised group; symmetric)

and, with an affine part ``y' = gamma * y + beta``: ``dgamma = sum(dy' * y)``, ``dbeta = sum(dy')``.
"""

from __future__ import annotations

from typing import Any

import numpy

from .. import kernels
from ..backend import array_module
from .activations import _diag_jacobian
from .base import Array, Cache, Layer, Mode, sum_to_param


def standardize(z: Array, axes: tuple[int, ...], eps: float) -> tuple[Array, Array, Array, Array]:
    """(y, mean, biased variance, sigma) of z standardised over ``axes``."""
    mu = z.mean(axis=axes, keepdims=True)
    zc = z - mu
    var = (zc * zc).mean(axis=axes, keepdims=True)
    sigma = array_module(z).sqrt(var + eps)
    return zc / sigma, mu, var, sigma


def standardize_vjp(g: Array, y: Array, sigma: Array, axes: tuple[int, ...]) -> Array:
    """(g - mean(g) - y mean(g y)) / sigma over ``axes`` (negative axes, so leading probe axes pass through)."""
    return (g - g.mean(axis=axes, keepdims=True) - y * (g * y).mean(axis=axes, keepdims=True)) / sigma


class _Normalization(Layer):
    """Shared parts: the optional affine map and its gradients."""

    gamma: Array | None
    beta: Array | None

    @property
    def params(self) -> dict[str, Array]:
        return {} if self.gamma is None else {"gamma": self.gamma, "beta": self.beta}

    def _affine(self, y: Array) -> Array:
        return y if self.gamma is None else self.gamma * y + self.beta

    def _scale(self, g: Array) -> Array:
        return g if self.gamma is None else self.gamma * g

    def param_grads(self, cache: Cache, dy: Array) -> dict[str, Array]:
        if self.gamma is None:
            return {}
        return {"gamma": sum_to_param(dy * cache.y, self.gamma.shape), "beta": sum_to_param(dy, self.beta.shape)}

    def param_jvp(self, cache: Cache, dparams: dict[str, Array]) -> Array:
        if self.gamma is None:
            return None
        out = dparams["gamma"] * cache.y if "gamma" in dparams else array_module(cache.y).zeros_like(cache.y)
        return out + dparams["beta"] if "beta" in dparams else out


class BatchNorm(_Normalization):
    """Batch normalisation, per feature over the batch (per channel over batch and space for conv data).

    Data   z (B, d) with parameters of shape (d,), or z (B, C, H, W) with parameters of shape (C, 1, 1).
    Modes  train:                 batch statistics; samples are coupled and ``jacobian`` is batch-level
                                  (B, d, B, d): J[b,f,b',f'] = delta_ff' gamma_f (delta_bb' - 1/B - y_bf y_b'f / B) / sigma_f
           train + hold_stats:    batch statistics treated as constants: dz = gamma * dy / sigma, per sample
           eval:                  running statistics: a fixed per-feature affine map, per sample
    Batch statistics need at least two values per feature: ``forward`` with batch statistics (train, not
    hold_stats) refuses a batch of one (dense data; conv data: one 1x1 sample), whose output and Jacobian would be
    all zeros. ``running_var`` must be >= 0.
    ``update_stats`` moves the running statistics toward the batch ones with ``momentum`` (unbiased variance,
    as PyTorch does). ``eps`` defaults to 1e-5 (an open choice of both specs).
    """

    kind = "batchnorm"
    couples_batch = True

    def __init__(self, running_mean: Array, running_var: Array, gamma: Array | None = None, beta: Array | None = None,
                 eps: float = 1e-5, momentum: float = 0.1) -> None:
        if (gamma is None) != (beta is None):
            raise ValueError("BatchNorm needs both gamma and beta, or neither")
        if bool((running_var < 0).any()):
            raise ValueError(f"BatchNorm running_var is a variance, so >= 0; its smallest entry is "
                             f"{float(running_var.min())}")
        self.running_mean, self.running_var = running_mean, running_var
        self.gamma, self.beta = gamma, beta
        self.eps, self.momentum = float(eps), float(momentum)

    @classmethod
    def create(cls, dim: int, *, conv: bool = False, affine: bool = False, eps: float = 1e-5,
               momentum: float = 0.1, xp: Any = None, dtype: Any = "float64") -> "BatchNorm":
        xp = xp or numpy
        shape = (dim, 1, 1) if conv else (dim,)
        ones = xp.ones(shape, dtype=dtype)
        return cls(xp.zeros(shape, dtype=dtype), ones.copy(),
                   ones.copy() if affine else None, xp.zeros(shape, dtype=dtype) if affine else None, eps, momentum)

    @property
    def state(self) -> dict[str, Array]:
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def config(self) -> dict[str, Any]:
        return {"eps": self.eps, "momentum": self.momentum}

    def _axes(self, ndim: int) -> tuple[int, ...]:
        if ndim == 2:
            return (-2,)
        if ndim == 4:
            return (-4, -2, -1)
        raise ValueError(f"BatchNorm takes (B, d) or (B, C, H, W) data, got {ndim}-D input")

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        axes = self._axes(x.ndim)
        if mode.train:
            if x.size == self.running_mean.size and not mode.hold_stats:
                raise ValueError("batch norm with batch statistics on a batch of one: a batch of one has no batch "
                                 "statistics (every output would be 0); use a batch of at least 2, or train=False "
                                 "for the running statistics")
            fast = kernels.batch_standardize(x, self.eps) if axes == (-2,) else None  # dense data: one fused kernel
            y, mu, var, sigma = standardize(x, axes, self.eps) if fast is None else fast
            if mode.update_stats:
                n = x.size // self.running_mean.size
                m = self.momentum
                self.running_mean[...] = (1 - m) * self.running_mean + m * mu.reshape(self.running_mean.shape)
                self.running_var[...] = (1 - m) * self.running_var + m * var.reshape(self.running_var.shape) * (n / max(n - 1, 1))
            coupled = not mode.hold_stats
        else:
            sigma = array_module(x).sqrt(self.running_var + self.eps)
            y = (x - self.running_mean) / sigma
            coupled = False
        return self._affine(y), Cache(y=y, sigma=sigma, axes=axes, coupled=coupled)

    def vjp(self, cache: Cache, dy: Array) -> Array:
        g = self._scale(dy)
        return self._coupled_vjp(g, cache) if cache.coupled else g / cache.sigma

    def jvp(self, cache: Cache, dx: Array) -> Array:
        return self._scale(self._coupled_vjp(dx, cache) if cache.coupled else dx / cache.sigma)

    @staticmethod
    def _coupled_vjp(g: Array, cache: Cache) -> Array:
        """standardize_vjp over the batch statistics; dense data goes through the fused kernel where Numba takes
        it (two passes over g instead of about eight; ``nablax.kernels``)."""
        if cache.axes == (-2,):
            b, d = cache.y.shape
            fast = kernels.batch_standardize_vjp(g.reshape(-1, b, d), cache.y, cache.sigma)
            if fast is not None:
                return fast.reshape(g.shape)
        return standardize_vjp(g, cache.y, cache.sigma, cache.axes)

    def jacobian(self, cache: Cache) -> Array:
        xp = array_module(cache.y)
        y = cache.y
        gain = cache.sigma if self.gamma is None else cache.sigma / self.gamma  # J scales by 1 / gain
        if not cache.coupled:
            return _diag_jacobian(xp.broadcast_to(1.0 / gain, y.shape))
        y4 = y if y.ndim == 4 else y[:, :, None, None]  # dense data as (B, d, 1, 1)
        b, c, h, w = y4.shape
        n = b * h * w
        yc = y4.transpose(1, 0, 2, 3).reshape(c, n)
        k = (xp.eye(n, dtype=y.dtype) - 1.0 / n - yc[:, :, None] * yc[:, None, :] / n) / gain.reshape(c, 1, 1)
        k = k.reshape(c, b, h, w, b, h, w)
        j = xp.einsum("cbhwBHW,cC->bchwBCHW", k, xp.eye(c, dtype=y.dtype))
        return j.reshape(b, c * h * w, b, c * h * w)


class LayerNorm(_Normalization):
    """Layer normalisation: each sample standardised over its own features; never couples samples.

    Data      z (B, d); optional affine gamma, beta of shape (d,)
    jacobian  diag(gamma) (I - 1 1^T / d - y_b y_b^T / d) / sigma_b           per sample, (B, d, d)
    """

    kind = "layernorm"

    def __init__(self, gamma: Array | None = None, beta: Array | None = None, eps: float = 1e-5) -> None:
        if (gamma is None) != (beta is None):
            raise ValueError("LayerNorm needs both gamma and beta, or neither")
        self.gamma, self.beta, self.eps = gamma, beta, float(eps)

    def config(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        if x.ndim != 2:
            raise ValueError(f"LayerNorm takes (B, d) data, got shape {x.shape}")
        y, _, _, sigma = standardize(x, (-1,), self.eps)
        return self._affine(y), Cache(y=y, sigma=sigma)

    def vjp(self, cache: Cache, dy: Array) -> Array:
        return standardize_vjp(self._scale(dy), cache.y, cache.sigma, (-1,))

    def jvp(self, cache: Cache, dx: Array) -> Array:
        return self._scale(standardize_vjp(dx, cache.y, cache.sigma, (-1,)))

    def jacobian(self, cache: Cache) -> Array:
        xp = array_module(cache.y)
        y, sigma = cache.y, cache.sigma  # (B, d), (B, 1)
        d = y.shape[1]
        j = (xp.eye(d, dtype=y.dtype) - 1.0 / d - y[:, :, None] * y[:, None, :] / d) / sigma[:, :, None]
        return j if self.gamma is None else self.gamma[:, None] * j
