"""Shattered gradients on the 1-D grid: df/dx in every bn_mode against finite differences, the degenerate and
closed-form cases of spec §11, the covariance image and the ACF, co-activity, looks-linear nets."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

import nablax
from gradcheck import FD_RTOL, central_difference, rel_err
from nablax.layers import BatchNorm, CReLU, PReLU, ReLU
from nablax.metrics import shatter as sh

SMALL = dict(depth=4, width=12)
GRID_ARCHS = ["one-layer", "fnn-bn", "fnn-no-bn-bias", "resnet-bn", "resnet-bn-2w", "resnet-bn-post", "crelu-ll"]
BN_ARCHS = ["fnn-bn", "resnet-bn", "resnet-bn-2w", "resnet-bn-post"]


def small(name, seed=0, **kw):
    return nablax.build(name, **{**SMALL, "seed": seed, **kw})


def frozen_copy(net, x):
    """A copy whose batch norms, in eval mode, use exactly the batch statistics of x: the net that
    ``bn_mode="constant_stats"`` differentiates, as an ordinary function of each grid point."""
    frozen = nablax.Network.load(net.save(Path(tempfile.mkdtemp()) / "frozen.npz"))
    for layer, xin, _ in frozen.forward(x, hold_stats=True).leaves():
        if isinstance(layer, BatchNorm):
            layer.running_mean[...] = xin.mean(axis=0)
            layer.running_var[...] = xin.var(axis=0)
    return frozen


def patterns(net, x, **mode):
    """Sign pattern of every rectifier's input, per sample (M, K): where it does not change, the net is affine."""
    tr = net.forward(x, **mode)
    rect = (ReLU, CReLU, PReLU)
    signs = [np.sign(xin).reshape(len(x), -1) for layer, xin, _ in tr.leaves() if isinstance(layer, rect)]
    return np.concatenate(signs, axis=1)


H = 1e-6


@pytest.mark.parametrize("name", GRID_ARCHS)
def test_constant_stats_matches_finite_differences_per_grid_point(name):
    net = small(name, beta=0.5)
    x = sh.grid(64, net=net)
    g = sh.grid_gradient(net, x)
    frozen = frozen_copy(net, x)
    assert rel_err(frozen(x, train=False), net(x)) < 1e-12  # the frozen copy is the same function at x
    fd = central_difference(lambda z: frozen(z, train=False)[:, 0], x, np.ones_like(x), H)
    p0, pm, pp = (patterns(frozen, x + s, train=False) for s in (0.0, -H, H))
    smooth = (p0 == pm).all(1) & (p0 == pp).all(1)  # no kink within h: the net is exactly affine there
    assert smooth.mean() > 0.9
    assert rel_err(g[smooth], fd[smooth]) < FD_RTOL


@pytest.mark.parametrize("name", BN_ARCHS)
def test_constant_stats_is_reverse_mode_and_differs_from_through_stats(name):
    net = small(name, seed=3)
    x = sh.grid(64, net=net)
    g = sh.grid_gradient(net, x)
    assert rel_err(g, sh.input_gradients(net, x)[:, 0]) < 1e-12  # spec §11.3: forward = reverse mode
    # the modes are different quantities, so the finite-difference tests below can tell them apart
    assert rel_err(g, sh.grid_gradient(net, x, "through_stats")) > 1e-2
    assert rel_err(g, sh.grid_gradient(net, x, "through_stats_diag")) > 1e-2


@pytest.mark.parametrize("name", BN_ARCHS)
def test_through_stats_modes_against_finite_differences_and_batch_jacobian(name, rng):
    net = small(name, seed=5)
    x = sh.grid(32, net=net)
    g_sum = sh.grid_gradient(net, x, "through_stats")
    g_diag = sh.grid_gradient(net, x, "through_stats_diag", chunk=7)  # chunks that do not divide M
    p0 = patterns(net, x)
    # dot-product test of g_sum = grad of sum_j f(x_j) (batch statistics recomputed by the forward pass)
    u = rng.standard_normal(x.shape)
    assert (patterns(net, x + H * u) == p0).all() and (patterns(net, x - H * u) == p0).all()
    fd = central_difference(lambda z: net(z).sum(), x, u, H)
    assert rel_err(np.vdot(g_sum, u[:, 0]), fd) < FD_RTOL
    # the diagonal: move one grid point, watch its own output
    for i in (0, 13, 31):
        e = np.zeros_like(x)
        e[i] = 1.0
        assert (patterns(net, x + H * e) == p0).all() and (patterns(net, x - H * e) == p0).all()
        fd_i = central_difference(lambda z: net(z)[i, 0], x, e, H)
        assert rel_err(g_diag[i], fd_i) < FD_RTOL
    # both against the engine's batch-level Jacobian (M, 1, M, 1): column sums and diagonal
    jac = net.forward(x).jacobian(batch_level=True)[:, 0, :, 0]
    assert rel_err(g_sum, jac.sum(axis=0)) < 1e-12
    assert rel_err(g_diag, np.diag(jac)) < 1e-12


def test_modes_coincide_without_batch_norm():
    net = small("fnn-no-bn-bias", seed=2)
    g = [sh.grid_gradient(net, bn_mode=m) for m in sh.BN_MODES]
    assert rel_err(g[0], g[1]) < 1e-12 and rel_err(g[0], g[2]) < 1e-12


def test_bias_free_relu_net_has_exactly_two_gradient_values():
    for name in ("fnn-no-bn", "resnet-no-bn"):
        net = nablax.build(name, depth=10, seed=1)
        x = sh.grid(net=net)  # linspace: 0 is not a grid point
        g = sh.grid_gradient(net, x)
        neg, pos = g[x[:, 0] < 0], g[x[:, 0] > 0]
        assert np.ptp(neg) <= 1e-12 * abs(neg[0]) and np.ptp(pos) <= 1e-12 * abs(pos[0])
        assert abs(neg[0] - pos[0]) > 1e-3 * max(abs(neg[0]), abs(pos[0]))
        # arange contains x = 0 exactly, where every rectifier input is 0 and relu'(0) = 0: the FNN's derivative
        # is 0 there, the resnet's is its skip path alone, w_in . w_out
        xa = sh.grid(kind="arange", net=net)
        ga = sh.grid_gradient(net, xa)
        at_zero = 0.0 if name == "fnn-no-bn" else (net.layers[0].W @ net.layers[-1].W)[0, 0]
        assert xa[128, 0] == 0.0 and ga[128] == pytest.approx(at_zero, rel=1e-12, abs=0.0)
        assert np.allclose(ga[:128], neg[0], rtol=1e-12) and np.allclose(ga[129:], pos[0], rtol=1e-12)


def test_breaking_homogeneity_shatters():
    """Batch norm over the grid (or random biases) is what makes the gradient take many values (spec §2.3(b))."""
    for name in ("fnn-bn", "fnn-no-bn-bias"):
        g = sh.grid_gradient(nablax.build(name, depth=10, seed=1))
        assert len(np.unique(np.round(g, 10))) > 50


@pytest.mark.parametrize("bias_std", [None, np.sqrt(1 / 200)])
def test_one_layer_gradient_is_a_sum_of_steps(bias_std):
    net = nablax.build("one-layer", seed=4, bias_std=bias_std)
    dense_in, _, dense_out = net.layers
    kinks, w = -dense_in.b, dense_out.W[:, 0]
    x = sh.grid(net=net)
    expected = (w[None, :] * (x > kinks[None, :])).sum(axis=1)
    assert rel_err(sh.grid_gradient(net, x), expected) < 1e-13
    std = 1.0 if bias_std is None else bias_std  # the default is 1 (ONE_LAYER_BIAS_STD), the spec's sqrt(1/N) an option
    assert 0.7 * std < kinks.std() < 1.3 * std


def test_grids():
    x = sh.grid()
    assert x.shape == (256, 1) and x[0, 0] == -2.0 and x[-1, 0] == 2.0
    xa = sh.grid(kind="arange")
    assert xa[0, 0] == -2.0 and xa[-1, 0] == 2.0 - 4 / 256 and (xa == 0).sum() == 1
    with pytest.raises(ValueError):
        sh.grid(kind="log")


def test_covariance_image(rng):
    g = rng.standard_normal(50)
    img = sh.covariance_image(g)
    gc = g - g.mean()
    assert np.allclose(img, img.T) and np.allclose(np.diag(img), gc**2 / g.var())
    assert np.allclose(sh.covariance_image(-3.0 * g + 7.0), img)
    signed = np.outer(gc, gc) / g.var()
    assert np.linalg.matrix_rank(signed) == 1 and np.allclose(np.abs(signed), img)
    # constant plus noise: the constant drops out, the image is |eps_c eps_c^T| / var(eps)
    eps = 0.01 * rng.standard_normal(50)
    ec = eps - eps.mean()
    assert np.allclose(sh.covariance_image(5.0 + eps), np.abs(np.outer(ec, ec)) / eps.var())
    with pytest.raises(sh.UndefinedACF):
        sh.covariance_image(np.full(10, 2.0))


def test_acf_estimator(rng):
    g = rng.standard_normal(40).cumsum()
    r = sh.acf(g)
    gc = g - g.mean()
    direct = np.array([(gc[: 40 - k] * gc[k:]).sum() for k in range(40)]) / (gc * gc).sum()
    assert r.shape == (40,) and np.allclose(r, direct) and r[0] == pytest.approx(1.0)
    assert np.allclose(sh.acf(2.5 * g - 3.0), r)
    same = sh.acf(g, estimator="correlate_same")
    assert same.shape == (20,) and np.allclose(same, r[:20])
    full = np.correlate(gc, gc, "same")
    assert np.allclose(same, full[20:] / full[20])
    stack = np.stack([g, rng.standard_normal(40)])
    assert np.allclose(sh.acf(stack, 5)[0], r[:6])
    assert list(sh.lags(3)) == [0, 1, 2] and np.allclose(sh.lags(3, sh.grid(), "x"), [0, 4 / 255, 8 / 255])


def test_noise_references(rng):
    m = 256
    w = sh.acf(sh.white_noise(rng, m))
    assert np.mean(np.abs(w[1:]) < 2 / np.sqrt(m)) > 0.9
    ws = sh.acf(sh.white_noise(rng, m, size=(50,)), 10).mean(axis=0)
    assert np.all(np.abs(ws[1:]) < 0.03)
    b = sh.acf(sh.brown_noise(rng, m, size=(50,)), 10).mean(axis=0)
    assert b[1] > 0.95 and np.all(np.diff(b) < 0)
    steps = np.diff(sh.brown_noise(rng, m, width=200, size=(200,)), axis=-1)
    assert steps.var() == pytest.approx(1 / 200, rel=0.05)


def test_acf_of_a_constant_gradient_is_undefined():
    with pytest.raises(sh.UndefinedACF):
        sh.acf(np.full(256, 0.3) + 1e-17 * np.arange(256))
    with pytest.raises(sh.UndefinedACF):
        sh.acf(np.stack([np.arange(5.0), np.ones(5)]))


def test_acf_orders_the_networks():
    """Spec §2.6: 24-layer FNN ~ white, 50-layer resnet in between, beta = 0.1 close to brown (one seed)."""
    lag1 = {}
    for key, name, depth, beta in [("fnn", "fnn-bn", 24, 1.0), ("res", "resnet-bn", 50, 1.0),
                                   ("res01", "resnet-bn", 50, 0.1), ("one", "one-layer", 1, 1.0)]:
        lag1[key] = sh.acf(sh.grid_gradient(nablax.build(name, depth=depth, beta=beta, seed=0)), 1)[1]
    assert abs(lag1["fnn"]) < 0.25
    assert lag1["fnn"] + 0.2 < lag1["res"] < lag1["res01"] - 0.1
    assert lag1["res01"] > 0.85 and lag1["one"] > 0.85


def test_active_coactive_estimator(rng):
    a = rng.random((300, 400)) < 0.5
    act, co = sh.active_coactive(a)
    assert act == pytest.approx(0.5, abs=0.005) and co == pytest.approx(0.25, abs=0.005)
    small_a = rng.random((7, 5)) < 0.6
    pairs = [(m, n) for m in range(7) for n in range(7) if m != n]
    brute = np.mean([[small_a[m, k] and small_a[n, k] for m, n in pairs] for k in range(5)])
    assert sh.active_coactive(small_a) == pytest.approx((small_a.mean(), brute))
    assert sh.active_coactive(np.ones((4, 3))) == (1.0, 1.0)


def test_activity_with_and_without_batch_norm(rng):
    x = rng.standard_normal((128, 50))
    bn = sh.activity(nablax.build("fnn-bn", depth=20, width=50, in_dim=50, seed=0).forward(x))
    plain = sh.activity(nablax.build("fnn-no-bn", depth=20, width=50, in_dim=50, seed=0).forward(x))
    assert len(bn.active) == 20 and list(bn.layers) == list(range(1, 21))
    assert np.all(np.abs(bn.active - 0.5) < 0.1) and np.all(np.abs(bn.coactive - 0.25) < 0.06)
    assert abs(plain.active.mean() - 0.5) < 0.1
    assert plain.coactive[-1] > plain.coactive[0] + 0.05  # "the co-active proportion climbs with depth"
    res = sh.activity(nablax.build("resnet-bn-2w", depth=3, width=50, in_dim=50, seed=0).forward(x))
    assert len(res.active) == 4  # two rectifiers in each of the 2 blocks


def test_gradient_moments_and_correlation(rng):
    g = rng.standard_normal((6, 4))
    diag, off = sh.gradient_moments(g)
    gram = g @ g.T
    assert diag == pytest.approx(np.trace(gram) / 6) and off == pytest.approx((gram.sum() - np.trace(gram)) / 30)
    # a linear net (looks-linear PReLU) has the same gradient at every input: R = 1 exactly
    x = rng.standard_normal((20, 8))
    nets = [nablax.build("prelu-ll", depth=3, width=8, in_dim=8, seed=s) for s in range(3)]
    r = sh.gradient_correlation(nets, x)
    assert r.corr == pytest.approx(1.0, abs=1e-12) and r.n == 3
    # a He ReLU FNN with batch norm at random inputs: R near 2^-L at depth 1
    nets = [nablax.build("fnn-bn", depth=1, in_dim=100, width=100, seed=s) for s in range(8)]
    r = sh.gradient_correlation(nets, rng.standard_normal((64, 100)))
    assert abs(r.corr - 0.5) < 0.1


@pytest.mark.parametrize("name", ["crelu-ll", "prelu-ll"])
def test_looks_linear_net_is_exactly_linear_and_orthogonal(name):
    net = nablax.build(name, depth=200, width=48, seed=0)
    chk = sh.looks_linear_check(net)
    assert chk.grad_std <= 1e-12 * abs(chk.grad_mean) and abs(chk.grad_mean) > 1e-4
    assert chk.nonlinearity < 1e-11 and chk.orth_error < 1e-12
    assert np.allclose(chk.norm_ratio, 1.0, atol=1e-12) and len(chk.norm_ratio) >= 200
    with pytest.raises(sh.UndefinedACF):
        sh.acf(sh.grid_gradient(net))
    # the check can fail: a ReLU net with batch norm is neither
    bad = sh.looks_linear_check(nablax.build("fnn-bn", depth=3, width=48, seed=0))
    assert bad.grad_std > 1e-3 * abs(bad.grad_mean) and bad.orth_error > 1e-2


def test_grid_gradient_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        sh.grid_gradient(nablax.build("fnn-bn", depth=2, width=4, in_dim=3))
    with pytest.raises(ValueError):
        sh.grid_gradient(small("fnn-bn"), bn_mode="frozen")


def test_cli_shatter(tmp_path, capsys):
    from nablax.cli import main

    png = tmp_path / "s.png"
    assert main(["shatter", "--arch", "resnet-bn", "--depth", "6", "--beta", "0.1", "--lags", "1", "4",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "lag 1: +0.9" in out and "lag 4:" in out and png.stat().st_size > 1000
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 5  # 5 ReLU layers
    assert main(["shatter", "--arch", "crelu-ll", "--depth", "30"]) == 0
    assert "ACF  undefined" in capsys.readouterr().out
