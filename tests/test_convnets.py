"""Whole convnets (architectures.py, convnet section) and the minibatch-gradient metrics of the shattered-gradients
spec §7: shapes and positions, network-level derivatives, save/load, looks-linear convnets exactly linear at
initialisation, delta-orthogonal norm preservation, and the metrics on closed-form cases (§11 item 13)."""

import numpy as np
import pytest

import nablax
from gradcheck import FD_RTOL, central_difference, rel_err
from nablax.architectures import CONV_NETS, convnet
from nablax.layers import BatchNorm, Conv2d, CReLU, Dense, GlobalAvgPool, Residual
from nablax.losses import SoftmaxCrossEntropy
from nablax.metrics.minibatch_gradients import (
    effective_rank,
    gradient_norm_ratio,
    gram_image,
    kmeans_order,
    per_example_gradients,
    relative_effective_rank,
    singular_values,
)
from nablax.network import Network

IMG = (2, 8, 8)


def small(name, depth=6, **kw):
    return convnet(name, depth, kw.pop("width", 3), IMG, 4, seed=kw.pop("seed", 0), **kw)


@pytest.mark.parametrize("name", CONV_NETS)
def test_convnets_build_with_consistent_shapes(name, rng):
    net = nablax.build(name, depth=6, width=3, in_dim=IMG, out_dim=4, seed=1, beta=0.1)
    x = rng.standard_normal((3,) + IMG)
    tr = net.forward(x)
    assert [tuple(v.shape[1:]) for v in tr.values] == net.shapes  # every out_shape is right
    assert tr.output.shape == (3, 4)
    pos = net.positions()
    assert pos[1].kind == "conv2d" and pos[1].n_lin == 1
    convs = sum(isinstance(layer, Conv2d) for layer, _, _ in tr.leaves())
    skips = sum(isinstance(layer, Residual) and layer.skip is not None for layer in net.layers)
    assert convs - skips == 5 and net.n_linear == 6 + skips  # depth 6 = 5 main-path convs + the linear head
    with pytest.raises(ValueError, match="does not match"):
        net.forward(rng.standard_normal((3, 2, 8, 7)))
    with pytest.raises(ValueError, match="image shape"):
        nablax.build(name, depth=6, in_dim=8)
    with pytest.raises(ValueError, match="image shape"):
        nablax.build(name, depth=6, in_dim=128)  # 2 x 8 x 8: a flat input is read as 3 n^2 or n^2 features only
    flat = nablax.build(name, depth=6, width=3, in_dim=int(np.prod(IMG)) * 3 // 2, out_dim=4, seed=1, beta=0.1)
    assert flat.shapes[1] == (3, 8, 8)  # 192 = 3 x 8^2
    flat = nablax.build(name, depth=6, width=3, in_dim=64, out_dim=4, seed=1, beta=0.1)
    assert flat.shapes[1] == (1, 8, 8)
    assert np.array_equal(flat(x[:, :1].reshape(3, 64)), convnet(name, 6, 3, (1, 8, 8), 4, beta=0.1, seed=1)(x[:, :1]))


def test_staged_layout_downsamples_and_widens():
    net = small("conv-resnet-staged", depth=14, width=2)  # 2 blocks per stage
    widths = [s[0] for s, layer in zip(net.shapes[1:], net.layers) if isinstance(layer, Residual)]
    assert widths == [2, 2, 4, 4, 8, 8]
    assert net.shapes[-4] == (8, 2, 2)  # 8x8 -> 4x4 -> 2x2
    plain = small("conv-relu", depth=14, width=2)
    assert max(s[0] for s in plain.shapes[:-2]) == 8 and plain.shapes[-3] == (8, 2, 2)
    with pytest.raises(ValueError, match="even"):
        small("conv-resnet", depth=5)


@pytest.mark.parametrize("name", ["conv-fnn", "conv-resnet-staged", "conv-crelu-ll"])
def test_network_derivatives_against_finite_differences(name, rng):
    net = small(name, depth=6, width=2, seed=3)
    x = rng.standard_normal((3,) + IMG)
    tr = net.forward(x)  # batch statistics: the pass couples samples
    u, v = rng.standard_normal(x.shape), rng.standard_normal(tr.output.shape)
    ju, jtv = tr.pushforward(u), tr.pullback(v)
    assert rel_err(np.vdot(v, ju), np.vdot(jtv, u)) < 1e-10
    assert rel_err(ju, central_difference(lambda z: net(z), x, u)) < FD_RTOL
    dx, grads = tr.backward(v)
    assert rel_err(dx, jtv) < 1e-13
    key = next(k for k in grads if k.endswith("K"))
    p = net.named_params()[key]
    dp = rng.standard_normal(p.shape)
    keep = p.copy()
    p += 1e-6 * dp
    plus = net(x)
    p[...] = keep - 1e-6 * dp
    minus = net(x)
    p[...] = keep
    assert rel_err(np.vdot(grads[key], dp), np.vdot(v, (plus - minus) / 2e-6)) < FD_RTOL


def test_network_jacobian_methods_agree(rng):
    net = small("conv-resnet-staged", depth=6, width=2, seed=4)
    x = rng.standard_normal((2,) + IMG)
    tr = net.forward(x, train=False)
    a = tr.jacobian(method="vjp")
    b = tr.jacobian(method="jvp", max_elements=300)
    assert a.shape == (2, 4, int(np.prod(IMG))) and rel_err(a, b) < 1e-12
    j = int(rng.integers(a.shape[2]))
    e = np.zeros(x.size // 2)
    e[j] = 1.0
    u = np.broadcast_to(e.reshape(IMG), x.shape)
    assert rel_err(a[:, :, j], central_difference(lambda z: net(z, train=False), x, u)) < FD_RTOL
    bl = net.forward(x).jacobian()  # batch-level through the batch statistics
    assert bl.shape == (2, 4, 2, int(np.prod(IMG)))


def test_save_and_load_roundtrip(tmp_path, rng):
    net = small("conv-resnet-staged", depth=8, width=2, seed=5)
    x = rng.standard_normal((3,) + IMG)
    back = Network.load(net.save(tmp_path / "c.npz"))
    assert np.array_equal(back(x), net(x))
    assert [type(la) for la in back.layers] == [type(la) for la in net.layers]


def _linear_part(net):
    """The base kernels of a looks-linear net without BN, as a plain linear chain (Conv2d, GAP, Dense)."""
    chain, on_crelu = [], False
    for layer in net.layers:
        if isinstance(layer, CReLU):
            on_crelu = True
            continue
        if isinstance(layer, Conv2d):
            K = layer.K
            if on_crelu:
                half = K.shape[1] // 2
                assert np.array_equal(K[:, half:], -K[:, :half])  # mirrored halves
                K = K[:, :half]
            chain.append(Conv2d(K, None, layer.stride, layer.padding))
        elif isinstance(layer, Dense):
            half = layer.W.shape[0] // 2
            assert np.array_equal(layer.W[half:], -layer.W[:half])
            chain.append(Dense(layer.W[:half]))
        elif isinstance(layer, GlobalAvgPool):
            chain.append(layer)
        else:
            raise AssertionError(f"unexpected layer {layer!r}")
        on_crelu = False
    return chain


@pytest.mark.parametrize("depth", [14, 198])
@pytest.mark.parametrize("conv_orth", ["flat", "delta"])
def test_looks_linear_convnet_is_the_product_of_its_base_kernels(conv_orth, depth, rng):
    """At initialisation, without BN, the CReLU looks-linear convnet IS the linear map of its base kernels."""
    net = small("conv-crelu-ll", depth=depth, width=3, bn=False, conv_orth=conv_orth, seed=6)
    x = rng.standard_normal((4,) + IMG)
    y = x
    for layer in _linear_part(net):
        y = layer.forward(y)[0]
    assert rel_err(net(x), y) < 1e-12
    x2 = rng.standard_normal(x.shape)
    assert rel_err(net(2.5 * x - x2), 2.5 * net(x) - net(x2)) < 1e-12  # exactly linear
    # the unmirrored net is not (the check can fail)
    un = small("conv-crelu-unmirrored", depth=depth, width=3, bn=False, seed=6)
    assert rel_err(un(2.5 * x - x2), 2.5 * un(x) - un(x2)) > 1e-3


def test_looks_linear_convnet_with_batchnorm_has_constant_gradients(rng):
    """conv -> BN -> CReLU -> LL conv: with the BN statistics held constant the net is affine in its input, so every
    example's input gradient is the same (spec §8 checks at initialisation); a ReLU net's are not."""
    x = rng.standard_normal((5,) + IMG)
    labels = np.zeros(5, dtype=int)
    g = per_example_gradients(small("conv-crelu-ll", depth=8, seed=7), x, labels, target="input", loss="logit")
    assert np.abs(g - g[0]).max() < 1e-12 * np.abs(g).max()
    assert gradient_norm_ratio(g) == pytest.approx(1.0, abs=1e-12)
    g = per_example_gradients(small("conv-relu", depth=8, seed=7), x, labels, target="input", loss="logit")
    assert np.abs(g - g[0]).max() > 1e-2 * np.abs(g).max()


def test_delta_orthogonal_looks_linear_convnet_preserves_norms_layer_to_layer(rng):
    net = convnet("conv-crelu-ll", 10, 4, IMG, 4, stages=1, bn=False, conv_orth="delta", seed=8)
    x = rng.standard_normal((3,) + IMG)
    tr = net.forward(x)
    norms = np.linalg.norm(x.reshape(3, -1), axis=1)
    convs = [p for p, layer in enumerate(net.layers, start=1) if isinstance(layer, Conv2d)]
    assert len(convs) == 9
    for p in convs:
        assert np.allclose(np.linalg.norm(tr.values[p].reshape(3, -1), axis=1), norms, rtol=1e-12)


# --- the metrics ---------------------------------------------------------------------------------------------


def test_gradient_norm_ratio_closed_forms(rng):
    g = np.tile(rng.standard_normal(50), (64, 1))
    assert gradient_norm_ratio(g) == pytest.approx(1.0, rel=1e-14)  # identical gradients
    m = 256
    iid = rng.standard_normal((m, 4000))
    assert gradient_norm_ratio(iid) == pytest.approx(1.0 / m, rel=0.05)  # about 1/M for i.i.d. zero-mean ones
    assert gradient_norm_ratio(3.0 * iid) == pytest.approx(gradient_norm_ratio(iid), rel=1e-12)
    assert 0.0 <= gradient_norm_ratio(iid + 0.3) <= 1.0 and gradient_norm_ratio(iid + 0.3) > 10.0 / m


def test_effective_rank_closed_forms(rng):
    q, _ = np.linalg.qr(rng.standard_normal((40, 7)))
    assert effective_rank(3.0 * q.T, centred=False) == pytest.approx(7.0, rel=1e-12)  # 7 equal singular values
    rank_one = np.outer(rng.standard_normal(9), rng.standard_normal(30))
    assert effective_rank(rank_one, centred=False) == pytest.approx(1.0)
    s = np.array([3.0, 1.0])
    p = s / s.sum()
    assert effective_rank(np.diag(s), centred=False) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    for shape in [(30, 80), (80, 30)]:  # the Gram-eigenvalue route agrees with an SVD
        a = rng.standard_normal(shape)
        assert np.allclose(singular_values(a), np.linalg.svd(a, compute_uv=False), rtol=1e-10)
    white = rng.standard_normal((64, 500))
    assert relative_effective_rank(white, seed=1) == pytest.approx(1.0, abs=0.02)
    smooth = np.cumsum(rng.standard_normal((64, 500)), axis=0)  # brown noise across examples: far from white
    assert relative_effective_rank(smooth, seed=1) < 0.6
    assert relative_effective_rank(white, reference="M") == pytest.approx(effective_rank(white) / 64)


def test_gram_image_properties(rng):
    g = rng.standard_normal((12, 30))
    img = gram_image(g)
    assert np.allclose(img, img.T) and np.diag(img).mean() == pytest.approx(1.0)
    assert np.allclose(gram_image(5.0 * g + 2.0), img)  # invariant to scale and (centred) to a common shift
    rank_one = np.outer(rng.standard_normal(12), rng.standard_normal(30))
    c = rank_one - rank_one.mean(axis=0)
    assert np.linalg.matrix_rank(c @ c.T) == 1 and np.allclose(gram_image(rank_one, normalise="cosine"), 1.0)


def test_kmeans_order_groups_clusters(rng):
    centres = rng.standard_normal((3, 20)) * 10
    labels = rng.integers(0, 3, 60)
    g = centres[labels] + 0.1 * rng.standard_normal((60, 20))
    order = kmeans_order(g, k=3, seed=0)
    assert sorted(order) == list(range(60))
    runs = 1 + int((np.diff(labels[order]) != 0).sum())
    assert runs == 3  # each true cluster is one contiguous block
    assert np.array_equal(order, kmeans_order(g, k=3, seed=0))


def test_per_example_gradients_are_adjoint_to_the_forward_map(rng):
    """<g_m, u> = d l_m along a tangent u of example m's first-layer activations (hold_stats), via the jvp path."""
    net = small("conv-resnet", depth=6, width=2, seed=9, beta=0.1)
    x = rng.standard_normal((4,) + IMG)
    y = rng.integers(0, 4, 4)
    g = per_example_gradients(net, x, y, loss=SoftmaxCrossEntropy())
    tr = net.forward(x, hold_stats=True)
    assert g.shape == (4, tr.values[1][0].size)
    out = tr.output
    p = np.exp(out - out.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for m in (0, 3):
        u = np.zeros_like(tr.values[1])
        u[m] = rng.standard_normal(u[m].shape)
        ju = tr.pushforward(u, src=1)
        dl = (p[m] - np.eye(4)[y[m]]) @ ju[m]  # d l_m / d o_m = softmax - onehot
        assert rel_err(g[m] @ u[m].ravel(), dl) < 1e-12
        assert np.abs(ju[np.arange(4) != m]).max() == 0.0  # statistics held: other examples do not move


def test_per_example_weight_gradients_sum_to_the_batch_gradient(rng):
    net = small("conv-fnn", depth=4, width=2, seed=10)
    x = rng.standard_normal((5,) + IMG)
    y = rng.integers(0, 4, 5)
    g = per_example_gradients(net, x, y, loss=SoftmaxCrossEntropy(), target="first_layer_weights")
    assert g.shape == (5, net.layers[0].K.size)
    tr = net.forward(x, hold_stats=True)
    _, grads = tr.backward(SoftmaxCrossEntropy().grad(tr.output, y))
    assert rel_err(g.sum(axis=0), 5 * grads["0.K"].ravel()) < 1e-12  # the batch loss is the mean of the l_m


def test_per_example_gradients_through_batch_statistics(rng):
    """bn='through': rows of d(sum_m l_m)/d(first-layer activations) with the statistics differentiated."""
    net = small("conv-fnn", depth=4, width=2, seed=11)
    x = rng.standard_normal((5,) + IMG)
    y = rng.integers(0, 4, 5)
    g = per_example_gradients(net, x, y, loss=SoftmaxCrossEntropy(), bn="through")
    rest = Network(net.layers[1:], net.shapes[1])  # the net from position 1 on (batch statistics recomputed)
    a1 = net.forward(x).values[1]
    u = rng.standard_normal(a1.shape)
    loss = SoftmaxCrossEntropy()
    fd = central_difference(lambda a: 5 * loss.value(rest(a), y), a1, u)
    assert rel_err(np.vdot(g, u), fd) < FD_RTOL
    assert rel_err(g, per_example_gradients(net, x, y, loss=loss)) > 1e-3  # differs from the held-statistics gradients
    assert any(isinstance(layer, BatchNorm) for layer in rest.layers)
