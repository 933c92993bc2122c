"""The compositional-depth-reduction experiment: r = 0 is the trained network, unmoved parameters give the
original network for every k, the tangent matches finite differences, and a closed form for a linear chain."""

import numpy as np
import pytest

import nablax
from gradcheck import FD_RTOL, rel_err
from test_effective_depth import batch, moved_net
from nablax.layers import Dense
from nablax.layers.base import Mode, forward_chain
from nablax.losses import SoftmaxCrossEntropy
from nablax.metrics.taylor import cut_positions, taylor_errors, taylor_outputs
from nablax.network import Network

NETS = [("batch-ReLU", {}), ("layer-tanh", {}), ("batch-tanh", {}), ("SeLU", {}), ("batch-tanh", {"norm_affine": True}),
        ("layer-ReLU (ResNet)", {"head": True})]


def trained_like(name, kw, rng, scale=0.2):
    return moved_net(name, kw, rng, scale, depth=4, width=7, out_dim=3)


def data(rng, n=40):
    return batch(rng, n, classes=3)


@pytest.mark.parametrize("name, kw", NETS)
def test_r0_is_the_trained_network(name, kw, rng):
    net, p0 = trained_like(name, kw, rng)
    x, y = data(rng)
    cuts = cut_positions(net)
    out = taylor_outputs(net, p0, x, cuts)
    np.testing.assert_allclose(out[cuts[0]], net(x), rtol=1e-12, atol=1e-12)
    res = taylor_errors(net, p0, x, y, loss=SoftmaxCrossEntropy(), batch_size=16)
    assert res.r[0] == 0 and res.error[0] == res.error_original
    pos = net.positions()
    assert list(res.r) == [pos[p].n_lin - 1 for p in cuts] and res.k.max() < net.n_linear  # output layer kept
    if not name.endswith("(ResNet)"):
        assert list(res.r) == list(range(net.n_linear - 1))
    assert res.settings["r0_is_original"]


@pytest.mark.parametrize("name, kw", NETS)
def test_unmoved_parameters_give_the_original_network_for_every_k(name, kw, rng):
    net = nablax.build(name, depth=4, width=7, in_dim=5, out_dim=3, seed=2, **kw)
    x, y = data(rng)
    p0 = net.copy_params()
    outs = taylor_outputs(net, p0, x, cut_positions(net, include_output=True))
    for out in outs.values():
        np.testing.assert_array_equal(out, net(x))
    res = taylor_errors(net, p0, x, y, loss=SoftmaxCrossEntropy(), batch_size=16)
    assert np.all(res.error == res.error_original) and np.all(res.loss == res.loss_original)


@pytest.mark.parametrize("name, kw", NETS[:5])
def test_tangent_matches_finite_differences(name, kw, rng):
    """T_k - B_k(θ(0)) = d/dh B_k(θ(0) + h Δθ) at h = 0, and T_k misses B_k(θ(T)) by O(|Δθ|^2)."""
    net, p0 = trained_like(name, kw, rng, scale=1.0)
    theta = net.copy_params()
    x, _ = data(rng, 12)
    cuts = cut_positions(net)

    def bottom(h, p):
        net.set_params({k: p0[k] + h * (theta[k] - p0[k]) for k in p0})
        try:
            return forward_chain(net.layers[:p], x, Mode(train=True))[0][p]
        finally:
            net.set_params(theta)

    for p in cuts:
        probe = Network(net.layers[:p], (5,))  # B_k alone: its "top part" is empty, so it returns T_k itself
        sub0 = {k: p0[k] for k in probe.named_params()}
        tangent = taylor_outputs(probe, sub0, x, [p])[p] - bottom(0.0, p)
        h = 1e-6
        fd = (bottom(h, p) - bottom(-h, p)) / (2 * h)
        assert rel_err(tangent, fd) < FD_RTOL
        misses = []  # second order: halving the move quarters the miss
        for s in (1e-3, 5e-4):
            probe.set_params({k: p0[k] + s * (theta[k] - p0[k]) for k in sub0})
            misses.append(np.linalg.norm(taylor_outputs(probe, sub0, x, [p])[p] - bottom(s, p)))
            probe.set_params({k: theta[k] for k in sub0})
        if p == cuts[0]:
            assert misses[0] < 1e-12  # B_1 is linear in its parameters
        elif "tanh" in name:  # smooth nets only: ReLU and SeLU have kinks where the expansion is not quadratic
            assert misses[1] / misses[0] == pytest.approx(0.25, rel=0.05)


def test_linear_chain_closed_form(rng):
    """For y = x W1 W2 W3 the first-order expansion of B_2 = x W1 W2 around θ(0) is
    x W1(0) W2(0) + x ΔW1 W2(0) + x W1(0) ΔW2 (no ΔW1 ΔW2 term), and the top applies W3(T)."""
    w0 = [rng.standard_normal((4, 4)) for _ in range(3)]
    dw = [rng.standard_normal((4, 4)) for _ in range(3)]
    net = Network([Dense(w.copy()) for w in w0], (4,))
    p0 = net.copy_params()
    net.set_params({f"{i}.W": w0[i] + dw[i] for i in range(3)})
    x = rng.standard_normal((6, 4))
    out = taylor_outputs(net, p0, x, [2])[2]
    expected = (x @ w0[0] @ w0[1] + x @ dw[0] @ w0[1] + x @ w0[0] @ dw[1]) @ (w0[2] + dw[2])
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_options(rng):
    net, p0 = trained_like("batch-tanh", {}, rng)
    x, y = data(rng)
    cuts = cut_positions(net)
    a = taylor_outputs(net, p0, x, cuts)
    b = taylor_outputs(net, p0, x, cuts, bn_stats="batch_constant")
    assert rel_err(a[cuts[0]], b[cuts[0]]) < 1e-12  # k = 1: no batch norm inside B_1
    assert rel_err(a[cuts[-1]], b[cuts[-1]]) > 1e-6  # deeper: the statistics' derivative matters
    ln, q0 = trained_like("layer-tanh", {}, rng)
    c = taylor_outputs(ln, q0, x, cut_positions(ln))
    d = taylor_outputs(ln, q0, x, cut_positions(ln), bn_stats="batch_constant")
    assert all(np.array_equal(c[p], d[p]) for p in c)  # no batch norm: the option changes nothing
    after = taylor_errors(net, p0, x, y, loss=SoftmaxCrossEntropy(), block_end="after_activation")
    assert not after.settings["r0_is_original"] and len(after.r) == net.n_linear - 1
    assert cut_positions(net, "after_activation")[0] == cut_positions(net)[1] - 1
    running = taylor_errors(net, p0, x, y, loss=SoftmaxCrossEntropy(), top_bn="running")
    assert running.settings["top_bn"] == "running"
    resnet = nablax.build("batch-ReLU (ResNet)", depth=3, width=6, in_dim=5, out_dim=3, head=True)
    pos = resnet.positions()
    assert [pos[p].n_lin for p in cut_positions(resnet)] == [1, 3, 5, 7]  # block ends
    with pytest.raises(ValueError):
        cut_positions(net, "middle")
    with pytest.raises(ValueError):
        taylor_outputs(net, p0, x, cuts, bn_stats="population")
