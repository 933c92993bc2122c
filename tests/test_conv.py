"""Convolution, pooling and flatten layers: forward against a direct loop, vjp/jvp/param grads against finite
differences (dot-product tests, with probe axes), Jacobians against stacked vjp/jvp of the identity, and the
orthogonal and looks-linear kernels of the shattered-gradients spec (§6.5, §11 item 10)."""

import numpy as np
import pytest

from gradcheck import check_layer_derivatives, check_param_derivatives, rel_err, stacked_identity_jacobians
from nablax import init as inits
from nablax.layers import AvgPool2d, Conv2d, CReLU, Flatten, GlobalAvgPool, Mode
from nablax.layers.conv import conv_out_size


def direct_conv(x, K, b, stride, padding):
    """Y[n,o,h,w] = sum_{c,i,j} K[o,c,i,j] Xpad[n, c, h s + i, w s + j] + b[o], one output pixel at a time."""
    n, c, h, w = x.shape
    o, _, kh, kw = K.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    for r in range(ho):
        for q in range(wo):
            patch = xpad[:, :, r * stride:r * stride + kh, q * stride:q * stride + kw]
            y[:, :, r, q] = np.einsum("ocij,ncij->no", K, patch)
    return y if b is None else y + b[:, None, None]


CONV_CASES = [  # (c_in, c_out, kh, kw, stride, padding, H, W): odd and even sizes and kernels
    (2, 3, 3, 3, 1, 0, 5, 6),
    (2, 3, 3, 3, 1, 1, 5, 5),
    (2, 3, 3, 3, 2, 0, 7, 6),
    (2, 3, 3, 3, 2, 1, 6, 7),
    (1, 2, 2, 2, 1, 1, 4, 4),
    (3, 2, 2, 3, 2, 1, 5, 4),
    (2, 2, 1, 1, 2, 0, 5, 5),
    (3, 4, 5, 5, 1, 2, 6, 5),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward_and_derivatives(case, bias, rng):
    c_in, c_out, kh, kw, s, p, h, w = case
    K = rng.standard_normal((c_out, c_in, kh, kw))
    b = rng.standard_normal(c_out) if bias else None
    layer = Conv2d(K, b, stride=s, padding=p)
    x = rng.standard_normal((3, c_in, h, w))
    y, cache = layer.forward(x)
    assert y.shape == (3,) + layer.out_shape((c_in, h, w))
    assert y.shape[2:] == (conv_out_size(h, kh, s, p), conv_out_size(w, kw, s, p))
    assert rel_err(y, direct_conv(x, K, b, s, p)) < 1e-13
    check_layer_derivatives(layer, x, Mode(), rng)  # input: FD + adjoint, with (2, 3) leading probe axes
    check_param_derivatives(layer, x, Mode(), rng)  # kernel and bias: FD + adjoint, with a probe axis
    J = layer.jacobian(cache)
    from_vjp, from_jvp = stacked_identity_jacobians(layer, cache, x.shape, y.shape, False)
    assert J.shape == from_vjp.shape == (3, y[0].size, x[0].size)
    assert rel_err(J, from_vjp) < 1e-13 and rel_err(J, from_jvp) < 1e-13


def test_conv_kernel_gradient_matches_direct_formula(rng):
    """dK[o,c,i,j] = sum_{n,h,w} dY[n,o,h,w] Xpad[n, c, h s + i, w s + j], and per-sample gradients sum to it."""
    K = rng.standard_normal((3, 2, 3, 3))
    layer = Conv2d(K, rng.standard_normal(3), stride=2, padding=1)
    x = rng.standard_normal((4, 2, 7, 6))
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dk = np.zeros_like(K)
    for i in range(3):
        for j in range(3):
            patch = xpad[:, :, i:i + 2 * (y.shape[2] - 1) + 1:2, j:j + 2 * (y.shape[3] - 1) + 1:2]
            dk[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, patch)
    g = layer.param_grads(cache, dy)
    assert rel_err(g["K"], dk) < 1e-13
    assert rel_err(g["b"], dy.sum(axis=(0, 2, 3))) < 1e-14
    per = layer.per_sample_kernel_grads(cache, dy)
    assert per.shape == (4,) + K.shape
    assert rel_err(per.sum(axis=0), dk) < 1e-13
    assert rel_err(per[1], layer.param_grads(layer.forward(x[1:2])[1], dy[1:2])["K"]) < 1e-13


def test_conv_chunking_gives_the_same_answers(rng):
    layer = Conv2d(rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), stride=1, padding=1)
    x = rng.standard_normal((5, 3, 6, 6))
    y, cache = layer.forward(x)
    v = rng.standard_normal((2,) + y.shape)
    u = rng.standard_normal((2,) + x.shape)
    ref = (y, layer.vjp(cache, v), layer.jvp(cache, u), layer.param_grads(cache, v)["K"])
    layer.max_elements = 50  # one sample (or less) per chunk
    y2, cache2 = layer.forward(x)
    got = (y2, layer.vjp(cache2, v), layer.jvp(cache2, u), layer.param_grads(cache2, v)["K"])
    for a, b in zip(ref, got):
        assert rel_err(a, b) < 1e-14


def test_conv_rejects_bad_shapes(rng):
    with pytest.raises(ValueError, match="4-D"):
        Conv2d(rng.standard_normal((3, 3, 3)))
    layer = Conv2d(rng.standard_normal((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="input channels"):
        layer.out_shape((2, 5, 5))
    with pytest.raises(ValueError, match="does not fit"):
        layer.out_shape((3, 2, 2))


POOLS = {
    "avgpool2": lambda: AvgPool2d(2),
    "avgpool3s2": lambda: AvgPool2d(3, stride=2),  # overlapping windows
    "globalavgpool": GlobalAvgPool,
    "flatten": Flatten,
}


@pytest.mark.parametrize("kind", sorted(POOLS))
@pytest.mark.parametrize("hw", [(4, 6), (5, 7)])
def test_pool_and_flatten_derivatives(kind, hw, rng):
    layer = POOLS[kind]()
    x = rng.standard_normal((3, 2) + hw)
    y, cache = layer.forward(x)
    assert y.shape == (3,) + layer.out_shape(x.shape[1:])
    check_layer_derivatives(layer, x, Mode(), rng)
    J = layer.jacobian(cache)
    from_vjp, from_jvp = stacked_identity_jacobians(layer, cache, x.shape, y.shape, False)
    assert rel_err(J, from_vjp) < 1e-13 and rel_err(J, from_jvp) < 1e-13


def test_pool_forward_values(rng):
    x = rng.standard_normal((2, 3, 5, 7))
    y, _ = AvgPool2d(2).forward(x)
    assert y.shape == (2, 3, 2, 3)
    assert np.allclose(y[:, :, 1, 2], x[:, :, 2:4, 4:6].mean(axis=(2, 3)), atol=1e-15)
    y, _ = AvgPool2d(3, stride=2).forward(x)
    assert np.allclose(y[:, :, 1, 1], x[:, :, 2:5, 2:5].mean(axis=(2, 3)), atol=1e-15)
    assert np.allclose(GlobalAvgPool().forward(x)[0], x.mean(axis=(2, 3)), atol=1e-15)
    assert np.array_equal(Flatten().forward(x)[0][1], x[1].ravel())


@pytest.mark.parametrize("c_in, c_out", [(4, 4), (3, 5)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_delta_orthogonal_conv_preserves_norms(c_in, c_out, k, rng):
    """Stride 1, 'same' padding, c_out >= c_in: ||K * x|| = ||x|| exactly (spec §6.5 (ii), §11 item 10)."""
    K = inits.delta_orthogonal(c_out, c_in, k, rng)
    layer = Conv2d(K, None, stride=1, padding=k // 2)
    x = rng.standard_normal((3, c_in, 6, 5))
    y, cache = layer.forward(x)
    assert y.shape == (3, c_out, 6, 5)
    assert np.allclose(np.linalg.norm(y.reshape(3, -1), axis=1), np.linalg.norm(x.reshape(3, -1), axis=1), rtol=1e-13)
    J = layer.jacobian(cache)[0]  # an isometry: J^T J = I
    assert np.allclose(J.T @ J, np.eye(J.shape[1]), atol=1e-13)
    # a Gaussian kernel of the same scale does not preserve norms (the check can fail)
    g = Conv2d(rng.standard_normal(K.shape) / np.sqrt(c_in * k * k), None, padding=k // 2).forward(x)[0]
    assert abs(np.linalg.norm(g) / np.linalg.norm(x) - 1) > 1e-3


def test_flat_orthogonal_kernel_is_orthonormal_when_flattened(rng):
    K = inits.flat_orthogonal(4, 3, 3, rng)  # (4, 27): orthonormal rows
    flat = K.reshape(4, -1)
    assert np.allclose(flat @ flat.T, np.eye(4), atol=1e-13)
    K = inits.flat_orthogonal(30, 3, 3, rng)  # (30, 27): orthonormal columns
    flat = K.reshape(30, -1)
    assert np.allclose(flat.T @ flat, np.eye(27), atol=1e-13)


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0), (2, 0)])
def test_looks_linear_kernel_on_crelu_is_the_base_conv(stride, padding, rng):
    """K_LL * CReLU(z) = K * z for ANY kernel K, stride and zero padding (spec §6.5, §11 item 10)."""
    K = rng.standard_normal((3, 4, 3, 3))
    K_ll = inits.looks_linear_kernel(K)
    assert K_ll.shape == (3, 8, 3, 3)
    assert np.array_equal(K_ll[:, 4:], -K)
    z = rng.standard_normal((2, 4, 7, 6))
    crelu_z, _ = CReLU(axis=-3).forward(z)
    lhs = Conv2d(K_ll, None, stride, padding).forward(crelu_z)[0]
    rhs = Conv2d(K, None, stride, padding).forward(z)[0]
    assert rel_err(lhs, rhs) < 1e-14
    # the mixed sign convention [K, -K] * [relu(z), -relu(-z)] = K * |z| is not linear: the check can fail
    mixed = Conv2d(K_ll, None, stride, padding).forward(np.concatenate([np.maximum(z, 0), -np.maximum(-z, 0)], 1))[0]
    assert rel_err(mixed, rhs) > 0.1


def test_unflatten_inverts_flatten(rng):
    from nablax.layers import Unflatten

    layer = Unflatten((2, 3, 4))
    x = rng.standard_normal((3, 24))
    y, cache = layer.forward(x)
    assert y.shape == (3, 2, 3, 4) and layer.out_shape((24,)) == (2, 3, 4)
    assert np.array_equal(Flatten().forward(y)[0], x)
    check_layer_derivatives(layer, x, Mode(), rng)
    from_vjp, from_jvp = stacked_identity_jacobians(layer, cache, x.shape, y.shape, False)
    assert rel_err(layer.jacobian(cache), from_vjp) < 1e-14 and rel_err(layer.jacobian(cache), from_jvp) < 1e-14
    with pytest.raises(ValueError, match="needs 24"):
        layer.out_shape((25,))
