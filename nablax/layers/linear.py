"""The dense (fully connected) layer."""

from __future__ import annotations

from typing import Any

from ..backend import array_module
from ..kernels.blas import matmul
from .base import Array, Cache, Layer, Mode


def _rows_times(s: Array, M: Array) -> Array:
    """``s @ M`` for a signal s (..., B, m) and M (m, n), as ONE matrix product over all probe and batch rows (a
    stacked 3-D matmul is several times slower). The result keeps the memory order of s: C-ordered, or
    feature-major (the rows axis contiguous, see ``fastpath.Sweep``), which OpenBLAS multiplies faster."""
    xp = array_module(s)
    rows = s.reshape(-1, M.shape[0])  # a view in either order
    order = "F" if rows.flags.f_contiguous and not rows.flags.c_contiguous else "C"
    out = matmul(rows, M, out=xp.empty((rows.shape[0], M.shape[1]), dtype=xp.result_type(s, M), order=order))
    return out.reshape(s.shape[:-1] + (M.shape[1],))


class Dense(Layer):
    """Affine map in row-vector convention.

    forward   y = x W + b                      x (B, d_in), W (d_in, d_out), b (d_out,), y (B, d_out)
    vjp       dx = dy W^T                      dy (..., B, d_out) -> (..., B, d_in)
    jvp       dy = dx W                        dx (..., B, d_in)  -> (..., B, d_out)
    jacobian  J_b = W^T for every sample       (B, d_out, d_in)
    grads     dW = x^T dy,  db = 1^T dy        summed over the batch; leading probe axes are kept
    param_jvp dy = x dW + db
    λ-split   around W = W(0) + R (``lambda_split_step``), G (n, B, d_out) -> G' (n + 1, B, d_in):
              Γ_W[λ] = x^T G[λ]  (n, d_in, d_out);  γ_b[λ] = 1^T G[λ]  (n, d_out), a bias adds no factor;
              G'[λ] = G[λ] W(0)^T + G[λ-1] R^T  (R moves λ -> λ+1)

    The Jacobian as a map is W^T, so its quadratic-mean norm is ||W||_F / sqrt(d_in) (spec §2.1).
    ``bias=False`` drops b.
    """

    kind = "dense"
    n_linear = 1

    def __init__(self, W: Array, b: Array | None = None) -> None:
        if W.ndim != 2:
            raise ValueError(f"Dense weight must be 2-D (d_in, d_out), got shape {W.shape}")
        if b is not None and b.shape != (W.shape[1],):
            raise ValueError(f"Dense bias must have shape ({W.shape[1]},), got {b.shape}")
        self.W, self.b = W, b

    @property
    def d_in(self) -> int:
        return self.W.shape[0]

    @property
    def d_out(self) -> int:
        return self.W.shape[1]

    @property
    def params(self) -> dict[str, Array]:
        return {"W": self.W} if self.b is None else {"W": self.W, "b": self.b}

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.d_out,)

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        y = matmul(x, self.W)
        if self.b is not None:
            y += self.b  # y is a fresh product: add in place
        return y, Cache(x=x)

    def vjp(self, cache: Cache, dy: Array) -> Array:
        return _rows_times(dy, self.W.T)

    def jvp(self, cache: Cache, dx: Array) -> Array:
        return _rows_times(dx, self.W)

    def jacobian(self, cache: Cache) -> Array:
        xp = array_module(self.W)
        return xp.broadcast_to(self.W.T, (cache.x.shape[0], self.d_out, self.d_in))

    def param_grads(self, cache: Cache, dy: Array) -> dict[str, Array]:
        x = cache.x
        g = {"W": matmul(x.T, dy) if dy.ndim == 2 else array_module(dy).einsum("bi,...bj->...ij", x, dy)}
        if self.b is not None:  # 1^T dy: a vector-matrix product for a plain batch (2-3 us faster than dy.sum)
            g["b"] = array_module(dy).ones(dy.shape[0], dtype=dy.dtype) @ dy if dy.ndim == 2 else dy.sum(axis=-2)
        return g

    def param_jvp(self, cache: Cache, dparams: dict[str, Array]) -> Array:
        xp = array_module(cache.x)
        out = cache.x @ dparams["W"] if "W" in dparams else xp.zeros((cache.x.shape[0], self.d_out), cache.x.dtype)
        if self.b is not None and "b" in dparams:
            out = out + dparams["b"]
        return out

    def lambda_split_step(self, cache: Cache, x: Array, G: Array, prefix: str, split: Any) -> Array | None:
        if split.wants(prefix + "W"):
            split.parts[prefix + "W"] = cache.x.T @ G  # (d_in, B) @ (n, B, d_out) -> (n, d_in, d_out)
        if self.b is not None and split.wants(prefix + "b"):
            split.parts[prefix + "b"] = G.sum(axis=-2)
        if self is split.bottom:  # no one asked for the input cotangent
            return None
        W0 = split.params0[prefix + "W"]
        return split.shifted_products(G, W0.T, (self.W - W0).T)

    def __repr__(self) -> str:
        return f"Dense({self.d_in} -> {self.d_out}{'' if self.b is not None else ', no bias'})"
