"""Convolutional layers: Conv2d (stride, zero padding), AvgPool2d, GlobalAvgPool, Flatten and Unflatten.

Data is ``(B, C, H, W)``; like every layer, vjp and jvp take any number of extra leading probe axes
``(*P, B, C, H, W)``. All these layers are linear in their input (Conv2d is affine), so jvp is the forward map
without the bias and every per-sample Jacobian is the same matrix for every sample. (Batch norm over channels is
``BatchNorm.create(C, conv=True)`` and CReLU on channels is ``CReLU(axis=-3)``.)

The convolution is computed by im2col: for each kernel tap (i, j) one strided slice of the zero-padded input
(channels last) is copied into a column buffer ``cols[n, h, w, i, j, c] = Xpad[n, c, h s + i, w s + j]``, and
then ONE matrix product with the flattened kernel does all the arithmetic. The buffer is made for a chunk of
at most ``max_elements`` entries at a time, so memory stays bounded at large batches.
"""

from __future__ import annotations

from typing import Any

import numpy

from ..backend import array_module
from .base import Array, Cache, Layer, Mode, flat_size

DEFAULT_MAX_ELEMENTS = 1 << 24  # entries of one im2col buffer chunk (128 MiB in float64)


def conv_out_size(n: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis: floor((n + 2 p - k) / s) + 1."""
    out = (n + 2 * padding - k) // stride + 1
    if out < 1:
        raise ValueError(f"kernel {k} with stride {stride} and padding {padding} does not fit an input of size {n}")
    return out


def _tap(i: int, n_out: int, stride: int) -> slice:
    """Input rows i, i + s, ..., i + s (n_out - 1): the ones that kernel row i meets."""
    return slice(i, i + stride * (n_out - 1) + 1, stride)


def _chunks(n: int, per_item: int, max_elements: int):
    step = max(1, max_elements // max(1, per_item))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as in every deep-learning library) with stride s and zero padding p.

    forward   Y[n,o,h,w] = sum_{c,i,j} K[o,c,i,j] Xpad[n, c, h s + i, w s + j] + b[o]
              X (B, C, H, W), K (O, C, kh, kw), b (O,) or None, Y (B, O, Ho, Wo), Ho = (H + 2p - kh) // s + 1
              (Xpad is X with p zeros on each side of both spatial axes)
    jvp       dY = the same convolution of dX, without the bias                       probe axes pass through
    vjp       dX = the transposed convolution: dXpad[n, c, h s + i, w s + j] += sum_o K[o,c,i,j] dY[n,o,h,w],
              then the padding is cropped (zero-stuffing for s > 1 is implicit in the strided scatter)
    jacobian  J[(o,h,w), (c, h s + i - p, w s + j - p)] = K[o,c,i,j] (taps that land in the padding drop out);
              the same (O Ho Wo, C H W) matrix for every sample, returned as (B, O Ho Wo, C H W)
    grads     dK[o,c,i,j] = sum_{n,h,w} dY[n,o,h,w] Xpad[n, c, h s + i, w s + j],   db[o] = sum_{n,h,w} dY[n,o,h,w]
              (leading probe axes of dY are kept)
    param_jvp dY = conv(X, dK) + db
    """

    kind = "conv2d"
    n_linear = 1

    def __init__(self, K: Array, b: Array | None = None, stride: int = 1, padding: int = 0) -> None:
        if K.ndim != 4:
            raise ValueError(f"Conv2d kernel must be 4-D (c_out, c_in, kh, kw), got shape {K.shape}")
        if b is not None and b.shape != (K.shape[0],):
            raise ValueError(f"Conv2d bias must have shape ({K.shape[0]},), got {b.shape}")
        if int(stride) < 1 or int(padding) < 0:
            raise ValueError(f"Conv2d needs stride >= 1 and padding >= 0, got stride={stride}, padding={padding}")
        self.K, self.b = K, b
        self.stride, self.padding = int(stride), int(padding)
        self.max_elements = DEFAULT_MAX_ELEMENTS

    @property
    def params(self) -> dict[str, Array]:
        return {"K": self.K} if self.b is None else {"K": self.K, "b": self.b}

    def config(self) -> dict[str, Any]:
        return {"stride": self.stride, "padding": self.padding}

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = in_shape
        o, c_k, kh, kw = self.K.shape
        if c != c_k:
            raise ValueError(f"Conv2d kernel takes {c_k} input channels, the input has {c}")
        return (o, conv_out_size(h, kh, self.stride, self.padding), conv_out_size(w, kw, self.stride, self.padding))

    # -- the three primitives, on (N, C, H, W) arrays -------------------------------------------------
    def _cols(self, x: Array, ho: int, wo: int) -> Array:
        """im2col of x (N, C, H, W): (N Ho Wo, kh kw C), row (n, h, w), column (i, j, c)."""
        xp = array_module(x)
        n, c, h, w = x.shape
        _, _, kh, kw = self.K.shape
        p, s = self.padding, self.stride
        xpad = xp.zeros((n, h + 2 * p, w + 2 * p, c), dtype=x.dtype)
        xpad[:, p:p + h, p:p + w, :] = x.transpose(0, 2, 3, 1)
        cols = xp.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
        for i, j in numpy.ndindex(kh, kw):
            cols[:, :, :, i, j, :] = xpad[:, _tap(i, ho, s), _tap(j, wo, s), :]
        return cols.reshape(n * ho * wo, kh * kw * c)

    def _flat_kernel(self, K: Array) -> Array:
        """K (O, C, kh, kw) as the (O, kh kw C) matrix that multiplies im2col rows."""
        return K.transpose(0, 2, 3, 1).reshape(K.shape[0], -1)

    def _conv(self, x: Array, K: Array) -> Array:
        """conv(x, K) without bias for x (N, C, H, W) -> (N, O, Ho, Wo), in chunks of the N axis."""
        xp = array_module(x)
        n, o = x.shape[0], K.shape[0]
        _, ho, wo = self.out_shape(x.shape[1:])
        k2 = self._flat_kernel(K)
        y = xp.empty((n, ho, wo, o), dtype=x.dtype)  # channels last in memory; returned as an (N, O, Ho, Wo) view
        for rows in _chunks(n, ho * wo * k2.shape[1], self.max_elements):
            cols = self._cols(x[rows], ho, wo)
            y[rows] = (cols @ k2.T).reshape(-1, ho, wo, o)
        return y.transpose(0, 3, 1, 2)

    def _conv_transpose(self, dy: Array, in_hw: tuple[int, int]) -> Array:
        """The adjoint of ``_conv(., K)``: dy (N, O, Ho, Wo) -> dx (N, C, H, W)."""
        xp = array_module(dy)
        n, o, ho, wo = dy.shape
        _, c, kh, kw = self.K.shape
        h, w = in_hw
        p, s = self.padding, self.stride
        k2 = self._flat_kernel(self.K)
        dxpad = xp.zeros((n, h + 2 * p, w + 2 * p, c), dtype=dy.dtype)
        for rows in _chunks(n, ho * wo * k2.shape[1], self.max_elements):
            m = rows.stop - rows.start
            dcols = (dy[rows].transpose(0, 2, 3, 1).reshape(m * ho * wo, o) @ k2).reshape(m, ho, wo, kh, kw, c)
            for i, j in numpy.ndindex(kh, kw):
                dxpad[rows, _tap(i, ho, s), _tap(j, wo, s), :] += dcols[:, :, :, i, j, :]
        return dxpad[:, p:p + h, p:p + w, :].transpose(0, 3, 1, 2)

    def _kernel_grad(self, x: Array, dy: Array, per_sample: bool = False) -> Array:
        """sum_{n,h,w} dY[p, n, o, h, w] cols[(n, h, w), (i, j, c)] for x (B, C, H, W) and dy (P, B, O, Ho, Wo):
        (P, O, C, kh, kw); with ``per_sample`` the sum over n is not taken: (P, B, O, C, kh, kw)."""
        xp = array_module(dy)
        n_probe, b, o, ho, wo = dy.shape
        _, c, kh, kw = self.K.shape
        d = kh * kw * c
        g = xp.zeros((n_probe, b, o, d) if per_sample else (n_probe, o, d), dtype=dy.dtype)
        for rows in _chunks(b, ho * wo * d, self.max_elements):
            m = rows.stop - rows.start
            cols = self._cols(x[rows], ho, wo)  # (m Ho Wo, d)
            if per_sample:
                g[:, rows] = dy[:, rows].reshape(n_probe, m, o, ho * wo) @ cols.reshape(m, ho * wo, d)
            else:
                dy_rows = dy[:, rows].transpose(0, 2, 1, 3, 4).reshape(n_probe * o, m * ho * wo)
                g += (dy_rows @ cols).reshape(n_probe, o, d)  # one 2-D GEMM for every probe
        g = g.reshape(g.shape[:-1] + (kh, kw, c))
        return xp.moveaxis(g, -1, -3)

    # -- the Layer protocol ---------------------------------------------------------------------------
    def _apply(self, t: Array, fn) -> Array:
        """fn on (N, C, H, W) after folding every leading axis of t (*lead, C, H, W) into N, and unfolded back."""
        lead = t.shape[:-3]
        out = fn(t.reshape((-1,) + t.shape[-3:]))
        return out.reshape(lead + out.shape[1:])

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        if x.ndim != 4:
            raise ValueError(f"Conv2d takes (B, C, H, W) data, got shape {x.shape}")
        y = self._conv(x, self.K)
        if self.b is not None:
            y = y + self.b[:, None, None]
        return y, Cache(x=x)

    def jvp(self, cache: Cache, dx: Array) -> Array:
        return self._apply(dx, lambda t: self._conv(t, self.K))

    def vjp(self, cache: Cache, dy: Array) -> Array:
        return self._apply(dy, lambda t: self._conv_transpose(t, cache.x.shape[-2:]))

    def jacobian(self, cache: Cache) -> Array:
        xp = array_module(self.K)
        b, c, h, w = cache.x.shape
        o, _, kh, kw = self.K.shape
        _, ho, wo = self.out_shape((c, h, w))
        # index grids over (o, h, w, c, i, j): row (o, h, w), column (c, h s + i - p, w s + j - p)
        O, Hh, Ww, C, I, J = xp.meshgrid(*(xp.arange(n) for n in (o, ho, wo, c, kh, kw)), indexing="ij")
        r, q = Hh * self.stride + I - self.padding, Ww * self.stride + J - self.padding
        inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        rows = ((O * ho + Hh) * wo + Ww)[inside]
        cols = ((C * h + r) * w + q)[inside]
        jac = xp.zeros((o * ho * wo, c * h * w), dtype=self.K.dtype)
        jac[rows, cols] = xp.broadcast_to(self.K[:, None, None], O.shape)[inside]  # each (row, col) appears once
        return xp.broadcast_to(jac, (b,) + jac.shape)

    def param_grads(self, cache: Cache, dy: Array) -> dict[str, Array]:
        lead = dy.shape[:-4]
        dk = self._kernel_grad(cache.x, dy.reshape((-1,) + dy.shape[-4:]))
        g = {"K": dk.reshape(lead + self.K.shape)}
        if self.b is not None:
            g["b"] = dy.sum(axis=(-4, -2, -1))
        return g

    def param_jvp(self, cache: Cache, dparams: dict[str, Array]) -> Array:
        xp = array_module(cache.x)
        if "K" in dparams:
            out = self._conv(cache.x, dparams["K"])
        else:
            out = xp.zeros((cache.x.shape[0],) + self.out_shape(cache.x.shape[1:]), dtype=cache.x.dtype)
        if self.b is not None and "b" in dparams:
            out = out + dparams["b"][:, None, None]
        return out

    def per_sample_kernel_grads(self, cache: Cache, dy: Array) -> Array:
        """dK for each sample separately: (B, O, C, kh, kw) from dy (B, O, Ho, Wo) (no probe axes).

        dK_n[o,c,i,j] = sum_{h,w} dY[n,o,h,w] Xpad[n, c, h s + i, w s + j]; summing over n gives ``param_grads``.
        """
        return self._kernel_grad(cache.x, dy[None], per_sample=True)[0]

    def __repr__(self) -> str:
        o, c, kh, kw = self.K.shape
        bias = "" if self.b is not None else ", no bias"
        return f"Conv2d({c} -> {o}, {kh}x{kw}, stride {self.stride}, padding {self.padding}{bias})"


class _LinearMap(Layer):
    """A layer without parameters that is linear in its input: forward and jvp are both ``_map`` (leading axes pass
    through), and every sample's Jacobian is the matrix ``_matrix(in_shape)``, built on the host."""

    in_ndim: int | None = 4  # forward's input must have this many axes (None: any)

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        if self.in_ndim is not None and x.ndim != self.in_ndim:
            raise ValueError(f"{type(self).__name__} takes (B, C, H, W) data, got shape {x.shape}")
        return self._map(x), Cache(x=x)

    def jvp(self, cache: Cache, dx: Array) -> Array:
        return self._map(dx)

    def jacobian(self, cache: Cache) -> Array:
        """``_matrix`` as (B, m, n) on the backend and in the dtype of the cached input."""
        xp, x = array_module(cache.x), cache.x
        jac = self._matrix(tuple(x.shape[1:]))
        return xp.broadcast_to(xp.asarray(jac, dtype=x.dtype), (x.shape[0],) + jac.shape)


class AvgPool2d(_LinearMap):
    """Average pooling over size x size windows with stride s (default s = size), no padding.

    forward   Y[..., c, h, w] = (1 / k^2) sum_{i,j < k} X[..., c, h s + i, w s + j]      Ho = (H - k) // s + 1
    jvp       the same map (linear)                                                  leading axes pass through
    vjp       dX[..., c, h s + i, w s + j] += dY[..., c, h, w] / k^2
    jacobian  J[(c,h,w), (c, h s + i, w s + j)] = 1 / k^2 (summed where windows overlap), (B, C Ho Wo, C H W)
    """

    kind = "avgpool2d"

    def __init__(self, size: int = 2, stride: int | None = None) -> None:
        self.size = int(size)
        self.stride = self.size if stride is None else int(stride)
        if self.size < 1 or self.stride < 1:
            raise ValueError(f"AvgPool2d needs size >= 1 and stride >= 1, got {size}, {stride}")

    def config(self) -> dict[str, Any]:
        return {"size": self.size, "stride": self.stride}

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = in_shape
        return (c, conv_out_size(h, self.size, self.stride, 0), conv_out_size(w, self.size, self.stride, 0))

    def _map(self, x: Array) -> Array:
        _, ho, wo = self.out_shape(x.shape[-3:])
        k, s = self.size, self.stride
        y = 0.0
        for i, j in numpy.ndindex(k, k):
            y = y + x[..., _tap(i, ho, s), _tap(j, wo, s)]
        return y / (k * k)

    def vjp(self, cache: Cache, dy: Array) -> Array:
        xp = array_module(dy)
        k, s = self.size, self.stride
        ho, wo = dy.shape[-2:]
        dx = xp.zeros(dy.shape[:-3] + cache.x.shape[1:], dtype=dy.dtype)
        g = dy / (k * k)
        for i, j in numpy.ndindex(k, k):
            dx[..., _tap(i, ho, s), _tap(j, wo, s)] += g
        return dx

    def _matrix(self, in_shape: tuple[int, ...]) -> Array:
        c, h, w = in_shape
        _, ho, wo = self.out_shape(in_shape)
        k, s = self.size, self.stride
        C, Hh, Ww, I, J = numpy.meshgrid(*(numpy.arange(n) for n in (c, ho, wo, k, k)), indexing="ij")
        jac = numpy.zeros((c * ho * wo, c * h * w))
        numpy.add.at(jac, (((C * ho + Hh) * wo + Ww).ravel(), ((C * h + Hh * s + I) * w + Ww * s + J).ravel()),
                     1.0 / (k * k))
        return jac


class GlobalAvgPool(_LinearMap):
    """Global average pooling: the mean of each channel over space.

    forward   y[..., c] = (1 / (H W)) sum_{h,w} X[..., c, h, w]             (B, C, H, W) -> (B, C)
    jvp       the same map (linear)
    vjp       dX[..., c, h, w] = dy[..., c] / (H W)                          (broadcast over space)
    jacobian  J[c, (c, h, w)] = 1 / (H W), (B, C, C H W)
    """

    kind = "globalavgpool"

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (in_shape[0],)

    def _map(self, x: Array) -> Array:
        return x.mean(axis=(-2, -1))

    def vjp(self, cache: Cache, dy: Array) -> Array:
        h, w = cache.x.shape[-2:]
        return array_module(dy).broadcast_to((dy / (h * w))[..., None, None], dy.shape + (h, w)).copy()

    def _matrix(self, in_shape: tuple[int, ...]) -> Array:
        c, h, w = in_shape
        return numpy.kron(numpy.eye(c), numpy.full((1, h * w), 1.0 / (h * w)))


class Flatten(_LinearMap):
    """(B, C, H, W) -> (B, C H W) in channel-major order (the order every per-sample Jacobian uses).

    vjp / jvp reshape (leading axes pass through); jacobian the identity (B, C H W, C H W).
    """

    kind = "flatten"

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (flat_size(in_shape),)

    def _map(self, x: Array) -> Array:
        return x.reshape(x.shape[:-3] + (-1,))

    def vjp(self, cache: Cache, dy: Array) -> Array:
        return dy.reshape(dy.shape[:-1] + cache.x.shape[1:])

    def _matrix(self, in_shape: tuple[int, ...]) -> Array:
        return numpy.eye(flat_size(in_shape))


class Unflatten(_LinearMap):
    """(B, D) -> (B, *shape), D = prod(shape): lets a convnet take flattened data (the inverse of Flatten).

    vjp / jvp reshape (leading axes pass through); jacobian the identity (B, D, D).
    """

    kind = "unflatten"
    in_ndim = None

    def __init__(self, shape: tuple[int, ...] | list[int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    def config(self) -> dict[str, Any]:
        return {"shape": list(self.shape)}

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if (flat_size(self.shape),) != tuple(in_shape):
            raise ValueError(f"Unflatten to {self.shape} needs {flat_size(self.shape)} features, got {in_shape}")
        return self.shape

    def _map(self, x: Array) -> Array:
        return x.reshape(x.shape[:-1] + self.shape)

    def vjp(self, cache: Cache, dy: Array) -> Array:
        return dy.reshape(dy.shape[:-len(self.shape)] + (-1,))

    def _matrix(self, in_shape: tuple[int, ...]) -> Array:
        return numpy.eye(in_shape[0])
