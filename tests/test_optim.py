"""Optimiser update rules against their formulas, written out independently here."""

import numpy as np
import pytest

from nablax.optim import SGD, Adam, RMSprop, make_optimizer


def run(opt, grads):
    p = {"w": np.array([1.0, -2.0, 0.5])}
    for g in grads:
        opt.step(p, {"w": g.copy()})
    return p["w"]


GRADS = [np.array([0.3, -0.1, 2.0]), np.array([-0.2, 0.4, 1.0]), np.array([0.05, 0.0, -3.0])]


def test_sgd_plain_and_momentum():
    w0 = np.array([1.0, -2.0, 0.5])
    assert np.allclose(run(SGD(0.1), GRADS), w0 - 0.1 * sum(GRADS))
    v, w = np.zeros(3), w0.copy()
    for g in GRADS:
        v = 0.9 * v + g
        w = w - 0.1 * v
    assert np.allclose(run(SGD(0.1, momentum=0.9), GRADS), w)


def test_rmsprop():
    s, w = np.zeros(3), np.array([1.0, -2.0, 0.5])
    for g in GRADS:
        s = 0.9 * s + 0.1 * g**2
        w = w - 0.01 * g / (np.sqrt(s) + 1e-8)
    assert np.allclose(run(RMSprop(0.01), GRADS), w)


def test_adam_with_bias_correction():
    m, s, w = np.zeros(3), np.zeros(3), np.array([1.0, -2.0, 0.5])
    for t, g in enumerate(GRADS, start=1):
        m = 0.9 * m + 0.1 * g
        s = 0.999 * s + 0.001 * g**2
        w = w - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
    assert np.allclose(run(Adam(0.01), GRADS), w)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_state_dict_round_trip_continues_identically(name):
    kw = {"momentum": 0.9} if name == "sgd" else {}
    a = make_optimizer(name, 0.01, **kw)
    run(a, GRADS[:2])
    b = make_optimizer(name, 0.01, **kw)
    b.load_state_dict({k: v for k, v in a.state_dict().items()})
    pa, pb = {"w": np.ones(3)}, {"w": np.ones(3)}
    a.step(pa, {"w": GRADS[2]})
    b.step(pb, {"w": GRADS[2]})
    assert np.array_equal(pa["w"], pb["w"])


def test_bad_optimizer_settings():
    with pytest.raises(ValueError, match="learning rate"):
        SGD(0.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", 0.1)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_updates_are_the_same_with_either_kernel_setting(name, dtype):
    """``step`` applies p -= lr * direction through ``kernels.subtract_scaled``: the Numba kernel (arrays this large
    take it under "auto") and the NumPy reference give the same parameters, bit for bit."""
    from nablax import kernels
    from nablax.backend import numba_available

    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((100, 100)).astype(dtype)
    grads = [rng.standard_normal((100, 100)).astype(dtype) for _ in range(3)]
    results = []
    for mode in ("numpy", "numba" if numba_available() else "auto"):
        opt, p = make_optimizer(name, 0.0123), {"w": p0.copy()}
        with kernels.use_cpu_kernels(mode):
            for g in grads:
                opt.step(p, {"w": g})
        results.append(p["w"])
    assert results[0].dtype == dtype and np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], p0)
