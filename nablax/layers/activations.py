"""Nonlinearities: elementwise ones (identity, ReLU, tanh, SeLU, sigmoid), PReLU and CReLU."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..backend import array_module
from .base import Array, Cache, Layer, Mode, sum_to_param

SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


def relu(z: Array) -> tuple[Array, Array]:
    """(phi(z), phi'(z)) of the rectifier, any shape: d = 1[z > 0] (0 at z = 0) and y = max(z, 0): z where z > 0,
    +0 elsewhere (also at -inf, where z * d would give NaN), and NaN where z is NaN."""
    xp = array_module(z)
    positive = z > 0
    return xp.where(positive | xp.isnan(z), z, xp.zeros((), dtype=z.dtype)), positive.astype(z.dtype)


def _relu(z: Array) -> tuple[Array, Array]:
    """``relu(z)``, in one pass through the Numba kernel where it takes z (the same bits; ``nablax.kernels``)."""
    fast = kernels.relu(z)
    return relu(z) if fast is None else fast


def _diag_jacobian(d: Array) -> Array:
    """Per-sample diagonal Jacobians (B, n, n) from derivatives d of shape (B, n) (or (B, C, H, W), flattened)."""
    xp = array_module(d)
    d = d.reshape(d.shape[0], -1)
    return d[:, :, None] * xp.eye(d.shape[1], dtype=d.dtype)


class _Diagonal(Layer):
    """A layer with a diagonal Jacobian, diag(d): its forward pass keeps d (the data's shape) as ``cache.d``."""

    is_nonlinearity = True

    def vjp(self, cache: Cache, dy: Array) -> Array:
        return dy * cache.d

    jvp = vjp  # a diagonal Jacobian is its own transpose

    def jacobian(self, cache: Cache) -> Array:
        return _diag_jacobian(cache.d)

    def diagonal_derivative(self, cache: Cache) -> Array:
        return cache.d


class Elementwise(_Diagonal):
    """y = phi(z) applied to every entry; shapes are preserved.

    vjp       dz = dy * phi'(z)          (phi'(z) has the data shape; probe axes broadcast)
    jvp       dy = dz * phi'(z)
    jacobian  diag(phi'(z_b))            (B, n, n), n = entries per sample
    """

    def phi(self, z: Array) -> tuple[Array, Array]:
        """(phi(z), phi'(z))."""
        raise NotImplementedError

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        y, d = self.phi(x)
        return y, Cache(z=x, d=d)


class Identity(Elementwise):
    """phi(z) = z, phi'(z) = 1."""

    kind = "identity"
    is_nonlinearity = False

    def phi(self, z: Array) -> tuple[Array, Array]:
        return z, array_module(z).ones_like(z)


class ReLU(Elementwise):
    """phi(z) = max(z, 0), phi'(z) = 1[z > 0] (the derivative at exactly 0 is taken as 0)."""

    kind = "relu"
    phi = staticmethod(_relu)


class Tanh(Elementwise):
    """phi(z) = tanh(z), phi'(z) = 1 - tanh(z)^2."""

    kind = "tanh"

    def phi(self, z: Array) -> tuple[Array, Array]:
        y = array_module(z).tanh(z)
        return y, 1.0 - y * y


class Sigmoid(Elementwise):
    """phi(z) = 1 / (1 + exp(-z)), phi'(z) = phi(z) (1 - phi(z)); computed stably for large |z|."""

    kind = "sigmoid"

    def phi(self, z: Array) -> tuple[Array, Array]:
        xp = array_module(z)
        e = xp.exp(-xp.abs(z))
        y = xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return y, y * (1.0 - y)


class SeLU(Elementwise):
    """phi(z) = lambda z for z > 0, lambda alpha (e^z - 1) for z <= 0;
    phi'(z) = lambda for z > 0, lambda alpha e^z for z <= 0.
    lambda = 1.0507009873554805, alpha = 1.6732632423543772 (Klambauer et al. 2017)."""

    kind = "selu"

    def phi(self, z: Array) -> tuple[Array, Array]:
        xp = array_module(z)
        pos = z > 0
        e = xp.exp(xp.minimum(z, 0.0))
        y = xp.where(pos, SELU_LAMBDA * z, SELU_LAMBDA * SELU_ALPHA * (e - 1.0))
        return y, xp.where(pos, SELU_LAMBDA, SELU_LAMBDA * SELU_ALPHA * e).astype(z.dtype)


class PReLU(_Diagonal):
    """Parametric rectifier with a trainable slope per feature (He et al. 2015).

    forward   y = z for z >= 0,  a z for z < 0            z (B, n), a (n,)  [conv: z (B, C, H, W), a (C, 1, 1)]
    vjp/jvp   multiply by  1[z >= 0] + a 1[z < 0]          (diagonal, so vjp = jvp)
    jacobian  diag(1[z >= 0] + a 1[z < 0])                 (B, n, n)
    grads     da = sum over batch (and space) of dy * z * 1[z < 0]
    param_jvp dy = da * z * 1[z < 0]

    Looks-linear initialisation sets a = 1, so the layer starts as the identity.
    """

    kind = "prelu"

    def __init__(self, a: Array) -> None:
        self.a = a

    @property
    def params(self) -> dict[str, Array]:
        return {"a": self.a}

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        neg = (x < 0).astype(x.dtype)
        d = 1.0 - neg + self.a * neg
        return x * d, Cache(z=x, neg=neg, d=d)

    def param_grads(self, cache: Cache, dy: Array) -> dict[str, Array]:
        return {"a": sum_to_param(dy * cache.z * cache.neg, self.a.shape)}

    def param_jvp(self, cache: Cache, dparams: dict[str, Array]) -> Array:
        return dparams["a"] * cache.z * cache.neg if "a" in dparams else None


class CReLU(Layer):
    """Concatenated rectifier (Shang et al. 2016), with the sign convention of the shattered-gradients spec:

    forward   y = [relu(z), relu(-z)]  concatenated on the feature axis      z (B, n) -> y (B, 2n)
              (``axis=-3`` concatenates channels of (B, C, H, W) data)
    vjp       dz = d+ * 1[z > 0] - d- * 1[z < 0]                               dy = [d+, d-]
    jvp       dy = [dz * 1[z > 0], -dz * 1[z < 0]]
    jacobian  [[diag(1[z > 0])], [-diag(1[z < 0])]]                          (B, 2n, n)

    Key identity: relu(z) - relu(-z) = z, so a following weight [W; -W] (row convention) makes the pair linear.
    """

    kind = "crelu"
    is_nonlinearity = True

    def __init__(self, axis: int = -1) -> None:
        if axis >= 0:
            raise ValueError("CReLU axis counts from the right (-1 for dense features, -3 for channels)")
        self.axis = axis

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        s = list(in_shape)
        s[self.axis] *= 2
        return tuple(s)

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        xp = array_module(x)
        (y_pos, pos), (y_neg, neg) = _relu(x), _relu(-x)  # neg = 1[-x > 0] = 1[x < 0]
        return xp.concatenate([y_pos, y_neg], axis=self.axis), Cache(pos=pos, neg=neg)

    def vjp(self, cache: Cache, dy: Array) -> Array:
        d_pos, d_neg = array_module(dy).split(dy, 2, axis=self.axis)
        return d_pos * cache.pos - d_neg * cache.neg

    def jvp(self, cache: Cache, dx: Array) -> Array:
        return array_module(dx).concatenate([dx * cache.pos, -dx * cache.neg], axis=self.axis)

    def jacobian(self, cache: Cache) -> Array:
        # (C, H, W) flattens channel-major, so the channel halves are contiguous blocks as well
        return array_module(cache.pos).concatenate([_diag_jacobian(cache.pos), -_diag_jacobian(cache.neg)], axis=1)
