"""The CuPy backend against the NumPy reference. Runs only where CuPy finds a CUDA device; skipped elsewhere."""

import numpy as np
import pytest

import nablax
from nablax.backend import gpu_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")]

ARCHS = ["ReLU", "batch-ReLU", "layer-tanh", "SeLU", "batch-tanh (ResNet)", "crelu-ll", "resnet-bn"]


def _pair(name):
    kw = dict(depth=3, width=6, seed=3)
    if name not in ("crelu-ll", "resnet-bn"):
        kw["in_dim"] = 5
    return nablax.build(name, **kw), nablax.build(name, backend="cupy", **kw)


@pytest.mark.parametrize("name", ARCHS)
def test_cupy_matches_numpy(name):
    import cupy

    cpu, gpu = _pair(name)
    x = np.random.default_rng(0).standard_normal((7,) + cpu.in_shape)
    tc, tg = cpu.forward(x), gpu.forward(cupy.asarray(x))
    assert np.allclose(cupy.asnumpy(tg.output), tc.output, rtol=1e-12, atol=1e-12)
    v = np.random.default_rng(1).standard_normal((3,) + tc.output.shape)
    assert np.allclose(cupy.asnumpy(tg.pullback(cupy.asarray(v))), tc.pullback(v), rtol=1e-10, atol=1e-12)
    assert np.allclose(cupy.asnumpy(tg.jacobian()), tc.jacobian(), rtol=1e-10, atol=1e-12)
    assert np.allclose(cupy.asnumpy(tg.batch_jacobian_sq_norms()), tc.batch_jacobian_sq_norms(), rtol=1e-10)
    _, gc = tc.backward(np.ones_like(tc.output))
    _, gg = tg.backward(cupy.ones_like(tg.output))
    for k in gc:
        assert np.allclose(cupy.asnumpy(gg[k]), gc[k], rtol=1e-10, atol=1e-12), k


def test_cupy_save_load_round_trip(tmp_path):
    import cupy

    cpu, gpu = _pair("batch-ReLU")
    gpu.save(tmp_path / "g.npz")
    back = nablax.Network.load(tmp_path / "g.npz", backend="cupy")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((4, 5)))
    assert cupy.array_equal(back(x), gpu(x))


def test_mixing_backends_is_refused():
    import cupy

    cpu, gpu = _pair("ReLU")
    with pytest.raises(TypeError, match="cupy|numpy"):
        cpu.forward(cupy.zeros((2, 5)))
    with pytest.raises(TypeError, match="cupy|numpy"):
        gpu.forward(np.zeros((2, 5)))


@pytest.mark.parametrize("arch", ["batch-tanh", "layer-ReLU (ResNet)", "conv-crelu-ll"])
def test_training_on_the_gpu_matches_the_cpu(arch, tmp_path):
    """One code path: the same run (the λ-split, the per-example GSC, Taylor) on either backend, same numbers."""
    from nablax.train import TrainConfig, run

    kw = dict(arch=arch, data="digits", depth=3, width=6, epochs=2, n_train=128, batch_size=32, eval_batch=64,
              lr=0.05, taylor=not arch.startswith("conv"), measure_effective_depth=not arch.startswith("conv"))
    cpu = run(TrainConfig(**kw), tmp_path / "cpu", progress=False)
    gpu = run(TrainConfig(**kw, backend="cupy"), tmp_path / "gpu", progress=False)
    for key in ("train_error", "train_loss", "gsc"):
        assert gpu["final"][key] == pytest.approx(cpu["final"][key], rel=1e-8, abs=1e-12), key
    assert gpu["final"].get("effective_depth") == cpu["final"].get("effective_depth")
