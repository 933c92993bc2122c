"""Whole networks: traces, exact Jacobians, one-sweep norms, Hutchinson, parameter gradients, save/load, bad input."""

import numpy as np
import pytest

import nablax
from gradcheck import FD_RTOL, FD_STEP, central_difference, rel_err
from nablax.layers import Dense, ReLU
from nablax.layers.base import iter_leaves
from nablax.losses import MeanSquaredError, SoftmaxCrossEntropy
from nablax.network import Network, NetworkFileError

SMALL = dict(depth=3, width=5, in_dim=4)
ARCHS = ["ReLU", "layer-tanh", "batch-ReLU", "SeLU", "batch-tanh (ResNet)", "layer-SeLU (ResNet)"]


def small(name, **kw):
    return nablax.build(name, **{**SMALL, **kw})


@pytest.mark.parametrize("hold", [False, True])
@pytest.mark.parametrize("name", ARCHS)
def test_pullback_pushforward_adjoint_and_fd(name, hold, rng):
    net = small(name, seed=1)
    x = rng.standard_normal((6, 4))
    tr = net.forward(x, hold_stats=hold)
    u = rng.standard_normal(x.shape)
    v = rng.standard_normal(tr.output.shape)
    ju = tr.pushforward(u)
    jtv = tr.pullback(v)
    assert rel_err(np.vdot(v, ju), np.vdot(jtv, u)) < 1e-10
    if not hold:  # differencing the network re-computes batch statistics, which hold_stats freezes
        fd = central_difference(lambda z: net(z), x, u)
        assert rel_err(ju, fd) < FD_RTOL


def test_hold_stats_matches_frozen_statistics(rng):
    """hold_stats linearises the network with each batch norm's statistics frozen at this batch's values."""
    net = small("batch-ReLU", seed=2)
    x = rng.standard_normal((7, 4))
    tr = net.forward(x, hold_stats=True)
    frozen = Network.load(net.save(_tmp("frozen.npz")))
    from nablax.layers import BatchNorm

    for layer, value in zip(frozen.layers, tr.values[:-1]):
        if isinstance(layer, BatchNorm):
            layer.running_mean[...] = value.mean(axis=0)
            layer.running_var[...] = value.var(axis=0)
    u = rng.standard_normal(x.shape)
    fd = central_difference(lambda z: frozen(z, train=False), x, u)
    assert rel_err(tr.pushforward(u), fd) < FD_RTOL


def _tmp(name):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp()) / name


@pytest.mark.parametrize("name", ARCHS)
def test_jacobian_methods_agree(name, rng):
    net = small(name, seed=3)
    x = rng.standard_normal((4, 4))
    tr = net.forward(x)
    for src, dst in [(0, None), (1, 4), (2, 2)]:
        a = tr.jacobian(src, dst, method="vjp")
        b = tr.jacobian(src, dst, method="jvp", max_elements=7)  # tiny chunks
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-12
    # against finite differences, column by column, in a pass without batch coupling
    tr = net.forward(x, train=False)
    J = tr.jacobian()
    for j in range(4):
        u = np.zeros_like(x)
        u[:, j] = 1.0
        fd = central_difference(lambda z: net(z, train=False), x, u)
        assert rel_err(J[:, :, j], fd) < FD_RTOL


def test_batch_level_jacobian_matches_finite_differences(rng):
    net = small("batch-tanh", seed=4)
    x = rng.standard_normal((5, 4))
    tr = net.forward(x)
    J = tr.jacobian()
    assert J.shape == (5, 5, 5, 4)
    u = rng.standard_normal(x.shape)
    fd = central_difference(lambda z: net(z), x, u)
    assert rel_err(np.einsum("aibj,bj->ai", J, u), fd) < FD_RTOL
    with pytest.raises(ValueError, match="couples samples"):
        tr.jacobian(batch_level=False)


def test_jacobian_blocks_and_out_give_the_same_rows(tmp_path, rng):
    """Blocks of rows, stitched together, are the Jacobian, per sample and batch-level (tanh, batch-tanh) and on
    the rectifier path (ReLU: live seeds); ``out`` (here a disk-backed memmap) receives the same; a wrong ``out``
    is refused."""
    for name, level in [("batch-tanh", True), ("tanh", False), ("ReLU", False)]:
        tr = small(name, seed=4).forward(rng.standard_normal((5, 4)))
        J = tr.jacobian()
        blocks = [blk for _, blk in tr.jacobian_blocks(max_elements=9)]
        stacked = np.concatenate(blocks)  # (rows, B, d_src)
        want = J.reshape(-1, J.shape[-2] * J.shape[-1]) if level else J.transpose(1, 0, 2)
        assert rel_err(stacked.reshape(want.shape), want) < 1e-13
        mm = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=J.dtype, shape=J.shape)
        assert tr.jacobian(out=mm, max_elements=9) is mm
        mm.flush()
        assert rel_err(np.load(tmp_path / f"{name}.npy"), J) < 1e-13
        with pytest.raises(ValueError, match="out must be"):
            tr.jacobian(out=np.empty((2, 2)))
        with pytest.raises(ValueError, match="out must be"):
            tr.jacobian(out=np.empty(J.shape), method="jvp")


def test_streamed_batch_jacobian_stays_small():
    """A batch-level Jacobian of 3000 x 3000 entries (72 MB) streamed block by block never holds more than a
    small part of it: its squared norm from the blocks equals the one-sweep norm, at a peak of a few MB."""
    import tracemalloc

    net = nablax.build("batch-ReLU", depth=3, width=10, in_dim=10, seed=1)
    tr = net.forward(np.random.default_rng(0).standard_normal((300, 10)))
    full_bytes = (300 * 10) ** 2 * 8
    next(tr.jacobian_blocks())  # imports and kernel compilation happen outside the measurement
    tracemalloc.start()
    total = sum(float((blk ** 2).sum()) for _, blk in tr.jacobian_blocks())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rel_err(total, tr.batch_jacobian_sq_norms()[0]) < 1e-12
    assert peak < full_bytes / 10, (peak, full_bytes)


@pytest.mark.parametrize("name", ["ReLU", "tanh (ResNet)" if False else "layer-ReLU (ResNet)", "SeLU"])
def test_one_sweep_sq_norms_equal_explicit_jacobians(name, rng):
    net = small(name, seed=5)
    tr = net.forward(rng.standard_normal((6, 4)))
    norms = tr.jacobian_sq_norms(max_elements=11)  # chunked seeds give the same sums
    assert norms.shape == (net.n_positions, 6)
    for p in range(net.n_positions):
        J = tr.jacobian(p, None)
        assert rel_err(norms[p], (J ** 2).sum(axis=(1, 2))) < 1e-12
    assert rel_err(tr.batch_jacobian_sq_norms(), norms.sum(axis=1)) < 1e-12


def _unit_seed_nets(rng):
    """(net, input) pairs whose per-sample sweeps start in every way ``fastpath.Sweep.pull_units`` knows: through a final
    activation and a Dense layer (tanh), only the live units of a final ReLU, from a final Dense layer (fnn), two
    activations in a row, residual blocks, and conv layers with batch norm held (no lookup on image data)."""
    W1, W2 = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    two_acts = Network([Dense(W1), nablax.layers.Tanh(), Dense(W2), nablax.layers.Tanh(), ReLU()], in_shape=(4,))
    conv = nablax.build("conv-fnn", depth=3, width=2, in_dim=(1, 4, 4), out_dim=3, seed=2)
    fnn = nablax.build("fnn-no-bn-bias", depth=3, width=5, in_dim=4, out_dim=3, seed=7)
    flat = [small("tanh", seed=7), small("ReLU", seed=7), fnn, two_acts, small("tanh (ResNet)", seed=7)]
    return [(net, rng.standard_normal((5, 4))) for net in flat] + [(conv, rng.standard_normal((3, 1, 4, 4)))]


@pytest.mark.parametrize("sweep", [dict(feature_major="auto"), dict(feature_major="off"), dict(fast=False)])
def test_unit_seed_sweeps_match_forward_mode_for_every_range(sweep, rng):
    """Per-sample Jacobians and one-sweep norms (unit seeds kept sparse through activations and the first Dense
    layer, ``fastpath.Sweep.pull_units``, or the reference sweep) equal forward-mode Jacobians (identity seeds pushed
    from src) for every src <= dst, in both signal layouts and in chunks."""
    with nablax.settings(**sweep):
        for net, x in _unit_seed_nets(rng):
            tr = net.forward(x, hold_stats=True)
            for dst in range(len(tr.values)):
                norms = tr.jacobian_sq_norms(dst, 0, max_elements=13)
                for src in range(dst + 1):
                    want = tr.jacobian(src, dst, method="jvp")
                    assert rel_err(tr.jacobian(src, dst, max_elements=13), want) < 1e-12, (net.name, src, dst)
                    assert rel_err(norms[src], (want ** 2).reshape(len(x), -1).sum(axis=1)) < 1e-12, (net.name, src, dst)


def test_batch_sq_norms_coupled_and_hutchinson(rng):
    net = small("batch-ReLU", seed=6)
    tr = net.forward(rng.standard_normal((5, 4)))
    exact = tr.batch_jacobian_sq_norms(max_elements=13)
    for p in (0, 3, 7):
        J = tr.jacobian(p, None)
        assert rel_err(exact[p], (J ** 2).sum()) < 1e-12
    mean, stderr = tr.hutchinson_sq_norms(n_probes=400, rng=0)
    z = np.abs(mean - exact) / stderr
    assert np.all(z < 5), z  # unbiased with the reported standard error
    assert np.all(stderr > 0)


@pytest.mark.parametrize("name", ["batch-ReLU", "layer-tanh", "batch-tanh (ResNet)", "layer-ReLU (ResNet)"])
def test_network_param_grads_against_fd(name, rng):
    net = nablax.build(name, depth=2, width=4, in_dim=3, out_dim=3, seed=7, norm_affine=True)
    x = rng.standard_normal((6, 3))
    y = rng.integers(0, 3, 6)
    loss = SoftmaxCrossEntropy()
    tr = net.forward(x)
    _, grads = tr.backward(loss.grad(tr.output, y))
    dx, same = tr.backward(loss.grad(tr.output, y), input_grad=False)  # the training path skips dE/dx
    assert dx is None and all(np.array_equal(same[k], grads[k]) for k in grads)
    params = net.named_params()
    assert set(grads) == set(params)
    for k, p in params.items():
        d = rng.standard_normal(p.shape)
        keep = p.copy()
        p += FD_STEP * d
        lp = loss.value(net(x), y)
        p[...] = keep - FD_STEP * d
        lm = loss.value(net(x), y)
        p[...] = keep
        fd = (lp - lm) / (2 * FD_STEP)
        g = np.vdot(grads[k], d)
        # a bias right before batch norm has an exactly zero gradient, so allow the FD noise floor (~1e-10)
        assert abs(g - fd) <= FD_RTOL * max(abs(g), abs(fd)) + 1e-9, (k, g, fd)


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), MeanSquaredError()])
def test_loss_gradients(loss, rng):
    o = rng.standard_normal((5, 3)) * 3
    y = rng.integers(0, 3, 5) if isinstance(loss, SoftmaxCrossEntropy) else rng.standard_normal((5, 3))
    u = rng.standard_normal(o.shape)
    fd = central_difference(lambda z: np.array(loss.value(z, y)), o, u)
    assert rel_err(np.vdot(loss.grad(o, y), u), fd) < FD_RTOL


def test_softmax_cross_entropy_is_stable():
    o = np.array([[1000.0, 0.0], [-1000.0, 0.0]])
    loss = SoftmaxCrossEntropy()
    assert np.isfinite(loss.value(o, np.array([0, 0])))
    assert np.isfinite(loss.grad(o, np.array([1, 1]))).all()


def test_positions_metadata():
    net = nablax.build("batch-ReLU", depth=2, width=3)
    pos = net.positions()
    assert [p.kind for p in pos] == ["input", "dense", "batchnorm", "relu", "dense", "batchnorm", "relu"]
    assert [p.n_lin for p in pos] == [0, 1, 1, 1, 2, 2, 2]
    assert [p.n_act for p in pos] == [0, 0, 0, 1, 1, 1, 2]
    res = nablax.build("layer-ReLU (ResNet)", depth=2, width=3, out_dim=2, head=True)
    pos = res.positions()
    assert [p.n_lin for p in pos] == [0, 1, 3, 5, 5, 5, 6]
    assert [p.on_stream for p in pos] == [True, True, True, True, False, False, False]
    assert res.n_linear == 6


# --- save and load -------------------------------------------------------------------------------------


def test_one_walk_of_the_layer_tree(rng):
    """``iter_leaves`` visits every leaf once, in forward order (a block's projection before its branch), with the
    prefix of its parameter names and the input and cache it had in the forward pass."""
    net = nablax.build("highway", depth=2, width=4, in_dim=3, seed=0)
    tr = net.forward(rng.standard_normal((5, 3)))
    walked = list(iter_leaves(net.layers, tr.values, tr.caches))
    assert [pre for pre, *_ in walked] == ["0.", "1.skip.", "1.branch.0.", "1.branch.1.", "2.skip.", "2.branch.0.",
                                           "2.branch.1.", "3."]
    assert sorted(f"{pre}{k}" for pre, leaf, _, _ in walked for k in leaf.params) == sorted(net.named_params())
    for _, leaf, x, cache in walked:  # the highway's leaves: Dense (cache.x) and ReLU (cache.z)
        assert (cache.x if leaf.kind == "dense" else cache.z) is x
    assert all(a is leaf and b is x for (a, b, _), (_, leaf, x, _) in zip(tr.leaves(), walked, strict=True))
    bare = list(iter_leaves(net.layers))  # without a forward pass: no inputs, no caches
    assert [pre for pre, *_ in bare] == [pre for pre, *_ in walked] and all(x is None is c for _, _, x, c in bare)


@pytest.mark.parametrize("name", ["batch-ReLU", "layer-tanh (ResNet)", "crelu-ll", "prelu-ll", "highway"])
def test_save_load_round_trip_is_bit_identical(name, tmp_path, rng):
    net = nablax.build(name, depth=3, width=6, seed=9, norm_affine=True)
    x = rng.standard_normal((4,) + net.in_shape)
    net.forward(x, update_stats=True)  # non-trivial running statistics
    path = net.save(tmp_path / "net.npz")
    back = Network.load(path)
    a, b = net.named_params(), back.named_params()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    sa, sb = net.named_state(), back.named_state()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
    for train in (True, False):
        assert np.array_equal(net(x, train=train), back(x, train=train))
    assert back.meta == net.meta and back.name == net.name


def test_load_rejects_bad_files(tmp_path, rng):
    net = small("batch-ReLU")
    good = net.save(tmp_path / "good.npz")
    # truncated
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(NetworkFileError):
        Network.load(bad)
    # foreign npz
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(NetworkFileError, match="not a nablax network file"):
        Network.load(tmp_path / "foreign.npz")
    # pickled object arrays are refused, never unpickled
    np.savez(tmp_path / "pickle.npz", __format__=np.array("nablax-network"), __version__=np.array(1),
             __network__=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(NetworkFileError):
        Network.load(tmp_path / "pickle.npz")
    # an array with the wrong shape for its layer
    with np.load(good) as z:
        arrays = dict(z)
    arrays["layers.0.W"] = rng.standard_normal((4, 4))
    arrays["layers.0.b"] = np.zeros(7)
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(NetworkFileError, match="layers.0"):
        Network.load(tmp_path / "shape.npz")
    # an unknown layer kind
    with np.load(good) as z:
        arrays = dict(z)
    arrays["__network__"] = np.array(str(arrays["__network__"]).replace('"dense"', '"mystery"', 1))
    np.savez(tmp_path / "kind.npz", **arrays)
    with pytest.raises(NetworkFileError, match="unknown layer kind"):
        Network.load(tmp_path / "kind.npz")
    # NaN weights
    with np.load(good) as z:
        arrays = dict(z)
    arrays["layers.0.W"] = arrays["layers.0.W"].copy()
    arrays["layers.0.W"][0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(NetworkFileError, match="NaN"):
        Network.load(tmp_path / "nan.npz")
    # a negative batch-norm variance (it would give NaN at the first forward pass)
    with np.load(good) as z:
        arrays = dict(z)
    arrays["layers.1.running_var"] = arrays["layers.1.running_var"].copy()
    arrays["layers.1.running_var"][2] = -0.5
    np.savez(tmp_path / "var.npz", **arrays)
    with pytest.raises(NetworkFileError, match="running_var is a variance, so >= 0; its smallest entry is -0.5"):
        Network.load(tmp_path / "var.npz")


def test_weights_written_elsewhere_load_and_run(tmp_path, rng):
    """The documented schema, written by hand (as a user with weights from another framework would)."""
    import json

    W0, b0, W1 = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((4, 2))
    header = {"name": "mine", "in_shape": [3], "dtype": "float64", "meta": {},
              "layers": [{"kind": "dense", "config": {}, "arrays": ["W", "b"]},
                         {"kind": "relu", "config": {}, "arrays": []},
                         {"kind": "dense", "config": {}, "arrays": ["W"]}]}
    np.savez(tmp_path / "mine.npz", __format__=np.array("nablax-network"), __version__=np.array(1),
             __network__=np.array(json.dumps(header)), **{"layers.0.W": W0, "layers.0.b": b0, "layers.2.W": W1})
    net = Network.load(tmp_path / "mine.npz")
    x = rng.standard_normal((5, 3))
    assert np.allclose(net(x), np.maximum(x @ W0 + b0, 0) @ W1)


# --- bad input -----------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(rng):
    net = small("ReLU")
    with pytest.raises(ValueError, match="shape"):
        net.forward(rng.standard_normal((3, 5)))
    with pytest.raises(ValueError, match="shape"):
        net.forward(rng.standard_normal(4))
    x = rng.standard_normal((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        net.forward(x)
    with pytest.raises(TypeError, match="dtype"):
        net.forward(rng.standard_normal((3, 4)).astype(np.float32))
    with pytest.raises(TypeError, match="array"):
        net.forward([[1.0, 2.0, 3.0, 4.0]])
    tr = net.forward(rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="does not end with the shape"):
        tr.pullback(np.ones((3, 4)))
    with pytest.raises(IndexError):
        tr.pullback(np.ones((3, 5)), dst=99)
    with pytest.raises(ValueError, match="unknown architecture 'resnet-50'"):
        nablax.build("resnet-50")
    with pytest.raises(ValueError, match="dtype"):
        nablax.build("ReLU", dtype="float16")
    with pytest.raises(ValueError, match="unknown backend"):
        nablax.build("ReLU", backend="tpu")
    with pytest.raises(TypeError, match="mix dtypes"):
        Network([Dense(np.ones((2, 2))), Dense(np.ones((2, 2), dtype=np.float32))], 2)


def test_positions_follow_one_rule(rng):
    """Positions are 0..P wherever a caller passes one; a negative one does not wrap round to the output side."""
    net = small("ReLU")  # 6 layers: positions 0..6
    tr = net.forward(rng.standard_normal((3, 4)))
    v = np.ones_like(tr.output)
    calls = [lambda p: tr.pullback(v, src=p), lambda p: tr.pullback(np.ones((3, 4)), dst=p),
             lambda p: tr.pushforward(np.ones((3, 4)), src=p), lambda p: tr.jacobian(src=p),
             lambda p: tr.jacobian_sq_norms(dst=p), lambda p: tr.batch_jacobian_sq_norms(src=p),
             lambda p: tr.hutchinson_sq_norms(src=p)]
    for call in calls:
        for p in (-1, -7, 7, 999):
            with pytest.raises(IndexError, match=f"position {p} is outside 0..6"):
                call(p)
    # the defaults (None: the output for dst, the input for src) and explicit ends are what they were
    np.testing.assert_array_equal(tr.pullback(v), tr.pullback(v, dst=6, src=0))
    assert tr.jacobian_sq_norms().shape == (7, 3) and tr.jacobian(src=6).shape == (3, 5, 5)


def test_build_refuses_sizes_and_numbers_that_make_no_network():
    for kw, says in [(dict(width=0), "width must be a positive integer"), (dict(in_dim=0), "in_dim must be"),
                     (dict(out_dim=0), "out_dim must be"), (dict(depth=0), "depth must be"),
                     (dict(width=2.5), "width must be"), (dict(beta=np.nan), "beta must be a finite number")]:
        with pytest.raises(ValueError, match=says):
            nablax.build("batch-ReLU (ResNet)", **{"depth": 2, **kw})
    with pytest.raises(ValueError, match="bias_std must be a finite number"):
        nablax.build("one-layer", bias_std=np.inf)
    with pytest.raises(ValueError, match="in_dim must be"):
        nablax.build("conv-fnn", depth=3, in_dim=(3, 0, 8))
    assert nablax.build("conv-fnn", depth=3, width=2, in_dim=(1, 4, 4)).in_shape == (1, 4, 4)


def test_float32_networks_run(rng):
    net = nablax.build("layer-tanh", depth=3, width=5, in_dim=4, dtype="float32")
    x = rng.standard_normal((3, 4)).astype(np.float32)
    tr = net.forward(x)
    assert tr.output.dtype == np.float32
    assert tr.jacobian_sq_norms().dtype == np.float32


def test_cupy_without_gpu_is_a_clear_error():
    from nablax.backend import BackendUnavailable, gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable, match="cupy"):
        nablax.build("ReLU", depth=1, width=2, backend="cupy")


def test_sequential_by_hand_matches_build():
    W = np.arange(6.0).reshape(2, 3) / 10
    net = Network([Dense(W), ReLU()], 2)
    assert np.allclose(net(np.array([[1.0, -1.0]])), np.maximum(np.array([[1.0, -1.0]]) @ W, 0))


def test_networks_deepcopy_and_pickle(rng):
    import copy
    import pickle

    net = small("batch-ReLU (ResNet)", seed=11)
    x = rng.standard_normal((3, 4))
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert np.array_equal(twin(x), net(x))
        twin.named_params()["0.W"][0, 0] += 1.0  # a real copy, not a view
        assert not np.array_equal(twin(x), net(x))
