"""Effective depth: the λ-split of the gradient against the gradient itself and against brute-force path
enumeration, the closed cases (θ(0): depth 1; threshold 0: depth D), and the λ-parts of each optimiser's step."""

import itertools

import numpy as np
import pytest

import nablax
from nablax.layers import Dense
from nablax.losses import SoftmaxCrossEntropy
from nablax.metrics.effective_depth import (EffectiveDepth, counted_params, effective_depth, lambda_split,
                                            parametrised_leaves)
from nablax.optim import make_optimizer
from nablax.train import TrainConfig, Trainer

LOSS = SoftmaxCrossEntropy()
NETS = [("batch-ReLU", {}), ("layer-tanh", {}), ("SeLU", {}), ("batch-tanh", {"norm_affine": True}),
        ("batch-tanh (ResNet)", {"head": True}), ("layer-SeLU (ResNet)", {}), ("batch-ReLU (ResNet)", {"norm_affine": True})]


def moved_net(name, kw, rng, scale=0.3, depth=3, width=6, out_dim=4):
    """A small net (input dimension 5) whose parameters have moved away from θ(0); returns (net at θ(T), θ(0))."""
    net = nablax.build(name, depth=depth, width=width, in_dim=5, out_dim=out_dim, seed=1, **kw)
    p0 = net.copy_params()
    net.set_params({k: v + scale * rng.standard_normal(v.shape) for k, v in p0.items()})
    return net, p0


def batch(rng, b=7, classes=4):
    return rng.standard_normal((b, 5)), rng.integers(0, classes, b)


@pytest.mark.parametrize("name, kw", NETS)
def test_lambda_contributions_sum_exactly_to_the_gradient(name, kw, rng):
    net, p0 = moved_net(name, kw, rng)
    x, y = batch(rng)
    tr = net.forward(x)
    g = LOSS.grad(tr.output, y)
    dx, grads = tr.backward(g)
    split = lambda_split(tr, g, p0)
    assert set(split.parts) == set(grads)
    for k, grad in grads.items():
        np.testing.assert_allclose(split.parts[k].sum(axis=0), grad, rtol=0, atol=1e-13 * max(1.0, np.abs(grad).max()))
        assert split.parts[k].shape[0] <= split.D
    np.testing.assert_allclose(split.dx.sum(axis=0), dx, rtol=0, atol=1e-13)
    assert split.D == len(parametrised_leaves(net))
    if not kw.get("norm_affine"):
        assert split.D == net.n_linear
    # the bottom linear layer sees every λ up to D - 1, the top one only λ = 0
    assert split.parts["0.W"].shape[0] == split.D
    assert split.parts[f"{len(net.layers) - 1}.W"].shape[0] == 1


@pytest.mark.parametrize("name", ["batch-tanh", "layer-ReLU", "SeLU"])
def test_lambda_split_matches_brute_force_path_enumeration(name, rng):
    """Γ_i[λ] = Σ over the choices W(0) or R at each linear layer above i with exactly λ R's of A_{i-1}^T times the
    cotangent pushed down through those choices (unparametrised layers by their vjp at the current pass)."""
    net, p0 = moved_net(name, {}, rng)
    x, y = batch(rng)
    tr = net.forward(x)
    g = LOSS.grad(tr.output, y)
    split = lambda_split(tr, g, p0)
    dense = [i for i, layer in enumerate(net.layers) if isinstance(layer, Dense)]
    for i in dense:
        above = [j for j in dense if j > i]
        brute = np.zeros((len(above) + 1,) + net.layers[i].W.shape)
        for choice in itertools.product([0, 1], repeat=len(above)):
            pick = dict(zip(above, choice))
            s = g
            for j in range(len(net.layers) - 1, i, -1):
                layer = net.layers[j]
                if isinstance(layer, Dense):
                    w0 = p0[f"{j}.W"]
                    s = s @ (layer.W - w0).T if pick[j] else s @ w0.T
                else:
                    s = layer.vjp(tr.caches[j], s)
            brute[sum(choice)] += tr.values[i].T @ s
        np.testing.assert_allclose(split.parts[f"{i}.W"], brute, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("name, kw", NETS)
def test_initial_parameters_carry_only_lambda_zero(name, kw, rng):
    net = nablax.build(name, depth=3, width=6, in_dim=5, out_dim=4, seed=1, **kw)
    x, y = batch(rng)
    tr = net.forward(x)
    split = lambda_split(tr, LOSS.grad(tr.output, y), net.copy_params())
    for v in split.parts.values():
        assert not np.any(v[1:]), "a residual factor R = 0 must give exactly zero"


def test_effective_depth_closed_cases():
    C = np.array([1.0, 0.5, 0.04, 0.001, 0.0])
    total = C.sum()
    assert effective_depth(C, 0.0) == 5  # threshold 0: every λ counts, the number of parametrised layers
    assert effective_depth(C, 0.5 / total) == 2
    assert effective_depth(C, 0.04 / total) == 3
    assert effective_depth(C, 0.04 / total + 1e-9) == 2
    assert effective_depth(C, 0.9) == 1
    assert effective_depth(np.zeros(4), 0.01) == 1  # nothing accumulated
    assert effective_depth(np.zeros(4), 0.0) == 4
    with pytest.raises(ValueError):
        effective_depth(C, -1.0)


def tiny_config(**kw):
    base = dict(arch="batch-tanh", data="digits", depth=3, width=8, batch_size=64, epochs=1, eval_batch=100,
                n_train=256, lr=0.05, taylor=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["batch-ReLU", "SeLU", "layer-tanh (ResNet)"])
def test_effective_depth_during_training(arch):
    ed = EffectiveDepth(eps=0.01, eps_grid=(0.0, 0.1, 0.01, 1e-6))
    trainer = Trainer(tiny_config(arch=arch, epochs=2), callbacks=[ed], progress=False)
    trainer.fit()
    D = trainer.net.n_linear
    hist = trainer.history
    assert hist[0]["effective_depth"] == 1  # θ(0), before any step
    assert all(h["effective_depth_sweep"]["0"] == D for h in hist)  # threshold 0: the number of linear layers
    assert all(1 <= h["effective_depth"] <= D for h in hist)
    sweep = hist[-1]["effective_depth_sweep"]
    assert sweep["0.1"] <= sweep["0.01"] <= sweep["1e-06"] <= D  # a lower threshold never gives a smaller depth
    assert hist[-1]["effective_depth"] >= 2  # after training the residuals carry part of the update
    C = ed.contributions()
    assert C.shape == (D,) and C[0] > 0 and np.all(C >= 0)


def test_first_step_from_initial_parameters_has_effective_depth_one():
    ed = EffectiveDepth(eps=1e-12)
    trainer = Trainer(tiny_config(), callbacks=[ed], progress=False)
    trainer._start()
    x, y = trainer._xy(np.arange(64))
    trainer.train_step(x, y)  # the split is taken at θ(0), so only λ = 0 is accumulated
    assert ed.depth() == 1 and ed.depth(0.0) == trainer.net.n_linear
    assert np.all(ed.contributions()[1:] == 0)


@pytest.mark.parametrize("opt, kw", [("sgd", {}), ("sgd", {"momentum": 0.9}), ("adam", {}), ("rmsprop", {})])
def test_lambda_parts_of_each_step_sum_to_the_step(opt, kw, rng):
    net, p0 = moved_net("batch-tanh", {}, rng, scale=0.1)
    optimizer = make_optimizer(opt, 0.01, **kw)
    buffers = {}
    keys = counted_params(net)
    for _ in range(3):
        x, y = batch(rng)
        tr = net.forward(x)
        g = LOSS.grad(tr.output, y)
        _, grads = tr.backward(g)
        split = lambda_split(tr, g, p0)
        before = net.copy_params()
        optimizer.step(net.named_params(), grads)
        for k in keys:
            U = optimizer.linearised_update(k, split.parts[k], buffers)
            np.testing.assert_allclose(U.sum(axis=0), before[k] - net.named_params()[k], rtol=1e-9, atol=1e-15)


def test_norm_of_sum_holds_the_lambda_parts_of_the_residual():
    ed = EffectiveDepth(accumulate="norm_of_sum")
    trainer = Trainer(tiny_config(momentum=0.5, epochs=2), callbacks=[ed], progress=False)
    trainer.fit()
    params = trainer.net.named_params()
    for k, m in ed.M.items():
        np.testing.assert_allclose(m.sum(axis=0), params[k] - trainer.params0[k], rtol=1e-9, atol=1e-13)
    assert ed.contributions().shape == (trainer.net.n_linear,)


def test_options_are_checked():
    with pytest.raises(ValueError):
        EffectiveDepth(accumulate="max")
    with pytest.raises(ValueError):
        EffectiveDepth(layer_weight="two")
    with pytest.raises(ValueError):
        EffectiveDepth(every=0)
    ed = EffectiveDepth(layer_weight="inverse_init_norm", every=2)
    trainer = Trainer(tiny_config(), callbacks=[ed], progress=False)
    trainer.fit()
    assert ed.settings()["every_s_steps"] == 2 and ed.settings()["optimizer_mode"] == "exact"
    assert ed.contributions()[0] > 0


@pytest.mark.parametrize("name, kw", NETS)
def test_fast_lambda_split_matches_the_plain_one(name, kw, rng):
    """The fast split (the default) gives the plain split's parts to rounding, for the parameters asked for; without
    the input cotangent it skips the bottom layer's pullbacks only."""
    net, p0 = moved_net(name, kw, rng)
    x, y = batch(rng)
    tr = net.forward(x)
    g = LOSS.grad(tr.output, y)
    plain = lambda_split(tr, g, p0, fast=False)
    every = lambda_split(tr, g, p0)
    keys = counted_params(net)
    asked = lambda_split(tr, g, p0, keys=keys, input_grad=False)
    assert set(every.parts) == set(plain.parts) and set(keys) <= set(asked.parts) <= set(plain.parts)
    assert not any(k.endswith(".b") for k in asked.parts)  # no bias parts unless asked for
    assert asked.dx is None and every.dx is not None
    np.testing.assert_allclose(every.dx, plain.dx, rtol=0, atol=1e-14 * np.abs(plain.dx).max())
    for split in (every, asked):
        for k, parts in split.parts.items():
            want = plain.parts[k]
            assert parts.shape == want.shape
            np.testing.assert_allclose(parts, want, rtol=0, atol=1e-14 * np.abs(want).max())


@pytest.mark.parametrize("opt, kw, accumulate", [("sgd", {}, "sum_of_norms"), ("sgd", {"momentum": 0.9}, "sum_of_norms"),
                                                 ("adam", {}, "sum_of_norms"), ("sgd", {}, "norm_of_sum")])
def test_fast_and_plain_effective_depth_accumulate_the_same_contributions(opt, kw, accumulate):
    """Two runs, one with the fast split and norms (the default), one with ``fast=False``: the same C[λ] to rounding."""
    C = {}
    for fast in (True, False):
        ed = EffectiveDepth(accumulate=accumulate, fast=fast)
        Trainer(tiny_config(arch="batch-tanh (ResNet)", optimizer=opt, epochs=2, **kw), callbacks=[ed],
                progress=False).fit()
        C[fast] = ed.contributions()
    assert C[True][1] > 0
    np.testing.assert_allclose(C[True], C[False], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, shape", [("prelu-ll", 5), ("conv-resnet-staged", (3, 8, 8))])
def test_lambda_split_of_slopes_kernels_and_projections(name, shape, rng):
    """PReLU slopes, convolution kernels and norm gains take the generic step (Back_θ(0) from a copy of the layer
    at θ(0)), a block's strided projection its own layer's step: the parts sum to the gradient, the fast split
    agrees with the plain one, and the network's parameters are left exactly as they were."""
    net = nablax.build(name, depth=6, width=2, in_dim=shape, out_dim=4, seed=1, norm_affine=True)
    p0 = net.copy_params()
    net.set_params({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in p0.items()})
    moved = net.copy_params()
    tr = net.forward(rng.standard_normal((3,) + net.in_shape))
    g = LOSS.grad(tr.output, rng.integers(0, 4, 3))
    dx, grads = tr.backward(g)
    plain, fast = lambda_split(tr, g, p0, fast=False), lambda_split(tr, g, p0)
    assert set(plain.parts) == set(fast.parts) == set(grads)
    for k, grad in grads.items():
        np.testing.assert_allclose(plain.parts[k].sum(axis=0), grad, rtol=0, atol=1e-13 * max(1.0, np.abs(grad).max()))
        np.testing.assert_allclose(fast.parts[k], plain.parts[k], rtol=0, atol=1e-14 * np.abs(plain.parts[k]).max())
        assert plain.parts[k].shape[0] > 1 or k.startswith(f"{len(net.layers) - 1}.")  # R moved every λ part
    np.testing.assert_allclose(plain.dx.sum(axis=0), dx, rtol=0, atol=1e-13 * np.abs(dx).max())
    assert all(np.array_equal(v, moved[k]) for k, v in net.named_params().items())


def test_lambda_split_of_prelu_slopes_matches_brute_force_path_enumeration(rng):
    """With slopes a = a(0) + Δa, PReLU's backward dy * (1[z >= 0] + a 1[z < 0]) is affine in a: every path picks
    a(0) (λ kept) or Δa 1[z < 0] (λ + 1) at each PReLU, as it picks W(0) or R at each Dense layer."""
    net, p0 = moved_net("prelu-ll", {}, rng)
    x, y = batch(rng)
    tr = net.forward(x)
    g = LOSS.grad(tr.output, y)
    split = lambda_split(tr, g, p0)

    def back(j, s, moved):  # the pullback through layer j along one path
        layer, cache = net.layers[j], tr.caches[j]
        if layer.kind == "dense":
            w0 = p0[f"{j}.W"]
            return s @ (layer.W - w0 if moved else w0).T
        if layer.kind == "prelu":
            a0, neg = p0[f"{j}.a"], cache.z < 0
            return s * ((layer.a - a0) * neg if moved else np.where(neg, a0, 1.0))
        return layer.vjp(cache, s)

    parametrised = [j for j, layer in enumerate(net.layers) if layer.params]
    assert {net.layers[j].kind for j in parametrised} == {"dense", "prelu"}
    for i in parametrised:
        above = [j for j in parametrised if j > i]
        brute = {k: np.zeros((len(above) + 1,) + v.shape) for k, v in net.layers[i].params.items()}
        for choice in itertools.product([0, 1], repeat=len(above)):
            pick, s = dict(zip(above, choice)), g
            for j in range(len(net.layers) - 1, i, -1):
                s = back(j, s, pick.get(j, 0))
            for k, v in net.layers[i].param_grads(tr.caches[i], s).items():
                brute[k][sum(choice)] += v
        for k, want in brute.items():
            np.testing.assert_allclose(split.parts[f"{i}.{k}"], want, rtol=1e-11, atol=1e-14)
