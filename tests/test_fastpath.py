"""The fast path of the exact sweeps (``nablax.fastpath``) against ``Trace``'s reference (``settings(fast=False)``).

As each Numba kernel is checked against its NumPy reference (tests/test_kernels.py), every entry point of the fast
path is checked against the reference code of ``Trace`` (identity seeds through the layers' own ``vjp``), for every
architecture of ``nablax.ARCHITECTURES`` (MLPs with each norm and nonlinearity, their ResNets, the
shattered-gradients nets, the convnets), in float64 to 1e-12, under settings that make every fast choice run (Numba
kernels at any size, both layouts, sample blocks, chunks side by side). The reference itself is checked against
forward mode. Then the fast path's own structure: live seeds, sample blocks, layouts, threads.
"""

import numpy as np
import pytest

import nablax
from gradcheck import rel_err
from nablax import architectures, fastpath, kernels
from nablax.backend import numba_available
from nablax.layers.base import jacobian_chain

TOL = 1e-12
FAST = {  # every fast choice on (small blocks and chunks), or the plainest fast sweep
    "all-on": dict(kernels="numba" if numba_available() else "numpy", feature_major="on", sample_block_bytes=200,
                   sweep_threads=2),
    "plain": dict(kernels="numpy", feature_major="off", sample_block_bytes=0, sweep_threads=1),
}


def small_net(name):
    """A small instance of an architecture, and an input for it."""
    kw = dict(depth=4 if "conv-resnet" in name else 3, width=8, seed=3)
    if name in architectures.CONV_NETS:
        kw.update(in_dim=(2, 5, 5), out_dim=3)
    elif name in architectures.SG_NETS:
        kw.update(in_dim=2, out_dim=3)
    else:
        kw.update(in_dim=3)
    net = nablax.build(name, **kw)
    return net, np.random.default_rng(7).standard_normal((7,) + net.in_shape)


def sweeps(tr, src, dst, max_elements):
    """Every exact-sweep result of a pass, from whichever path the settings choose."""
    out = {"batch norms": tr.batch_jacobian_sq_norms(dst, src, max_elements=max_elements),
           "jacobian": tr.jacobian(src, dst, max_elements=max_elements),
           "blocks": np.concatenate([blk for _, blk in tr.jacobian_blocks(src, dst, max_elements=max_elements)])}
    if not tr.couples_batch:
        out["norms"] = tr.jacobian_sq_norms(dst, src, max_elements=max_elements)
        out["batch jacobian"] = tr.jacobian(src, dst, batch_level=True, max_elements=max_elements)
    return out


@pytest.mark.parametrize("fast", sorted(FAST))
@pytest.mark.parametrize("name", nablax.ARCHITECTURES)
def test_fast_path_equals_the_reference(name, fast):
    net, x = small_net(name)
    P = len(net.layers)
    for hold in (False, True):
        tr = net.forward(x, hold_stats=hold)
        for src, dst in ((0, P), (0, P - 1), (1, P), (P // 2, P // 2 + 1), (P, P)):
            for max_elements in (1, 1 << 24):  # a chunk per seed (at width 8: 4 per thread), or one chunk
                with nablax.settings(fast=False):
                    want = sweeps(tr, src, dst, max_elements)
                with nablax.settings(**FAST[fast]):
                    got = sweeps(tr, src, dst, max_elements)
                assert got.keys() == want.keys()
                for what in want:
                    assert got[what].shape == want[what].shape, (what, src, dst)
                    assert rel_err(got[what], want[what]) < TOL, (what, hold, src, dst, max_elements)


@pytest.mark.parametrize("name", ["ReLU", "layer-tanh", "batch-ReLU", "resnet-bn", "prelu-ll", "conv-fnn"])
def test_the_reference_equals_forward_mode(name):
    """The reference sweeps (identity seeds pulled back) against Jacobians from identity seeds pushed forward."""
    net, x = small_net(name)
    with nablax.settings(fast=False):
        for tr in (net.forward(x), net.forward(x, hold_stats=True)):
            P = len(net.layers)
            jvp = [tr.jacobian(p, P, method="jvp") for p in range(P + 1)]
            batch = np.array([(j ** 2).sum() for j in jvp])
            assert rel_err(tr.batch_jacobian_sq_norms(max_elements=30), batch) < TOL
            assert rel_err(tr.jacobian(max_elements=30), jvp[0]) < TOL
            if not tr.couples_batch:
                per_sample = np.stack([(j ** 2).reshape(len(x), -1).sum(axis=1) for j in jvp])
                assert rel_err(tr.jacobian_sq_norms(max_elements=30), per_sample) < TOL


def test_the_reference_runs_nothing_of_the_fast_path(monkeypatch):
    """With fast=False no function of ``fastpath``, no compiled kernel and no other BLAS runs, whatever the
    other settings say."""
    from nablax.kernels import blas, cpu

    def boom(*args, **kw):
        raise AssertionError("the reference must not call this")

    for name in ("jacobian_blocks", "jacobian", "sq_norms", "Sweep", "live_seed_plan", "sample_blocks", "run_chunks"):
        monkeypatch.setattr(fastpath, name, boom)
    monkeypatch.setattr(cpu, "compiled", boom)
    monkeypatch.setattr(blas, "_library", boom)
    with nablax.settings(fast=False), nablax.settings(kernels="numba", sweep_threads=2):
        for name in ("ReLU", "batch-ReLU (ResNet)", "conv-relu"):
            net, x = small_net(name)
            tr = net.forward(x, hold_stats=True)
            tr.jacobian_sq_norms(), tr.batch_jacobian_sq_norms(), tr.jacobian(), list(tr.jacobian_blocks())
            net.forward(x).batch_jacobian_sq_norms()


def test_one_switch_turns_every_fast_choice_off():
    with nablax.settings(fast=False, blas="numpy"):
        assert kernels.blas_library() == "numpy.matmul"
        assert not kernels._numba_takes(np.ones((4, 4096)), layouts="C")
    with nablax.settings(kernels="numba"):
        assert kernels._numba_takes(np.ones((4, 4)), layouts="C") == numba_available()


# --- the fast path's own structure ---------------------------------------------------------------------------


def _explicit_sq_norms(tr):
    """||J_{out<-p}||_F^2 per sample from explicit per-sample Jacobians (one jacobian call per position)."""
    return np.stack([(tr.jacobian(p) ** 2).reshape(tr.batch_size, -1).sum(axis=1) for p in range(len(tr.values))])


@pytest.mark.parametrize("mode", ["numpy", "numba"])
@pytest.mark.parametrize("name", ["ReLU", "tanh", "layer-ReLU", "SeLU"])
def test_sweep_matches_explicit_jacobians_with_either_kernel(name, mode, rng):
    if mode == "numba" and not numba_available():
        pytest.skip("needs numba")
    net = nablax.build(name, depth=3, width=6, in_dim=4, seed=5)
    tr = net.forward(rng.standard_normal((9, 4)))
    want = _explicit_sq_norms(tr)
    explicit_j = tr.jacobian(method="jvp")
    with kernels.use_cpu_kernels(mode):
        got = tr.jacobian_sq_norms(max_elements=40)  # several chunks
        got_one = tr.jacobian_sq_norms()
        got_j = tr.jacobian(max_elements=40)
    assert rel_err(got, want) < 1e-12 and rel_err(got_one, want) < 1e-12 and rel_err(got_j, explicit_j) < 1e-12


@pytest.mark.parametrize("mode", ["numpy", "numba"])
def test_feature_major_sweeps_give_the_same_answers(mode, rng):
    """float64 MLP sweeps run feature-major (``fastpath.Sweep``); norms and Jacobians equal the sample-major ones,
    and float32 or batch-norm sweeps stay sample-major."""
    if mode == "numba" and not numba_available():
        pytest.skip("needs numba")
    for name in ("tanh", "ReLU"):
        net = nablax.build(name, depth=3, width=30, in_dim=5, out_dim=7, seed=5)
        tr = net.forward(rng.standard_normal((40, 5)))
        assert fastpath.Sweep(tr, 0, len(tr.values) - 1).feature_major
        with kernels.use_cpu_kernels(mode):
            fm = tr.jacobian_sq_norms(max_elements=700), tr.jacobian(max_elements=700)
            with nablax.settings(feature_major="off"):
                assert not fastpath.Sweep(tr, 0, len(tr.values) - 1).feature_major
                c = tr.jacobian_sq_norms(max_elements=700), tr.jacobian(max_elements=700)
        assert rel_err(fm[0], c[0]) < 1e-13 and rel_err(fm[1], c[1]) < 1e-13
        assert rel_err(fm[0], _explicit_sq_norms(tr)) < 1e-12
    for name, dtype in (("batch-ReLU", "float64"), ("tanh", "float32")):
        tr = nablax.build(name, depth=2, width=6, in_dim=4, seed=1, dtype=dtype).forward(
            rng.standard_normal((5, 4)).astype(dtype))
        with kernels.use_blas("numpy"):  # float32 goes feature-major with another BLAS (tests/test_blas.py)
            assert not fastpath.Sweep(tr, 0, len(tr.values) - 1).feature_major


def test_chunks_on_several_threads_give_the_same_answers_bit_for_bit(rng):
    """With sweep_threads=2 or 3 the chunks of a sweep run side by side; norms (added up in chunk order), batch-level
    norms and Jacobians equal the serial ones exactly, every time. A bad setting is a clear error."""
    tr = nablax.build("tanh", depth=3, width=20, in_dim=5, seed=5).forward(rng.standard_normal((30, 5)))
    trb = nablax.build("batch-ReLU", depth=2, width=6, in_dim=4, seed=1).forward(rng.standard_normal((9, 4)))
    runs = []
    for threads in (1, 2, 3, 2, 3):
        with nablax.settings(sweep_threads=threads):
            assert fastpath.sweep_threads() == threads
            runs.append((tr.jacobian_sq_norms(max_elements=700), tr.jacobian(max_elements=700),
                         trb.batch_jacobian_sq_norms(max_elements=60), trb.jacobian(max_elements=60)))
    for run in runs[1:]:
        for serial, parallel in zip(runs[0], run):
            np.testing.assert_array_equal(parallel, serial)
    with pytest.raises(ValueError, match="sweep_threads"):
        nablax.settings(sweep_threads="two")
    with nablax.settings(sweep_threads=0):
        assert 1 <= fastpath.sweep_threads() <= len(__import__("os").sched_getaffinity(0))


def test_chunks_run_once_each_on_one_blas_thread_and_add_up_in_order():
    """``run_chunks``: every chunk once; side by side only when each worker gets MIN_CHUNKS_PER_THREAD chunks; each
    chunk's own state, the states added up in chunk order (lists: concatenated) however the workers finish; serially
    or not, the BLAS has one thread inside the work and its own count after."""
    import threading
    import time

    from threadpoolctl import threadpool_limits

    def blas_threads():  # of the BLAS that nablax multiplies with (others, e.g. SciPy's, may be loaded too)
        return [p["num_threads"] for p in fastpath._threadpools(kernels.blas_library()).info() if p["user_api"] == "blas"]

    def work(rows, seen):
        time.sleep(0.002 * (rows.start % 3 == 0))  # some chunks finish late, so others wait to be added
        seen.append((rows.start, threading.get_ident(), blas_threads()))

    with threadpool_limits(2, user_api="blas"):
        for n_chunks in (1, 2 * fastpath.MIN_CHUNKS_PER_THREAD - 1, 2 * fastpath.MIN_CHUNKS_PER_THREAD, 13):
            seen = fastpath.run_chunks(work, [slice(i, i + 1) for i in range(n_chunks)], 2, list)
            assert [i for i, _, _ in seen] == list(range(n_chunks))
            workers = {t for _, t, _ in seen}
            if n_chunks < 2 * fastpath.MIN_CHUNKS_PER_THREAD:
                assert workers == {threading.get_ident()}
            else:
                assert len(workers) <= 2 and threading.get_ident() not in workers
            assert all(threads == [1] * len(threads) for _, _, threads in seen)
            assert blas_threads() == [2] * len(blas_threads())
    assert fastpath.run_chunks(work, [], 2, list) is None
    assert fastpath.run_chunks(lambda rows, state: None, [slice(0, 1)], 2) is None


def test_blas_limits_of_blocks_in_several_threads_share_one(monkeypatch):
    """``blas_threads`` blocks that overlap in two threads (two trainings in a threaded Dask worker) share one
    limit: the smallest count asked for while any block runs, also after the first one ends; the BLAS's own counts
    come back when the last one ends. Checked on what nablax asks threadpoolctl for (a recording stand-in): which
    thread's request OpenBLAS honours is OpenBLAS's affair (0.3.31 ignores other threads' once the main thread has
    set a count)."""
    import threading

    asked = []

    class Pools:
        def limit(self, limits, user_api):
            asked.append(limits)
            return self

        def restore_original_limits(self):
            asked.append("own")

    monkeypatch.setattr(fastpath, "_threadpools", lambda blas: Pools())
    entered, first_done = threading.Event(), threading.Event()

    def first():
        with fastpath.blas_threads(1):
            entered.wait(5)
        first_done.set()

    def second():
        with fastpath.blas_threads(2):
            with fastpath.blas_threads(1):
                entered.set()
                first_done.wait(5)

    one = threading.Thread(target=first)
    one.start()
    while not fastpath._limits:  # the first block holds its limit before the second thread starts
        __import__("time").sleep(0.001)
    two = threading.Thread(target=second)
    two.start()
    one.join()
    two.join()
    # first enters; second's outer (2) and inner (1) blocks; first ends; second's inner ends; second's outer ends
    assert asked == [1, 1, 1, 1, 2, "own"]
    with fastpath.blas_threads(0):
        assert asked == [1, 1, 1, 1, 2, "own"]


def test_sample_blocks_give_the_same_answers(rng):
    """A per-sample MLP sweep of a large batch goes a block of samples at a time (``fastpath.sample_blocks``): norms
    and Jacobians (also into ``out``) equal the whole-batch ones; coupled passes are never split."""
    for name in ("tanh", "ReLU"):
        tr = nablax.build(name, depth=3, width=12, in_dim=5, seed=5).forward(rng.standard_normal((23, 5)))
        whole = tr.jacobian_sq_norms(max_elements=300), tr.jacobian(max_elements=300)
        assert fastpath.sample_blocks(tr, 0, len(tr.values) - 1) is None  # small: one block
        with nablax.settings(sample_block_bytes=3 * 12 * 8 * 5):  # 5 samples per block
            blocks = fastpath.sample_blocks(tr, 0, len(tr.values) - 1)
            assert len(blocks) == 5 and blocks[0][0] == 0 and blocks[-1][1] == 23
            assert all(b0 == a1 and 4 <= b1 - b0 <= 5 for (a0, a1), (b0, b1) in zip([(0, 0)] + blocks, blocks))
            out = np.full(whole[1].shape, np.nan)
            got = tr.jacobian_sq_norms(max_elements=300), tr.jacobian(max_elements=300, out=out)
        assert got[1] is out
        assert rel_err(got[0], whole[0]) < 1e-13 and rel_err(got[1], whole[1]) < 1e-13
    trb = nablax.build("batch-ReLU", depth=2, width=6, in_dim=4, seed=1).forward(rng.standard_normal((30, 4)))
    with nablax.settings(sample_block_bytes=1):
        assert fastpath.sample_blocks(trb, 0, len(trb.values) - 1) is None


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_sweep_choices_together_match_explicit_jacobians(layout, blocks, threads, rng):
    """Every combination of the sweep's performance choices (layout, sample blocks, chunks side by side), with and
    without a final rectifier (live seeds), gives the norms of the explicit per-position Jacobians."""
    choices = dict(feature_major="auto" if layout == "F" else "off", sample_block_bytes=3 * 10 * 8 * 4 if blocks else 0,
                   sweep_threads=threads)
    with nablax.settings(**choices):
        for name in ("ReLU", "tanh"):
            net = nablax.build(name, depth=3, width=10, in_dim=6, seed=7)
            tr = net.forward(rng.standard_normal((13, 6)))
            assert fastpath.Sweep(tr, 0, len(tr.values) - 1).feature_major == (layout == "F")
            assert (fastpath.sample_blocks(tr, 0, len(tr.values) - 1) is not None) == blocks
            layers, caches = net.layers, tr.caches  # reference: products of each layer's explicit Jacobian
            want = np.stack([(jacobian_chain(layers[p:], caches[p:]) ** 2).sum(axis=(1, 2))
                             for p in range(len(layers))] + [np.full(13, 10.0)])
            assert rel_err(tr.jacobian_sq_norms(max_elements=200), want) < 1e-12
            assert rel_err(tr.batch_jacobian_sq_norms(max_elements=200), want.sum(axis=1)) < 1e-12
            J = tr.jacobian(max_elements=200)
            assert rel_err((J ** 2).sum(axis=(1, 2)), want[0]) < 1e-12


def test_unit_seed_lookups_come_in_the_sweep_layout(rng, monkeypatch, numpy_cblas):
    """The weight columns looked up for unit seeds (``Sweep.pull_units``) are already laid out as the sweep runs
    (feature-major in float64, and in float32 with another BLAS; C-ordered in float32 with NumPy's), so
    ``Sweep.pull_chunk`` takes them without a copy."""
    copies = []
    monkeypatch.setattr(fastpath, "feature_major_copy", lambda v: copies.append(v.shape) or v.copy(order="K"))
    for library in ("numpy", numpy_cblas):
        with kernels.use_blas(library):
            for dtype in ("float64", "float32"):
                for name in ("tanh", "ReLU"):
                    net = nablax.build(name, depth=3, width=30, seed=0, dtype=dtype)
                    tr = net.forward(rng.standard_normal((64, 30)).astype(dtype))
                    feature_major = dtype == "float64" or library != "numpy"
                    assert fastpath.Sweep(tr, 0, len(tr.values) - 1).feature_major == feature_major
                    tr.jacobian_sq_norms()
                    tr.jacobian()
    assert copies == []


def test_rectifier_output_drops_dead_seeds(rng):
    """A ReLU net ends in a ReLU: its live-seed plan keeps fewer than d seeds per sample, and the sweep and the
    Jacobian built from those seeds equal the ones built from all d unit seeds (pulled back one by one)."""
    net = nablax.build("ReLU", depth=4, width=8, in_dim=3, seed=2)
    tr = net.forward(rng.standard_normal((6, 3)))
    dst = len(tr.values) - 1
    d2, units = fastpath.live_seed_plan(tr, dst, 0)
    assert units.shape[1] < 8 and (d2 != 0).sum(axis=1).max() == units.shape[1]
    full = np.stack([tr.pullback(np.tile(np.eye(8)[j], (6, 1))) for j in range(8)], axis=1)  # (B, 8, 3)
    assert rel_err(tr.jacobian(), full) < 1e-13
    assert rel_err(tr.jacobian_sq_norms(), _explicit_sq_norms(tr)) < 1e-12


def test_all_outputs_dead_gives_zero_jacobians():
    """If the final ReLU is off everywhere, every Jacobian below the output is exactly zero."""
    net = nablax.build("ReLU", depth=2, width=4, in_dim=3, seed=0)
    net.layers[-2].b[...] = -1e6  # the last Dense's bias kills every unit
    tr = net.forward(np.ones((5, 3)))
    assert fastpath.live_seed_plan(tr, len(tr.values) - 1, 0)[1].shape[1] == 0
    for fast in (True, False):
        with nablax.settings(fast=fast):
            sq = tr.jacobian_sq_norms()
            assert np.all(sq[-1] == 4) and np.all(sq[:-1] == 0)
            assert np.all(tr.jacobian() == 0) and tr.jacobian().shape == (5, 4, 3)


@pytest.mark.parametrize("mode", ["numpy", "numba"])
def test_batch_level_sweep_with_live_seeds_matches_explicit(mode, rng):
    """batch-ReLU with batch statistics: the batch-level norms from the live seeds only equal the squared norms
    of the explicit batch-level Jacobians."""
    if mode == "numba" and not numba_available():
        pytest.skip("needs numba")
    net = nablax.build("batch-ReLU", depth=2, width=5, in_dim=3, seed=4)
    tr = net.forward(rng.standard_normal((6, 3)))
    assert tr.couples_batch
    want = np.array([(tr.jacobian(p) ** 2).sum() for p in range(len(tr.values))])
    with kernels.use_cpu_kernels(mode):
        got = tr.batch_jacobian_sq_norms(max_elements=30)
    assert rel_err(got, want) < 1e-12


def test_float32_sweep_agrees_with_float64(rng):
    x = rng.standard_normal((5, 4))
    nets = {dt: nablax.build("tanh", depth=3, width=6, in_dim=4, seed=1, dtype=dt) for dt in ("float64", "float32")}
    a = nets["float64"].forward(x).jacobian_sq_norms()
    for fast in (True, False):
        with nablax.settings(fast=fast):
            b = nets["float32"].forward(x.astype(np.float32)).jacobian_sq_norms()
        assert b.dtype == np.float32 and rel_err(a, b) < 1e-5
