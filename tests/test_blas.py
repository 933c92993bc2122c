"""The dense products through a chosen CBLAS library (``nablax.kernels.blas``): every memory order and stride
that BLAS takes gives NumPy's product, everything else falls back to NumPy, and whole networks give the same
Jacobians and gradients. The library here is NumPy's own BLAS called through the same path as AOCL-BLAS."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import nablax
from nablax import kernels
from nablax.kernels import blas
from nablax.losses import SoftmaxCrossEntropy

from gradcheck import rel_err


def _matrix(rng, shape, order, dtype):
    """A (m, n) matrix in the given memory order: "C", "F", or "S", a strided slice of a larger C array."""
    if order == "S":
        return rng.standard_normal((shape[0] + 3, shape[1] + 2)).astype(dtype)[2:2 + shape[0], 1:1 + shape[1]]
    return np.asarray(rng.standard_normal(shape), dtype=dtype, order=order)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_memory_order_gives_numpys_product(dtype, numpy_cblas, rng):
    """C, Fortran and sliced operands and outputs (also their transposes, and length-1 axes) give a @ b, written
    into ``out`` when one is given; (50, 4) @ (4, 3) and its transpose take the path that copies a transposed
    right operand first."""
    tol = 1e-13 if dtype == "float64" else 1e-5
    with kernels.use_blas(numpy_cblas):
        for (m, k, n) in [(7, 5, 3), (1, 4, 6), (5, 1, 3), (4, 6, 1), (1, 1, 1), (40, 30, 20), (50, 4, 3), (3, 4, 50)]:
            for oa, ob, oc in itertools.product("CFS", "CFS", "CFSN"):
                a, b = _matrix(rng, (m, k), oa, dtype), _matrix(rng, (k, n), ob, dtype)
                out = None if oc == "N" else _matrix(rng, (m, n), oc, dtype)
                got = blas.matmul(a, b, out)
                want = a.astype(np.float64) @ b.astype(np.float64)
                assert got.dtype == dtype and got.shape == (m, n)
                assert out is None or got is out
                assert rel_err(got, want) < tol, (m, k, n, oa, ob, oc)
                got_t = blas.matmul(b.T, a.T)  # transposed operands
                assert rel_err(got_t, want.T) < tol, (m, k, n, oa, ob, "transposed")


def test_what_blas_cannot_take_goes_to_numpy(numpy_cblas, rng):
    """Overlapping output, no unit stride, other dtypes, mixed dtypes, stacks and a read-only out all give
    NumPy's answer (or NumPy's error)."""
    with kernels.use_blas(numpy_cblas):
        a = rng.standard_normal((6, 6))
        want = a @ a
        assert np.array_equal(blas.matmul(a, a, out=a), want)  # out is an input: NumPy copies first
        s = rng.standard_normal((10, 12))[::2, ::3]  # (5, 4), no unit stride
        assert rel_err(blas.matmul(s, s.T), s @ s.T) < 1e-14
        i = np.arange(12).reshape(3, 4)
        assert np.array_equal(blas.matmul(i, i.T), i @ i.T)
        assert rel_err(blas.matmul(a.astype("float32"), a), a.astype("float32") @ a) < 1e-6
        st = rng.standard_normal((2, 3, 4))
        assert rel_err(blas.matmul(st, st.transpose(0, 2, 1)), st @ st.transpose(0, 2, 1)) < 1e-14
        ro = np.empty((6, 6))
        ro.flags.writeable = False
        with pytest.raises(ValueError):
            blas.matmul(a, a, out=ro)
        with pytest.raises(ValueError):
            blas.matmul(a, rng.standard_normal((5, 2)))  # wrong inner size: NumPy's own error


def test_setting_and_clear_errors(numpy_cblas, monkeypatch, tmp_path):
    """set_blas returns the previous setting; check_blas loads without choosing; a missing file, a library without
    gemm, or "aocl" without the aoclda wheel are clear errors that leave the setting alone."""
    with kernels.use_blas("numpy"):  # whatever NABLAX_BLAS says
        assert kernels.blas_name() == "numpy" and kernels.blas_library() == "numpy.matmul"
        with kernels.use_blas(numpy_cblas):
            assert kernels.blas_name() == numpy_cblas
            assert kernels.blas_library() == os.path.basename(numpy_cblas)
        assert kernels.blas_name() == "numpy"
        kernels.check_blas(numpy_cblas)  # loads, chooses nothing
        assert kernels.blas_name() == "numpy"
        with pytest.raises(ValueError, match="cannot load"):
            kernels.check_blas(str(tmp_path / "missing.so"))
        with pytest.raises(ValueError, match="cannot load"):
            kernels.set_blas(str(tmp_path / "missing.so"))
        libm = next((p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib64/libm.so.6", "/lib64/libm.so.6")
                     if os.path.exists(p)), None)
        if libm is not None:
            with pytest.raises(ValueError, match="exports neither"):
                kernels.set_blas(libm)
        import importlib.util

        if importlib.util.find_spec("aoclda") is None:
            with pytest.raises(ValueError, match="aoclda"):
                kernels.set_blas("aocl")
        assert kernels.blas_name() == "numpy"


def test_a_bad_environment_value_warns_and_keeps_numpy():
    code = "import nablax.kernels as k; print(k.blas_name())"
    env = dict(os.environ, NABLAX_BLAS="/no/such/libblas.so")
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "numpy"
    assert "NABLAX_BLAS" in run.stderr and "ignored" in run.stderr


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_networks_give_the_same_jacobians_and_gradients(dtype, numpy_cblas, rng):
    """Through the chosen library (and float32 sweeps then feature-major), per-sample Jacobians equal forward
    mode, one-sweep norms equal the Jacobians' norms, and a training step's gradients equal those of
    numpy.matmul, for an MLP, a batch-norm MLP and a ResNet."""
    from nablax import fastpath

    tol = 1e-12 if dtype == "float64" else 1e-4
    x = rng.standard_normal((9, 6)).astype(dtype)
    y = rng.integers(0, 4, 9)
    for name in ("tanh", "batch-ReLU", "batch-ReLU (ResNet)"):
        net = nablax.build(name, depth=3, width=8, in_dim=6, out_dim=4, seed=2, dtype=dtype)
        with kernels.use_blas("numpy"):
            tr = net.forward(x, train=True)
            want_grads = tr.backward(SoftmaxCrossEntropy().grad(tr.output, y))[1]
            want_jac = net.forward(x, hold_stats=True).jacobian(method="jvp")
        with kernels.use_blas(numpy_cblas):
            assert dtype in fastpath.feature_major_dtypes()
            tr = net.forward(x, train=True)
            grads = tr.backward(SoftmaxCrossEntropy().grad(tr.output, y))[1]
            held = net.forward(x, hold_stats=True)
            jac, norms = held.jacobian(max_elements=40), held.jacobian_sq_norms(max_elements=40)
        assert grads.keys() == want_grads.keys()  # compared as one vector: a bias before batch norm has a
        flat = [np.concatenate([g[k].ravel() for k in sorted(g)]) for g in (grads, want_grads)]  # zero gradient
        assert rel_err(*flat) < tol, name
        assert rel_err(jac, want_jac) < tol, name
        assert rel_err(norms[0], (want_jac ** 2).sum(axis=(1, 2))) < tol, name


def test_nablax_info_names_the_library(numpy_cblas, capsys):
    from nablax.cli import main

    with kernels.use_blas("numpy"):
        main(["info"])
    assert "matrix products: numpy.matmul (NABLAX_BLAS: numpy)" in capsys.readouterr().out
    with kernels.use_blas(numpy_cblas):
        main(["info"])
    assert f"matrix products: {os.path.basename(numpy_cblas)}" in capsys.readouterr().out
