"""Every layer's vjp, jvp, jacobian and parameter gradients, checked in float64 (see gradcheck.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import (
    ADJOINT_RTOL,
    check_layer_derivatives,
    check_param_derivatives,
    rel_err,
    stacked_identity_jacobians,
)
import nablax
from nablax.kernels import use_cpu_kernels
from nablax.layers import (
    BatchNorm,
    CReLU,
    Dense,
    Identity,
    LayerNorm,
    Mode,
    PReLU,
    ReLU,
    Residual,
    SeLU,
    Sigmoid,
    Tanh,
)

TRAIN, HOLD, EVAL = Mode(train=True), Mode(train=True, hold_stats=True), Mode(train=False)


def make_layer(kind, d, rng):
    """A layer of ``kind`` taking (B, d) input with random (non-trivial) parameters and state."""
    if kind == "dense":
        return Dense(rng.standard_normal((d, d + 2)), rng.standard_normal(d + 2))
    if kind == "dense-nobias":
        return Dense(rng.standard_normal((d, 3)))
    if kind in ("identity", "relu", "tanh", "selu", "sigmoid"):
        return {"identity": Identity, "relu": ReLU, "tanh": Tanh, "selu": SeLU, "sigmoid": Sigmoid}[kind]()
    if kind == "crelu":
        return CReLU()
    if kind == "prelu":
        return PReLU(rng.uniform(0.1, 2.0, d))
    if kind in ("batchnorm", "batchnorm-affine"):
        affine = kind.endswith("affine")
        return BatchNorm(rng.standard_normal(d) * 0.3, rng.uniform(0.5, 2.0, d),
                         rng.uniform(0.5, 1.5, d) if affine else None, rng.standard_normal(d) if affine else None)
    if kind in ("layernorm", "layernorm-affine"):
        affine = kind.endswith("affine")
        return LayerNorm(rng.uniform(0.5, 1.5, d) if affine else None, rng.standard_normal(d) if affine else None)
    if kind == "residual":
        return Residual([LayerNorm(), Tanh(), Dense(rng.standard_normal((d, d)) / np.sqrt(d), rng.standard_normal(d))],
                        beta=0.7)
    if kind == "residual-bn":
        return Residual([make_layer("batchnorm-affine", d, rng), ReLU(), Dense(rng.standard_normal((d, d)) / np.sqrt(d))])
    if kind == "residual-proj":
        return Residual([Tanh(), Dense(rng.standard_normal((d, d + 1)))], skip=Dense(rng.standard_normal((d, d + 1))),
                        beta=0.3)
    raise ValueError(kind)


KINDS = ["dense", "dense-nobias", "identity", "relu", "tanh", "selu", "sigmoid", "crelu", "prelu", "batchnorm",
         "batchnorm-affine", "layernorm", "layernorm-affine", "residual", "residual-bn", "residual-proj"]
MODES = {"train": TRAIN, "hold": HOLD, "eval": EVAL}


def frozen_stats_forward(layer, x):
    """The function a hold_stats BatchNorm linearises: batch statistics of ``x`` frozen as constants."""
    mu, var = x.mean(axis=0), x.var(axis=0)
    frozen = BatchNorm(mu, var, layer.gamma, layer.beta, eps=layer.eps)
    return lambda z: frozen.forward(z, EVAL)[0]


@pytest.mark.parametrize("mode_name", sorted(MODES))
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=6, deadline=None)
@given(b=st.integers(2, 7), d=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_vjp_jvp_against_finite_differences(kind, mode_name, b, d, seed):
    rng = np.random.default_rng(seed)
    if kind in ("batchnorm", "batchnorm-affine", "residual-bn") and mode_name == "train" and b < 3:
        b = 3  # two samples standardise to +-1 exactly; keep the batch Jacobian generic
    if kind.startswith(("layernorm", "residual")) and d < 3:
        d = 3  # likewise two features: layer norm's output is then constant and its Jacobian only O(eps)
    layer = make_layer(kind, d, rng)
    x = rng.standard_normal((b, d)) * 1.5
    x += 0.01 * np.sign(x)  # off the rectifiers' kink at 0, where a difference is no derivative (seed 1056: 2e-10)
    f = frozen_stats_forward(layer, x) if kind.startswith("batchnorm") and mode_name == "hold" else None
    if kind == "residual-bn" and mode_name == "hold":
        return  # covered by the network-level hold_stats test (needs frozen statistics inside the branch)
    check_layer_derivatives(layer, x, MODES[mode_name], rng, f=f)


@pytest.mark.parametrize("mode_name", sorted(MODES))
@pytest.mark.parametrize("kind", KINDS)
def test_jacobian_matches_stacked_identity(kind, mode_name, rng):
    layer = make_layer(kind, 4, rng)
    x = rng.standard_normal((5, 4))
    y, cache = layer.forward(x, MODES[mode_name])
    J = layer.jacobian(cache)
    batch_level = bool(cache.coupled)
    assert batch_level == (kind in ("batchnorm", "batchnorm-affine", "residual-bn") and mode_name == "train")
    from_vjp, from_jvp = stacked_identity_jacobians(layer, cache, x.shape, y.shape, batch_level)
    assert J.shape == from_vjp.shape
    assert rel_err(J, from_vjp) < 1e-12
    assert rel_err(J, from_jvp) < 1e-12


@pytest.mark.parametrize("mode_name", ["train", "eval"])
@pytest.mark.parametrize("kind", ["dense", "dense-nobias", "prelu", "batchnorm-affine", "layernorm-affine",
                                  "residual", "residual-bn", "residual-proj"])
def test_param_grads_against_finite_differences(kind, mode_name, rng):
    layer = make_layer(kind, 4, rng)
    x = rng.standard_normal((6, 4))
    check_param_derivatives(layer, x, MODES[mode_name], rng)


def test_backward_matches_vjp_and_param_grads(rng):
    layer = make_layer("residual-bn", 4, rng)
    x = rng.standard_normal((6, 4))
    y, cache = layer.forward(x)
    v = rng.standard_normal(y.shape)
    dx, grads = layer.backward(cache, v)
    assert rel_err(dx, layer.vjp(cache, v)) < 1e-14
    assert set(grads) == set(layer.params)


def test_batchnorm_jacobian_is_symmetric_per_feature(rng):
    bn = make_layer("batchnorm", 3, rng)
    _, cache = bn.forward(rng.standard_normal((6, 3)))
    J = bn.jacobian(cache)  # (B, d, B, d)
    for f in range(3):
        block = J[:, f, :, f]
        assert np.allclose(block, block.T, atol=1e-13)
        assert np.abs(J[:, 0, :, 1]).max() == 0.0  # features do not interact


def test_batchnorm_conv_layout(rng):
    """Per-channel statistics over (batch, height, width) for (B, C, H, W) data."""
    bn = BatchNorm.create(2, conv=True, affine=True)
    bn.gamma[...] = rng.uniform(0.5, 1.5, (2, 1, 1))
    bn.beta[...] = rng.standard_normal((2, 1, 1))
    x = rng.standard_normal((3, 2, 2, 2))
    check_layer_derivatives(bn, x, TRAIN, rng)
    check_param_derivatives(bn, x, TRAIN, rng)
    y, cache = bn.forward(x)
    from_vjp, from_jvp = stacked_identity_jacobians(bn, cache, x.shape, y.shape, True)
    assert rel_err(bn.jacobian(cache), from_vjp) < 1e-12
    z = (y - bn.beta) / bn.gamma
    assert np.allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-12)


def test_batchnorm_refuses_a_batch_of_one(rng):
    """One value per feature has no batch statistics: the output (and Jacobian) would be all zeros, silently."""
    bn = BatchNorm.create(4)
    for x in (rng.standard_normal((1, 4)), rng.standard_normal((1, 4, 1, 1))):
        layer = bn if x.ndim == 2 else BatchNorm.create(4, conv=True)
        with pytest.raises(ValueError, match="a batch of one has no batch statistics"):
            layer.forward(x, TRAIN)
        assert layer.forward(x, EVAL)[0].shape == x.shape  # running statistics: fine
    assert BatchNorm.create(4, conv=True).forward(rng.standard_normal((1, 4, 2, 2)), TRAIN)[0].std() > 0.5  # 4 values
    with pytest.raises(ValueError, match="a batch of one"):
        nablax.build("batch-ReLU", depth=2, width=4).forward(rng.standard_normal((1, 4)))
    with pytest.raises(ValueError, match="running_var"):
        BatchNorm(np.zeros(3), np.array([1.0, -1e-3, 1.0]))


def test_crelu_identity_and_looks_linear(rng):
    z = rng.standard_normal((5, 4))
    y, _ = CReLU().forward(z)
    assert np.array_equal(y[:, :4] - y[:, 4:], z)
    W = rng.standard_normal((4, 3))
    assert rel_err(y @ np.concatenate([W, -W]), z @ W) < 1e-14


def test_selu_constants_and_continuity():
    from nablax.layers import SELU_ALPHA, SELU_LAMBDA

    assert SELU_LAMBDA == 1.0507009873554805 and SELU_ALPHA == 1.6732632423543772
    y, d = SeLU().phi(np.array([-1e-12, 0.0, 1e-12, 1.0]))
    assert abs(y[0]) < 1e-11 and y[1] == 0 and abs(y[3] - SELU_LAMBDA) < 1e-15
    assert abs(d[1] - SELU_LAMBDA * SELU_ALPHA) < 1e-15 and d[2] == SELU_LAMBDA


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rectifiers_are_max_z_0_at_the_infinities(dtype):
    """ReLU is max(z, 0) and CReLU [max(z, 0), max(-z, 0)] at every input: finite at +-inf (z * 1[z > 0] would
    give NaN there), +0 for z <= 0, NaN kept; the same under either kernel setting."""
    z = np.array([[np.inf, -np.inf, np.nan, -2.0, 3.0, -0.0]], dtype=dtype)
    for setting in ("numpy", "numba"):
        with use_cpu_kernels(setting):
            y_relu, _ = ReLU().forward(z)
            y_crelu, _ = CReLU().forward(z)
        assert np.array_equal(y_relu, [[np.inf, 0, np.nan, 0, 3, 0]], equal_nan=True)
        assert np.array_equal(y_crelu, [[np.inf, 0, np.nan, 0, 3, 0, 0, np.inf, np.nan, 2, 0, 0]], equal_nan=True)
        assert not any(np.signbit(y[~np.isnan(y)]).any() for y in (y_relu, y_crelu))  # +0, not -0


def test_prelu_with_slope_one_is_identity(rng):
    x = rng.standard_normal((4, 5))
    y, _ = PReLU(np.ones(5)).forward(x)
    assert np.array_equal(y, x)


def test_adjoint_of_whole_residual_with_probe_axes(rng):
    layer = make_layer("residual-proj", 3, rng)
    x = rng.standard_normal((4, 3))
    y, cache = layer.forward(x)
    U = rng.standard_normal((5,) + x.shape)
    V = rng.standard_normal((5,) + y.shape)
    lhs = np.einsum("pbi,pbi->p", V, layer.jvp(cache, U))
    rhs = np.einsum("pbi,pbi->p", layer.vjp(cache, V), U)
    assert rel_err(lhs, rhs) < ADJOINT_RTOL


@pytest.mark.parametrize("kind", ["residual", "residual-proj"])
def test_residual_parts_of_output_and_pullback(kind, rng):
    """The skip and branch parts of a block's pullback are the pullbacks of its two output parts, by central
    differences of <dy, part(x + h dx)> (float64); the parts sum to the output and to ``vjp``."""
    layer = make_layer(kind, 3, rng)
    x, dx = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    skip, branch = layer.vjp_parts(cache, dy)
    np.testing.assert_allclose(skip + branch, layer.vjp(cache, dy), rtol=1e-13, atol=1e-13)

    def parts(z):
        out, c = layer.forward(z)
        rho = layer.branch_output(c)
        return out - rho, rho

    h = 1e-5
    for k, pulled in enumerate((skip, branch)):
        fd = (np.sum(dy * parts(x + h * dx)[k]) - np.sum(dy * parts(x - h * dx)[k])) / (2 * h)
        assert rel_err(np.sum(pulled * dx), fd) < 1e-7


@pytest.mark.parametrize("kind", KINDS)
def test_diagonal_derivative_by_central_differences(kind, rng):
    """A layer that reports phi'(z) is elementwise: moving every entry at once by h moves each output by phi' h
    (central differences, float64), and its vjp is dy * phi'; every other layer reports None."""
    layer = make_layer(kind, 3, rng)
    x = rng.standard_normal((4, 3))
    y, cache = layer.forward(x, TRAIN)
    d = layer.diagonal_derivative(cache)
    if kind not in ("identity", "relu", "tanh", "selu", "sigmoid", "prelu"):
        assert d is None
        return
    h = 1e-6
    fd = (layer.forward(x + h, TRAIN)[0] - layer.forward(x - h, TRAIN)[0]) / (2 * h)
    np.testing.assert_allclose(d, fd, rtol=1e-7, atol=1e-9)
    dy = rng.standard_normal((2,) + y.shape)
    np.testing.assert_array_equal(layer.vjp(cache, dy), dy * d)
