"""Fused kernels (nablax.kernels) against their NumPy references.

Every Numba kernel is compared with its reference (the sweep's in ``kernels.cpu``; the layers' and the optimiser's
formulas in their own modules, imported here: the kernels import nothing from them) on random inputs (float64 to
rounding, float32 to its own precision), in place and out of place; the dispatcher's settings and its fallback
without Numba are checked. The sweeps that use them are checked against the reference sweep in tests/test_fastpath.py.
"""

import os

import numpy as np
import pytest

import nablax
from gradcheck import check_layer_derivatives, rel_err
from nablax import kernels
from nablax.backend import numba_available
from nablax.kernels import cpu
from nablax.layers import BatchNorm
from nablax.layers.activations import relu
from nablax.layers.norm import standardize, standardize_vjp
from nablax.layers.base import Mode

needs_numba = pytest.mark.skipif(not numba_available(), reason="needs numba")
TOL = {np.float64: 1e-12, np.float32: 1e-5}
SHAPES = [(1, 1, 1), (3, 5, 7), (1, 130, 9), (17, 2, 33)]  # k probes, B samples, n entries


def _data(shape, dtype, rng, layout="C"):
    """v (k, B, n) and d (B, n), C-contiguous or feature-major (last axis first in memory, ``cpu.layout``)."""
    v = rng.standard_normal(shape).astype(dtype)
    d = rng.standard_normal(shape[1:]).astype(dtype)
    if layout == "F":
        v, d = (np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 0)), 0, -1) for a in (v, d))
    return v, d


@needs_numba
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_sq_norms_numba_matches_reference(shape, dtype, layout, rng):
    v, d = _data(shape, dtype, rng, layout)
    want_out, want_in, want_n = cpu.scale_sq_norms_reference(v, d)
    assert want_out.dtype == dtype and want_in.dtype == np.float64
    assert rel_err(want_in, (v.astype(float) ** 2).sum(axis=(0, 2))) < 1e-12  # the reference is what it says
    out, n_in, n_out = cpu.scale_sq_norms_numba(v, d)
    assert out.dtype == dtype and n_in.shape == (shape[1],) and n_out.dtype == np.float64
    assert rel_err(out, want_out) < TOL[dtype]
    assert rel_err(n_in, want_in) < TOL[dtype] and rel_err(n_out, want_n) < TOL[dtype]
    assert cpu.layout(out) == cpu.layout(v)
    inplace = v.copy(order="K")
    out2, n_in2, n_out2 = cpu.scale_sq_norms_numba(inplace, d, out=inplace)
    assert out2 is inplace and rel_err(inplace, want_out) < TOL[dtype]
    assert rel_err(n_in2, want_in) < TOL[dtype] and rel_err(n_out2, want_n) < TOL[dtype]


@needs_numba
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_sq_norms_numba_matches_reference(shape, dtype, layout, rng):
    v, _ = _data(shape, dtype, rng, layout)
    want = cpu.sq_norms_reference(v)
    assert rel_err(want, (v.astype(float) ** 2).sum(axis=(0, 2))) < 1e-12
    assert rel_err(cpu.sq_norms_numba(v), want) < TOL[dtype]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_numba_matches_reference_in_place(shape, dtype, rng):
    """scale (v *= d, feature-major) equals v * d written out, in place; the dispatcher sends C-ordered arrays to
    the NumPy reference and feature-major ones to Numba."""
    v, d = _data(shape, dtype, rng, "F")
    want = v * d
    got = v.copy(order="K")
    assert cpu.scale_numba(got, d) is got and np.array_equal(got, want)
    with kernels.use_cpu_kernels("numba"):
        got = v.copy(order="K")
        assert kernels.scale(got, d) is got and np.array_equal(got, want)
        c, dc = np.ascontiguousarray(v), np.ascontiguousarray(d)
        assert kernels.scale(c, dc) is c and np.array_equal(c, want)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 3, 1), (3, 6, 4), (2, 70, 5)])
def test_batch_standardize_vjp_numba_matches_reference(shape, dtype, rng):
    g, _ = _data(shape, dtype, rng)
    z = rng.standard_normal(shape[1:])
    y = ((z - z.mean(0)) / z.std(0)).astype(dtype)
    sigma = rng.uniform(0.5, 2.0, (1, shape[2])).astype(dtype)
    want = standardize_vjp(g, y, sigma, (-2,))
    # the reference by hand: (g - mean_b g - y mean_b(g y)) / sigma
    by_hand = (g - g.mean(axis=1, keepdims=True) - y * (g * y).mean(axis=1, keepdims=True)) / sigma
    assert rel_err(want, by_hand) < TOL[dtype]
    got = cpu.batch_standardize_vjp_numba(g, y, sigma)
    assert got.dtype == dtype and rel_err(got, want) < 10 * TOL[dtype]


@needs_numba
def test_batchnorm_through_the_numba_kernel_passes_the_derivative_checks(rng):
    """With batch statistics, BatchNorm.vjp/jvp take the fused kernel under the "numba" setting; the dot-product
    and finite-difference tests must still hold, with and without probe axes."""
    layer = BatchNorm.create(5)
    x = rng.standard_normal((7, 5)) * 2 + 1
    with kernels.use_cpu_kernels("numba"):
        check_layer_derivatives(layer, x, Mode(train=True), rng)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_standardize_numba_matches_reference(dtype, rng):
    """batch_standardize (batch norm's forward pass in training) equals the layer's formula (``standardize``),
    which equals the formula written out."""
    z = (rng.standard_normal((37, 11)) * 3 + 2).astype(dtype)
    got = cpu.batch_standardize_numba(z, 1e-5)
    want = standardize(z.astype(np.float64), (-2,), 1e-5)
    mean, var = z.astype(np.float64).mean(axis=0), z.astype(np.float64).var(axis=0)
    assert rel_err(want[0], (z - mean) / np.sqrt(var + 1e-5)) < 1e-12 and rel_err(want[2][0], var) < 1e-12
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape and rel_err(g, w) < TOL[dtype]


@needs_numba
def test_training_forward_is_the_same_with_either_kernel_setting(rng):
    """A training step's forward pass and gradients (batch-ReLU, big enough for "auto" to choose Numba: the batch-norm
    forward and pullback kernels) are the same with the NumPy references and with the Numba kernels."""
    from nablax.losses import SoftmaxCrossEntropy

    x, labels = rng.standard_normal((128, 70)), rng.integers(0, 10, 128)
    net = nablax.build("batch-ReLU", depth=3, width=80, in_dim=70, out_dim=10, seed=1)
    results = []
    for mode in ("numpy", "numba"):
        with kernels.use_cpu_kernels(mode):
            tr = net.forward(x)
            results.append((tr.output, tr.backward(SoftmaxCrossEntropy().grad(tr.output, labels))[1]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert rel_err(out_a, out_b) < 1e-12
    flat_a, flat_b = (np.concatenate([g[k].ravel() for k in grads_a]) for g in (grads_a, grads_b))
    assert rel_err(flat_a, flat_b) < 1e-12  # (the biases before batch norm have zero gradient: compared as a whole)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1,), (128, 100), (2, 3, 4, 5)])
def test_relu_numba_matches_reference_bit_for_bit(shape, dtype, rng):
    """The rectifier kernel gives the reference's y = max(z, 0) and d = 1[z > 0] exactly, also at 0, -0, NaN
    and the infinities; y is +0 wherever z <= 0 (-inf included) and NaN where z is NaN."""
    z = rng.standard_normal(shape).astype(dtype)
    z.flat[:5] = [0.0, -0.0, np.nan, np.inf, -np.inf][: z.size]
    want, got = relu(z), cpu.relu_numba(z)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == shape
        assert np.array_equal(g, w, equal_nan=True) and np.array_equal(np.signbit(g), np.signbit(w))
    y, d = want
    assert np.array_equal(d, (z > 0).astype(dtype)) and np.array_equal(y[z > 0], z[z > 0])
    assert np.array_equal(np.isnan(y), np.isnan(z)) and not np.signbit(y).any()
    assert np.all(y[~(z > 0) & ~np.isnan(z)] == 0)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1,), (100,), (300, 70), (3, 4, 5)])
def test_subtract_scaled_numba_matches_reference_bit_for_bit(shape, dtype, rng):
    """p -= a * u in place: the kernel equals the reference exactly (no fused multiply-add), for a learning rate
    that is not exact in float32."""
    p, u = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    want = p - dtype(0.0123) * u
    p_ref, p_fast = p.copy(), p.copy()
    p_ref -= dtype(0.0123) * u  # Optimizer.step's update
    assert cpu.subtract_scaled_numba(p_fast, u, 0.0123) is p_fast
    assert np.array_equal(p_ref, want) and np.array_equal(p_fast, want) and p_fast.dtype == dtype


@needs_numba
def test_training_kernels_fall_back_where_numba_cannot_take_the_arrays(rng):
    """Strided, mixed, broadcast or read-only arrays are refused (None: the caller computes the formula), and the
    layer and the optimiser then give the formula's answers."""
    from nablax.layers import ReLU
    from nablax.optim import SGD

    z = rng.standard_normal((6, 8))
    p, u = rng.standard_normal((6, 8)), rng.standard_normal(8)
    with kernels.use_cpu_kernels("numba"):
        assert kernels.relu(z[:, ::2]) is None
        assert all(np.array_equal(a, b) for a, b in zip(ReLU().phi(z[:, ::2]), relu(z[:, ::2])))
        for q in (u, z.astype(np.float32)):  # u broadcast over rows; mixed dtypes
            assert kernels.subtract_scaled(p.copy(), q, 0.5) is None
            got = {"p": p.copy()}
            SGD(0.5).step(got, {"p": q})
            assert np.array_equal(got["p"], p - 0.5 * q)
        p.flags.writeable = False
        assert kernels.subtract_scaled(p, z, 0.5) is None
        with pytest.raises(ValueError, match="read-only"):
            SGD(0.5).step({"p": p}, {"p": z})


@needs_numba
def test_relu_through_the_numba_kernel_passes_the_derivative_checks(rng):
    from nablax.layers import ReLU

    x = rng.standard_normal((7, 5)) + 0.05 * np.sign(rng.standard_normal((7, 5)))  # no entry near the kink
    x[np.abs(x) < 0.05] = 0.5
    with kernels.use_cpu_kernels("numba"):
        check_layer_derivatives(ReLU(), x, Mode(), rng)


def test_dispatcher_settings():
    assert kernels.cpu_kernels() in kernels.CPU_KERNELS
    with pytest.raises(ValueError):
        kernels.set_cpu_kernels("fortran")
    before = kernels.cpu_kernels()
    with kernels.use_cpu_kernels("numpy"):
        assert kernels.cpu_kernels() == "numpy"
    assert kernels.cpu_kernels() == before


def test_numpy_setting_and_missing_numba_use_the_reference(rng, monkeypatch):
    """With "numpy", or without Numba, the compiled kernels are never called, and the answers do not change."""
    v, d = _data((4, 3, 5), np.float64, rng)
    want = cpu.scale_sq_norms_reference(v, d)

    def boom():
        raise AssertionError("the compiled kernels must not run here")

    monkeypatch.setattr(cpu, "compiled", boom)
    with kernels.use_cpu_kernels("numpy"):
        got = kernels.scale_sq_norms(v, d)
    monkeypatch.setattr(kernels, "numba_available", lambda: False)
    with kernels.use_cpu_kernels("numba"):
        got2 = kernels.scale_sq_norms(v, d)
        assert rel_err(kernels.sq_norms(v), want[1]) < 1e-14
    for a, b in zip(got + got2, want + want):
        assert rel_err(a, b) < 1e-14


def test_non_contiguous_or_mixed_arrays_fall_back(rng):
    v, d = _data((4, 3, 5), np.float64, rng)
    with kernels.use_cpu_kernels("numba"):
        assert not kernels._numba_takes(v[:, :, ::2], d[:, ::2])  # strided
        assert not kernels._numba_takes(v, d.astype(np.float32))  # mixed dtypes
        assert not kernels._numba_takes(v.astype(np.int64), d)
        out, n_in, _ = kernels.scale_sq_norms(v[:, :, ::2], d[:, ::2])
    assert rel_err(out, v[:, :, ::2] * d[:, ::2]) < 1e-15
    assert rel_err(n_in, (v[:, :, ::2] ** 2).sum(axis=(0, 2))) < 1e-14


# --- layers that keep the sweep layout ----------------------------------------------------------------


def test_dense_keeps_the_signal_layout(rng):
    """Dense.vjp/jvp return a feature-major signal for a feature-major one (one matrix product either way)."""
    from nablax.layers import Dense

    layer = Dense(rng.standard_normal((6, 4)), rng.standard_normal(4))
    _, cache = layer.forward(rng.standard_normal((3, 6)))
    v, _ = _data((5, 3, 4), np.float64, rng, "F")
    out = layer.vjp(cache, v)
    assert cpu.layout(out) == "F" and rel_err(out, v @ layer.W.T) < 1e-15
    u = np.ascontiguousarray(out)
    assert cpu.layout(layer.jvp(cache, u)) == "C" and rel_err(layer.jvp(cache, u), u @ layer.W) < 1e-15


@needs_numba
def test_a_second_process_loads_the_kernels_from_disk(tmp_path):
    """Numba's on-disk cache (``cache=True``): the first process compiles the training step's kernels, the next
    one loads them (the first ``nablax train`` pays the compilation once per machine; BENCHMARKS.md, first run)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import numpy as np\nfrom nablax import kernels\nfrom nablax.kernels import cpu\nk = cpu.compiled()\n"
            "z = np.random.default_rng(0).standard_normal((8, 3))\n"
            "kernels.batch_standardize(z, 1e-5)\nkernels.relu(z)\nkernels.subtract_scaled(z, z, 0.5)\n"
            "d = [k.batch_standardize, k.relu, k.subtract_scaled]\n"
            "print(sum(sum(f.stats.cache_hits.values()) for f in d), sum(sum(f.stats.cache_misses.values()) for f in d))")
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NABLAX_KERNELS": "numba",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
            for _ in range(2)]
    assert [r.split() for r in runs] == [["0", "3"], ["3", "0"]]  # (loaded, compiled): compiled once, then loaded
