#!/usr/bin/env python
"""Side-by-side benchmarks: nablax (NumPy, Numba kernels, CuPy) against torch.func and JAX on the same jobs.

    python scripts/bench.py [--quick | --size tiny|quick|full] [--jobs 1,2,...] [--dtypes float64,float32]
                            [--engines nablax-numpy,nablax-numba,nablax-aocl,nablax-cupy,torch,jax] [--repeats N]
                            [--threads N] [--out DIR] [--baseline] [--resume] [--contended [--busy-seconds S]]

Jobs (issue 7), each for float64 and float32:
  1 sqnorms   exact ||J_{out<-p}||_F^2 for every position p, per sample: 50-layer width-100 tanh and ReLU MLPs,
              batch 64, 256, 1000 (nablax: Trace.jacobian_sq_norms; peers: vmap(jacrev) w.r.t. the input and
              one added zero tensor per position)
  2 jacobian  the full per-sample input-output Jacobian of the same nets (vmap(jacrev(f)))
  3 gsc       exact batch-level GSC(p -> out) of a batch-ReLU MLP with batch statistics (nablax: gsc_to(...,
              method="exact"); peers: stacked vjps of every unit seed of the whole batch)
  4 train     one training step (forward, backward, SGD) at batch 128 with 3072-dimensional input, ReLU and
              batch-ReLU MLPs with a 10-way softmax cross-entropy (running statistics are not updated); nablax
              on the BLAS threads that ``Trainer.fit`` uses (the setting ``train_threads``), as in job 6
  5 dfdx      df/dx on the 256-point grid of [-2, 2] for the 50-layer width-200 "resnet-bn" (batch statistics
              held constant, Mode(hold_stats=True)); peers: statistics from a no-grad forward, then vmap(jacrev)
  6 edstep    the paper-scale training step of issue 15: ``Trainer.train_step`` with the default callbacks (update
              sizes and the exact λ-split of effective depth, ``metrics.effective_depth``) on digits at batch 128,
              a 50x100 batch-tanh MLP and a 25-block width-100 batch-ReLU ResNet. nablax only: no peer has the
              λ-split. Its yardstick is ``matmul-floor``, the step's matrix products alone with the same shapes in
              plain NumPy (``EDSTEP_TARGET``: within 1.3x of it); ``--baseline`` adds the plain λ-split
              (``EffectiveDepth(fast=False)``, Numba kernels) as nablax-before

Every engine's float64 answer is compared with nablax-numpy's ("agree" = relative error); float32 answers are
compared with the float64 ones. Timings: one warm-up call (compilation), then ``repeats`` rounds in which the
engines take turns (interleaved, in a new random order each round, since one engine's idle threads spin on for a
while and slow the next), so a change of machine load hits all of them alike; the table gives the median,
the spread (interquartile range) and the ratio to the fastest peer (torch or jax). FLOPs are the dense
matrix-product FLOPs the peers spend (2 m n k per product); GFLOP/s is set beside the measured matrix-multiply
peak of this machine for the job's own matrix shape. The load average is recorded with every case.

``--contended`` times every case twice from one warm-up: on the benchmark's cores as they are, and again while a
busy process (``busy_cores``: a Python loop, pinned to the last of those cores, started by the benchmark and killed
when the case's timing ends; it also stops by itself after ``--busy-seconds`` or when the benchmark dies) takes one
of them, as another user's work or a second Dask worker would. It adds the engine nablax-1thread (Numba kernels,
everything on one thread: a BLAS limit of 1 and ``sweep_threads=1``), so that the table "Threads" sets nablax's
default thread policy beside one thread and beside JAX, quiet and contended.

Output: DIR/BENCHMARKS.md (the generated tables go between the ``bench:begin``/``bench:end`` markers, text
around them is kept) and DIR/BENCHMARKS.json (every sample). Defaults: DIR = the repository root for full runs,
runs/bench-<size> otherwise. ``--resume`` keeps the cases already in DIR/BENCHMARKS.json and runs only the others.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("nablax-numpy", "nablax-numba", "nablax-aocl", "nablax-cupy", "torch", "torch-cuda", "jax")
ONE_THREAD = "nablax-1thread"  # nablax-numba on one thread (--contended adds it; it is not in the default --engines)
# nablax-numpy: NumPy reference kernels; nablax-numba: Numba kernels; nablax-aocl: Numba kernels and AMD's AOCL-BLAS
# for the dense products (kernels.use_blas("aocl"), the .[aocl] extra); all three multiply on the CPU
PEERS = ("torch", "jax")  # the CPU peers; on a GPU, nablax-cupy is set against torch-cuda
GPU_ENGINES = ("nablax-cupy", "torch-cuda")
JOBS = {1: "sqnorms", 2: "jacobian", 3: "gsc", 4: "train", 5: "dfdx", 6: "edstep"}
BASELINE_JOBS = (1, 2, 6)  # the jobs with a nablax-before
FLOOR = "matmul-floor"  # job 6's yardstick: its matrix products alone, plain NumPy
EDSTEP_TARGET = 1.3  # job 6: the step within this factor of its matrix-product floor
SIZES = {
    # depth, width, batches, gsc (depth, batch), train (depth, in_dim, batch), dfdx (depth, width, points),
    # edstep (MLP depth, ResNet blocks, width, batch), repeats
    "full": dict(depth=50, width=100, batches=(64, 256, 1000), gsc=(50, 32), train=(50, 3072, 128),
                 dfdx=(50, 200, 256), edstep=(50, 25, 100, 128), repeats=7),
    "quick": dict(depth=10, width=32, batches=(64,), gsc=(10, 8), train=(10, 3072, 128), dfdx=(10, 64, 256),
                  edstep=(10, 5, 32, 128), repeats=3),
    "tiny": dict(depth=2, width=6, batches=(4,), gsc=(2, 3), train=(2, 12, 5), dfdx=(2, 6, 8), edstep=(2, 1, 6, 5),
                 repeats=1),
}
PEER_CHUNK_ELEMENTS = 1 << 26  # peers keep at most this many Jacobian entries at once (vmap chunk_size)
MARK_BEGIN, MARK_END = "<!-- bench:begin -->", "<!-- bench:end -->"


# --- command line and threads ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick size (under a minute)")
    ap.add_argument("--size", choices=sorted(SIZES), default=None)
    ap.add_argument("--jobs", default="1,2,3,4,5,6")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--engines", default=",".join(ENGINES), help="those not installed or without a device are skipped")
    ap.add_argument("--archs", default="tanh,ReLU", help="MLPs of jobs 1 and 2")
    ap.add_argument("--batches", default=None, help="batch sizes of jobs 1 and 2 (default: the size's)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="threads per engine (default: every core)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--baseline", action="store_true", help="add nablax-before: the sweep as it was before issue 7 "
                    "(jobs 1, 2), the plain λ-split (job 6)")
    ap.add_argument("--resume", action="store_true", help="skip cases already in DIR/BENCHMARKS.json")
    ap.add_argument("--contended", action="store_true", help="time every case also with a busy process on one of "
                    f"the benchmark's cores; adds {ONE_THREAD}")
    ap.add_argument("--busy-seconds", type=float, default=600, help="the busy process stops by itself after this "
                    "long (each case starts a new one)")
    args = ap.parse_args(argv)
    args.size = args.size or ("quick" if args.quick else "full")
    return args


def limit_threads(n: int) -> None:
    """Every engine gets n cores: the process is pinned to n CPUs (which also sizes XLA's thread pool), and the
    thread counts are set (environment for libraries not imported yet, threadpoolctl for the BLAS)."""
    if hasattr(os, "sched_setaffinity") and n < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    # idle OpenMP threads (torch's) must not spin while another engine has its turn
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # ... but LLVM's OpenMP under AOCL-BLAS (nablax-aocl) then sleeps between products, which made a two-thread
    # float32 training step take 18 against 7 ms; spinning for 1 ms keeps a chain of products awake and still
    # gives the core back before the next engine's turn
    os.environ.setdefault("KMP_BLOCKTIME", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # jax is a CPU peer (torch-cuda is the GPU one)
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass


# the busy process of --contended: spins until its time is up or its parent (the benchmark) is gone
BUSY = """import os, sys, time
end, parent = time.monotonic() + float(sys.argv[1]), int(sys.argv[2])
print("spinning", flush=True)
while time.monotonic() < end and os.getppid() == parent:
    sum(range(10000))
"""


@contextlib.contextmanager
def busy_cores(k: int, seconds: float) -> Iterator[list[subprocess.Popen]]:
    """k busy processes, each pinned to one of the last k cores this process may use, spinning for at most
    ``seconds`` and only while this process lives (each checks for its parent every few hundred microseconds); they
    are killed and reaped when the block ends, however it ends."""
    procs: list[subprocess.Popen] = []
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    try:
        for i in range(k):
            procs.append(subprocess.Popen([sys.executable, "-I", "-c", BUSY, str(seconds), str(os.getpid())],
                                          stdout=subprocess.PIPE, text=True))
            if cpus:
                os.sched_setaffinity(procs[-1].pid, {cpus[-1 - i % len(cpus)]})
            procs[-1].stdout.readline()  # it spins
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()


# --- engines ---------------------------------------------------------------------------------------------


def available_engines(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The wanted engines that can run here, and why the others cannot."""
    import nablax

    ok, why = [], {}
    for e in wanted:
        if e not in ENGINES and e not in ("nablax-before", ONE_THREAD):
            raise SystemExit(f"unknown engine {e!r}; choose from {ENGINES}")
        try:
            if e == "nablax-cupy" and not nablax.gpu_available():
                raise ImportError("no CuPy with a CUDA device")
            if e in ("nablax-numba", "nablax-aocl", ONE_THREAD):
                from nablax.backend import numba_available

                if not numba_available():
                    raise ImportError("numba is not installed")
            if e == "nablax-aocl":
                from nablax.kernels import blas

                try:
                    blas.check_blas("aocl")
                except ValueError as err:
                    raise ImportError(str(err)) from None
            if e.startswith("torch"):
                import torch

                if e == "torch-cuda" and not torch.cuda.is_available():
                    raise ImportError("torch finds no CUDA device")
            if e == "jax":
                import jax

                jax.config.update("jax_enable_x64", True)
            ok.append(e)
        except ImportError as err:
            why[e] = str(err)
    return ok, why


def device_name(engine: str) -> str:
    if engine == "torch-cuda":
        import torch

        return "cuda:" + torch.cuda.get_device_name(0)
    if engine == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}:{getattr(d, 'device_kind', '')}"
    if engine == "nablax-cupy":
        import cupy

        return "cuda:" + cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return "cpu"


class Ctx:
    """What one engine needs to run a job: its array conversion, synchronisation, and the network's spec."""

    def __init__(self, engine: str, dtype: str) -> None:
        self.engine, self.dtype = engine, dtype
        if engine.startswith("torch"):
            import torch

            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
            self.dev = torch.device("cuda" if engine == "torch-cuda" else "cpu")
            self.tdtype = getattr(torch, dtype)
        if engine == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)

    def sync(self, out: Any) -> Any:
        if self.engine.startswith("torch"):
            import torch

            if self.dev.type == "cuda":
                torch.cuda.synchronize()
        elif self.engine == "jax":
            import jax

            jax.block_until_ready(out)
        elif self.engine == "nablax-cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        return out

    def array(self, a: Any) -> Any:
        import numpy as np

        a = np.asarray(a, dtype=self.dtype)
        if self.engine.startswith("torch"):
            import torch

            return torch.as_tensor(a, device=self.dev)
        if self.engine == "jax":
            import jax.numpy as jnp

            return jnp.asarray(a)
        if self.engine == "nablax-cupy":
            import cupy

            return cupy.asarray(a)
        return a

    def to_numpy(self, a: Any) -> Any:
        import numpy as np

        if self.engine.startswith("torch"):
            return a.detach().cpu().numpy()
        if self.engine == "nablax-cupy":
            import cupy

            return cupy.asnumpy(a)
        return np.asarray(a)


# --- the nablax networks as plain functions for the peers ----------------------------------------------------


def layer_specs(net: Any, ctx: Ctx) -> list[tuple]:
    """The network as nested tuples of the peer's arrays: ("dense", W, b), ("tanh",), ("relu",), ("bn", eps),
    ("res", beta, branch_specs, skip_spec)."""
    from nablax.layers import BatchNorm, Dense, ReLU, Residual, Tanh

    def spec(layer: Any) -> tuple:
        if isinstance(layer, Dense):
            return ("dense", ctx.array(layer.W), None if layer.b is None else ctx.array(layer.b))
        if isinstance(layer, Tanh):
            return ("tanh",)
        if isinstance(layer, ReLU):
            return ("relu",)
        if isinstance(layer, BatchNorm):
            if layer.gamma is not None:
                raise NotImplementedError("the benchmark's peers run batch norm without affine parameters")
            return ("bn", layer.eps)
        if isinstance(layer, Residual):
            return ("res", layer.beta, [spec(x) for x in layer.branch], None if layer.skip is None else spec(layer.skip))
        raise NotImplementedError(f"no peer translation for {type(layer).__name__}")

    return [spec(layer) for layer in net.layers]


class Ops:
    """The few array operations the peer networks need, for torch or jax.numpy."""

    def __init__(self, engine: str) -> None:
        if engine.startswith("torch"):
            import torch

            self.tanh, self.relu, self.sqrt = torch.tanh, torch.relu, torch.sqrt
            self.mean0 = lambda h: h.mean(dim=0)
            self.stop = lambda a: a.detach()
        else:
            import jax
            import jax.numpy as jnp

            self.tanh, self.relu, self.sqrt = jnp.tanh, jax.nn.relu, jnp.sqrt
            self.mean0 = lambda h: h.mean(axis=0)
            self.stop = jax.lax.stop_gradient


def apply_specs(ops: Ops, specs: list[tuple], h: Any, deltas: Any = None, stats: str = "none",
                held: list | None = None, record: list | None = None, values: list | None = None) -> Any:
    """Run the spec'd layers on h. ``deltas[p-1]`` is added at position p; batch norm uses the batch statistics
    of h (``stats="batch"``, h is (B, d)) or the held ones in ``held`` (``stats="held"``), and appends its
    statistics to ``record``; ``values`` collects the value at every position."""
    held_iter = iter(held or [])

    def run(spec: tuple, h: Any) -> Any:
        kind = spec[0]
        if kind == "dense":
            h = h @ spec[1]
            return h if spec[2] is None else h + spec[2]
        if kind == "tanh":
            return ops.tanh(h)
        if kind == "relu":
            return ops.relu(h)
        if kind == "bn":
            if stats == "held":
                mu, var = next(held_iter)
            else:
                mu = ops.mean0(h)
                var = ops.mean0((h - mu) * (h - mu))
            if record is not None:
                record.append((ops.stop(mu), ops.stop(var)))
            return (h - mu) / ops.sqrt(var + spec[1])
        if kind == "res":
            branch = h
            for s in spec[2]:
                branch = run(s, branch)
            skip = h if spec[3] is None else run(spec[3], h)
            return skip + spec[1] * branch
        raise NotImplementedError(kind)

    if values is not None:
        values.append(h)
    for p, spec in enumerate(specs, start=1):
        h = run(spec, h)
        if deltas is not None:
            h = h + deltas[p - 1]
        if values is not None:
            values.append(h)
    return h


# --- jobs ------------------------------------------------------------------------------------------------
#
# Each job maker returns a list of cases; a case has a name, FLOP counts, and prepare(engine) -> (run, check):
# ``run()`` does the timed work and returns the answer in the engine's arrays; ``check(answer)`` gives it as a
# numpy array in the layout of nablax's answer.


def dense_macs(net: Any) -> int:
    """Multiply-adds per sample of every dense product in the network (residual branches included)."""
    return sum(int(layer.W.size) for layer, _, _ in _leaves(net))


def _leaves(net: Any):
    import numpy as np

    from nablax.layers import Dense

    tr = net.forward(np.zeros((2,) + net.in_shape, dtype=net.dtype), train=False)
    return [(leaf, x, c) for leaf, x, c in tr.leaves() if isinstance(leaf, Dense)]


def make_net(name: str, dtype: str, backend: str = "numpy", **kw: Any) -> Any:
    import nablax

    return nablax.build(name, dtype=dtype, backend=backend, seed=0, **kw)


def peer_chunk(per_item: int) -> int:
    return max(1, PEER_CHUNK_ELEMENTS // max(1, per_item))


def job_sqnorms(size: dict, dtype: str, archs: list[str], batches: list[int], full_jacobian: bool) -> list[dict]:
    import numpy as np

    from nablax import fastpath

    cases = []
    for arch in archs:
        for b in batches:
            depth, width = size["depth"], size["width"]
            rng = np.random.default_rng(1)
            x_np = rng.standard_normal((b, width))
            def prepare(engine: str, arch=arch, b=b, x_np=x_np) -> tuple[Callable, Callable]:
                ctx = Ctx(engine, dtype)
                if engine.startswith("nablax"):
                    net = make_net(arch, dtype, "cupy" if engine == "nablax-cupy" else "numpy", depth=depth, width=width)
                    x = ctx.array(x_np)
                    if engine == "nablax-before":
                        return _before(net, x, full_jacobian), (lambda a: np.asarray(a))
                    if full_jacobian:
                        return (lambda: ctx.sync(net.forward(x).jacobian())), ctx.to_numpy
                    return (lambda: ctx.sync(net.forward(x).jacobian_sq_norms())), ctx.to_numpy
                net = make_net(arch, dtype, depth=depth, width=width)
                return _peer_sweep(engine, ctx, net, ctx.array(x_np), full_jacobian)

            net0 = make_net(arch, dtype, depth=depth, width=width)
            macs = dense_macs(net0)
            d_out = width
            flops = 2 * b * macs * (1 + d_out)  # forward, and one sweep of d_out seeds
            tr0 = net0.forward(x_np.astype(dtype))
            plan = fastpath.live_seed_plan(tr0, len(tr0.values) - 1, 0)
            seeds = d_out if plan is None else plan[1].shape[1]
            cases.append(dict(job=2 if full_jacobian else 1, name=f"{arch} L={depth} w={width} B={b}", dtype=dtype,
                              flops=flops, nablax_flops=2 * b * macs * (1 + seeds),
                              gemm=(d_out * b, width, width), prepare=prepare,
                              note="" if plan is None else f"nablax pulls back {seeds} of {d_out} seeds per sample "
                                                           "(the units the final ReLU lets through, padded)",
                              remake=lambda arch=arch, b=b: job_sqnorms(size, "float64", [arch], [b], full_jacobian)))
    return cases


def _before(net: Any, x: Any, full_jacobian: bool) -> Callable:
    """The sweep as it was before issue 7: one chunk of all seeds through the public pullbacks, norms by (v*v).sum."""
    import numpy as np

    def run() -> Any:
        tr = net.forward(x)
        b, d = tr.output.shape
        seeds = np.broadcast_to(np.eye(d, dtype=x.dtype)[:, None, :], (d, b, d))
        if full_jacobian:
            return tr.pullback(seeds).transpose(1, 0, 2)
        out = np.zeros((len(tr.values), b), dtype=x.dtype)
        for p, v in tr.pullbacks(seeds):
            out[p] += (v * v).reshape(v.shape[0], b, -1).sum(axis=(0, 2))
        return out

    return run


def _peer_sweep(engine: str, ctx: Ctx, net: Any, x: Any, full_jacobian: bool) -> tuple[Callable, Callable]:
    """vmap(jacrev) per sample: of f(x) (full Jacobian), or of f(x, deltas) with one zero tensor per position."""
    ops = Ops(engine)
    specs = layer_specs(net, ctx)
    b, d0 = x.shape
    widths = [s[-1] for s in net.shapes[1:]]
    d_out = widths[-1]
    n_pos = len(widths) + 1
    chunk = peer_chunk(d_out * sum([d0] + widths))

    def f(xs, ds=None):
        return apply_specs(ops, specs, xs, ds)

    if engine.startswith("torch"):
        import torch
        from torch.func import jacrev, vmap

        if full_jacobian:
            fn = vmap(jacrev(f), chunk_size=min(b, chunk))
            return (lambda: ctx.sync(fn(x))), ctx.to_numpy

        def norms(xs, ds):
            jx, jds = jacrev(f, argnums=(0, 1))(xs, ds)
            return torch.stack([(jx * jx).sum()] + [(j * j).sum() for j in jds])

        fn = vmap(norms, chunk_size=min(b, chunk))
        deltas = tuple(torch.zeros((b, w), dtype=ctx.tdtype, device=ctx.dev) for w in widths)
        return (lambda: ctx.sync(fn(x, deltas).T)), ctx.to_numpy

    import jax
    import jax.numpy as jnp

    if full_jacobian:
        fn = jax.jit(lambda xs: jax.lax.map(jax.jacrev(f), xs, batch_size=min(b, chunk)))
        return (lambda: ctx.sync(fn(x))), ctx.to_numpy

    def norms(a):
        jx, jds = jax.jacrev(f, argnums=(0, 1))(*a)
        return jnp.stack([(jx * jx).sum()] + [(j * j).sum() for j in jds])

    fn = jax.jit(lambda xs, ds: jax.lax.map(norms, (xs, ds), batch_size=min(b, chunk)).T)
    deltas = tuple(jnp.zeros((b, w), dtype=x.dtype) for w in widths)
    assert n_pos == len(deltas) + 1
    return (lambda: ctx.sync(fn(x, deltas))), ctx.to_numpy


def job_gsc(size: dict, dtype: str) -> list[dict]:
    import numpy as np

    depth, b = size["gsc"]
    width = size["width"]
    x_np = np.random.default_rng(2).standard_normal((b, width))

    def prepare(engine: str) -> tuple[Callable, Callable]:
        ctx = Ctx(engine, dtype)
        from nablax.metrics.gsc import gsc_to

        if engine.startswith("nablax"):
            net = make_net("batch-ReLU", dtype, "cupy" if engine == "nablax-cupy" else "numpy", depth=depth, width=width)
            x = ctx.array(x_np)
            return (lambda: gsc_to(net.forward(x), method="exact").value), np.asarray
        net = make_net("batch-ReLU", dtype, depth=depth, width=width)
        return _peer_gsc(engine, ctx, net, ctx.array(x_np))

    net0 = make_net("batch-ReLU", dtype, depth=depth, width=width)
    macs = dense_macs(net0)
    flops = 2 * b * macs * (1 + b * width)
    live = int((net0.forward(x_np.astype(dtype)).output > 0).sum())
    return [dict(job=3, name=f"batch-ReLU L={depth} w={width} B={b}", dtype=dtype, flops=flops,
                 nablax_flops=2 * b * macs * (1 + live), gemm=(b * width * b, width, width), prepare=prepare,
                 remake=lambda: job_gsc(size, "float64"),
                 note=f"nablax pulls back {live} of {b * width} unit seeds (those the final ReLU lets through); "
                      "batch-norm pullback by a fused kernel")]


def _peer_gsc(engine: str, ctx: Ctx, net: Any, x: Any) -> tuple[Callable, Callable]:
    """Exact batch-level GSC by stacked vjps: every unit seed of the whole (B, d) output pulled back to every position."""
    ops = Ops(engine)
    specs = layer_specs(net, ctx)
    b, d0 = x.shape
    widths = [s[-1] for s in net.shapes[1:]]
    n_seeds = b * widths[-1]
    chunk = max(1, min(n_seeds, peer_chunk(b * sum([d0] + widths))))
    dims = [d0] + widths

    def f(xs, ds):
        return apply_specs(ops, specs, xs, ds, stats="batch")

    def gsc_from(norms, values):
        fsq = [(v * v).sum() for v in values]
        return [ops.sqrt(n * fsq[p] / (b * dims[p] * fsq[-1])) for p, n in enumerate(norms)]

    if engine.startswith("torch"):
        import torch
        from torch.func import vjp, vmap

        eye = torch.eye(n_seeds, dtype=ctx.tdtype, device=ctx.dev).reshape(n_seeds, b, widths[-1])
        deltas = tuple(torch.zeros((b, w), dtype=ctx.tdtype, device=ctx.dev) for w in widths)

        def run():
            values: list = []
            with torch.no_grad():
                apply_specs(ops, specs, x, None, stats="batch", values=values)
            _, pull = vjp(f, x, deltas)

            def norms(s):
                gx, gds = pull(s)
                return torch.stack([(gx * gx).sum()] + [(g * g).sum() for g in gds])

            total = vmap(norms, chunk_size=chunk)(eye).sum(dim=0)
            return ctx.sync(torch.stack(gsc_from(list(total), values)))

        return run, ctx.to_numpy

    import jax
    import jax.numpy as jnp

    deltas = tuple(jnp.zeros((b, w), dtype=x.dtype) for w in widths)

    @jax.jit
    def run_jit(xs, ds):
        values: list = []
        apply_specs(ops, specs, xs, None, stats="batch", values=values)
        _, pull = jax.vjp(f, xs, ds)

        def norms(s):
            gx, gds = pull(s)
            return jnp.stack([(gx * gx).sum()] + [(g * g).sum() for g in gds])

        eye = jnp.eye(n_seeds, dtype=xs.dtype).reshape(n_seeds, b, widths[-1])
        total = jax.lax.map(norms, eye, batch_size=chunk).sum(axis=0)
        return jnp.stack(gsc_from(list(total), values))

    return (lambda: ctx.sync(run_jit(x, deltas))), ctx.to_numpy


def job_train(size: dict, dtype: str) -> list[dict]:
    import numpy as np

    depth, in_dim, b = size["train"]
    width, n_cls, lr = size["width"], 10, 0.01
    rng = np.random.default_rng(3)
    x_np = rng.standard_normal((b, in_dim))
    y_np = rng.integers(0, n_cls, size=b)
    cases = []
    for arch in ("ReLU", "batch-ReLU"):
        def prepare(engine: str, arch=arch) -> tuple[Callable, Callable]:
            ctx = Ctx(engine, dtype)
            net = make_net(arch, dtype, "cupy" if engine == "nablax-cupy" else "numpy", depth=depth, width=width,
                           in_dim=in_dim, out_dim=n_cls)
            names = list(net.named_params())
            p0 = np.concatenate([net.backend.asnumpy(v).ravel() for v in net.named_params().values()])
            if engine.startswith("nablax"):
                import nablax
                from nablax.fastpath import blas_threads
                from nablax.losses import SoftmaxCrossEntropy
                from nablax.optim import SGD

                loss, opt = SoftmaxCrossEntropy(), SGD(lr)
                x, y = ctx.array(x_np), net.backend.xp.asarray(y_np)

                def run():
                    with blas_threads(nablax.settings().train_threads):  # as Trainer.fit runs its steps
                        tr = net.forward(x, train=True)
                        _, grads = tr.backward(loss.grad(tr.output, y), input_grad=False)
                        opt.step(net.named_params(), grads)
                        return ctx.sync(net.named_params())

                return run, lambda ps: np.concatenate([ctx.to_numpy(ps[k]).ravel() for k in names]) - p0
            run, conv = _peer_train(engine, ctx, net, ctx.array(x_np), y_np, lr, names)
            return run, lambda ps: conv(ps) - p0

        net0 = make_net(arch, dtype, depth=depth, width=width, in_dim=in_dim, out_dim=n_cls)
        flops = 3 * 2 * b * dense_macs(net0)  # forward, input cotangents, weight gradients
        cases.append(dict(job=4, name=f"{arch} L={depth} w={width} in={in_dim} B={b}", dtype=dtype, flops=flops,
                          gemm=None, prepare=prepare, remake=lambda: job_train(size, "float64"),
                          note="answer: the parameter update of the first step"))
    return cases


def _peer_train(engine: str, ctx: Ctx, net: Any, x: Any, y_np: Any, lr: float, names: list[str]) -> tuple[Callable, Callable]:
    """Forward, backward and an SGD update with the engine's own autodiff (torch.autograd; jax.grad under jit)."""
    import numpy as np

    ops = Ops(engine)
    params = [ctx.array(v) for v in net.named_params().values()]

    def unflatten(ps):  # rebuild the spec from the flat parameter list, in named_params order
        it = iter(ps)

        def sub(spec):
            if spec[0] == "dense":
                w = next(it)
                return ("dense", w, None if spec[2] is None else next(it))
            if spec[0] == "res":
                return ("res", spec[1], [sub(s) for s in spec[2]], None if spec[3] is None else sub(spec[3]))
            return spec

        return [sub(s) for s in layer_specs(net, ctx)]

    if engine.startswith("torch"):
        import torch

        for p in params:
            p.requires_grad_(True)
        y = torch.as_tensor(y_np, device=ctx.dev)

        def run():
            out = apply_specs(ops, unflatten(params), x, stats="batch")
            loss = torch.nn.functional.cross_entropy(out, y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
            return ctx.sync(params)

        return run, lambda ps: np.concatenate([ctx.to_numpy(p).ravel() for p in ps])

    import jax
    import jax.numpy as jnp

    y = jnp.asarray(y_np)

    def loss_fn(ps, xs):
        out = apply_specs(ops, unflatten(ps), xs, stats="batch")
        logp = jax.nn.log_softmax(out, axis=-1)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    @jax.jit
    def step(ps, xs):
        grads = jax.grad(loss_fn)(ps, xs)
        return [p - lr * g for p, g in zip(ps, grads)]

    state = {"params": params}

    def run():
        state["params"] = ctx.sync(step(state["params"], x))
        return state["params"]

    return run, lambda ps: np.concatenate([np.asarray(p).ravel() for p in ps])


def job_dfdx(size: dict, dtype: str) -> list[dict]:
    import numpy as np

    depth, width, n = size["dfdx"]
    grid = np.linspace(-2.0, 2.0, n)[:, None]

    def prepare(engine: str) -> tuple[Callable, Callable]:
        ctx = Ctx(engine, dtype)
        net = make_net("resnet-bn", dtype, "cupy" if engine == "nablax-cupy" else "numpy", depth=depth, width=width)
        x = ctx.array(grid)
        if engine.startswith("nablax"):
            xp = net.backend.xp

            def run():
                tr = net.forward(x, hold_stats=True)
                return ctx.sync(tr.pullback(xp.ones_like(tr.output))[:, 0])

            return run, ctx.to_numpy
        return _peer_dfdx(engine, ctx, net, x)

    net0 = make_net("resnet-bn", dtype, depth=depth, width=width)
    flops = 2 * 2 * n * dense_macs(net0)
    return [dict(job=5, name=f"resnet-bn L={depth} w={width} grid={n}", dtype=dtype, flops=flops, gemm=None,
                 prepare=prepare, remake=lambda: job_dfdx(size, "float64"))]


def _peer_dfdx(engine: str, ctx: Ctx, net: Any, x: Any) -> tuple[Callable, Callable]:
    ops = Ops(engine)
    specs = layer_specs(net, ctx)

    def stats_of(xs):
        rec: list = []
        apply_specs(ops, specs, xs, stats="batch", record=rec)
        return rec

    def f(xi, held):  # one grid point, statistics held
        return apply_specs(ops, specs, xi, stats="held", held=held)[0]

    if engine.startswith("torch"):
        import torch
        from torch.func import jacrev, vmap

        def run():
            with torch.no_grad():
                held = stats_of(x)
            return ctx.sync(vmap(jacrev(f), in_dims=(0, None))(x, held)[:, 0])

        return run, ctx.to_numpy

    import jax

    @jax.jit
    def run_jit(xs):
        held = stats_of(xs)
        return jax.vmap(jax.jacrev(f), in_axes=(0, None))(xs, held)[:, 0]

    return (lambda: ctx.sync(run_jit(x))), ctx.to_numpy


def edstep_shapes(trainer: Any) -> list[tuple[int, int, int, bool]]:
    """(n, d_in, d_out, bottom) for every Dense layer of the trainer's net: n the number of λ-components of the
    cotangent at its output (from the plain split of one batch), bottom True for the first layer of the net."""
    from nablax.layers import Dense
    from nablax.metrics.effective_depth import lambda_split
    from nablax.layers.base import iter_leaves

    net = trainer.net
    x, y = trainer._xy(range(trainer.batch_size))
    tr = net.forward(x, train=True)
    parts = lambda_split(tr, trainer.loss.grad(tr.output, y), trainer.params0, fast=False).parts
    return [(int(parts[pre + "W"].shape[0]), *layer.W.shape, layer is net.layers[0])
            for pre, layer, _, _ in iter_leaves(net.layers) if isinstance(layer, Dense)]


def edstep_flops(shapes: list[tuple[int, int, int, bool]], b: int) -> tuple[int, int]:
    """Matrix-product FLOPs of one step, (ordinary step, λ-split), 2 B d_in d_out per product and Dense layer:

        ordinary step  x W (forward), x^T dy (weight gradient), dy W^T (pullback; not below the bottom layer)
        λ-split        A^T G[λ] for the n λ-components G of the layer's output cotangent (its weight's λ-parts),
                       G W(0)^T and G R^T for the n λ (the cotangent below it; not below the bottom layer)

    With n = 1, 2, ..., D from the top down, the split costs about 3 B d^2 D^2 / 2, against 3 B d^2 D for the
    ordinary step: 27 times as much at D = 51."""
    unit = [(2 * b * d_in * d_out, n, not bottom) for n, d_in, d_out, bottom in shapes]
    return sum(u * (2 + below) for u, _, below in unit), sum(u * n * (1 + 2 * below) for u, n, below in unit)


def edstep_floor(shapes: list[tuple[int, int, int, bool]], b: int, dtype: str) -> Callable:
    """The step's matrix products alone, with the same shapes, in plain NumPy (random operands): one 2-D product
    over all (λ, batch) rows for each pullback, the batched x^T @ G for the weight parts."""
    import numpy as np

    rng = np.random.default_rng(4)
    ops = [(rng.standard_normal((n, b, d_out)).astype(dtype), rng.standard_normal((b, d_in)).astype(dtype),
            rng.standard_normal((d_in, d_out)).astype(dtype), rng.standard_normal((d_in, d_out)).astype(dtype),
            bottom) for n, d_in, d_out, bottom in shapes]

    def run() -> None:
        for G, A, W0, R, bottom in ops:
            A @ W0
            A.T @ G[0]
            A.T @ G
            if not bottom:
                G[0] @ W0.T
                rows = G.reshape(-1, G.shape[-1])
                rows @ W0.T
                rows @ R.T

    return run


def job_edstep(size: dict, dtype: str) -> list[dict]:
    import numpy as np

    depth, blocks, width, b = size["edstep"]
    cases = []
    for arch, d in (("batch-tanh", depth), ("batch-ReLU (ResNet)", blocks)):
        def trainer(engine: str, arch=arch, d=d) -> Any:
            from nablax.metrics.effective_depth import EffectiveDepth
            from nablax.train import TrainConfig, Trainer

            config = TrainConfig(arch=arch, data="digits", depth=d, width=width, batch_size=b, epochs=1, lr=0.01,
                                 dtype=dtype, backend="cupy" if engine == "nablax-cupy" else "numpy")
            t = Trainer(config, progress=False)
            for cb in t.callbacks:
                if isinstance(cb, EffectiveDepth):
                    cb.fast = engine != "nablax-before"
            for cb in t.callbacks:
                cb.start(t)
            return t

        def prepare(engine: str, trainer=trainer) -> tuple[Callable, Callable]:
            import nablax
            from nablax.fastpath import blas_threads

            if engine == FLOOR:
                return edstep_floor(edstep_shapes(trainer("nablax-numpy")), b, dtype), (lambda _: None)
            ctx = Ctx(engine, dtype)
            t = trainer(engine)
            ed = t.callbacks[-1]
            x, y = t._xy(np.arange(b))

            def run():  # the answer: the λ-contributions C[λ] this step adds
                before = ed.C.copy()
                with blas_threads(nablax.settings().train_threads):  # as Trainer.fit runs its steps
                    t.train_step(x, y)
                ctx.sync(None)
                return ed.C - before

            return run, np.asarray

        shapes = edstep_shapes(trainer("nablax-numpy"))
        ordinary, split = edstep_flops(shapes, b)
        n_max = max(n for n, *_ in shapes)
        cases.append(dict(job=6, name=f"{arch} L={d} w={width} B={b}", dtype=dtype, flops=ordinary + split,
                          split_flops=split, gemm=(n_max * b, width, width), prepare=prepare, nablax_only=True,
                          remake=lambda: job_edstep(size, "float64"),
                          note=f"D = {n_max}: {ordinary / 1e9:.3g} GFLOP ordinary step + {split / 1e9:.3g} "
                               "GFLOP λ-split"))
    return cases


# --- measuring -------------------------------------------------------------------------------------------


def gemm_peak(dtype: str, shape: tuple[int, int, int] | None, repeats: int = 5) -> dict:
    """Best GFLOP/s of a (rows, k) @ (k, n) product over row blocks of 256..16384 rows, with `rows` total,
    and of a square 1024 product (the machine's matmul peak for comparison)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def rate(m: int, k: int, n: int) -> float:
        a = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((k, n)).astype(dtype)
        a @ w
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ w
            ts.append(time.perf_counter() - t)
        return 2 * m * k * n / min(ts) / 1e9

    out = {"square1024": _square_peak(dtype, rate)}
    if shape is not None:
        rows, k, n = shape
        out["shape"] = [rows, k, n]
        out["blocks"] = {m: rate(m, k, n) for m in (256, 1024, 4096, 16384) if m <= max(rows, 256)}
        out["best"] = max(out["blocks"].values())
    return out


_SQUARE: dict = {}


def _square_peak(dtype: str, rate: Callable) -> float:
    if dtype not in _SQUARE:
        _SQUARE[dtype] = rate(1024, 1024, 1024)
    return _SQUARE[dtype]


def time_case(case: dict, engines: list[str], repeats: int, log: Callable[[str], None], busy: tuple[int, ...] = (0,),
              busy_seconds: float = 600) -> list[dict]:
    """Prepare every engine, warm up, check answers, then time the engines in turns: once for each number of busy
    cores in ``busy`` (``busy_cores``). One result per entry of ``busy``."""
    import numpy as np

    runs, answers, errors, prep_s = {}, {}, {}, {}
    for e in engines:
        t = time.perf_counter()
        try:
            run, conv = case["prepare"](e)
            answer = conv(run())  # the warm-up call (compiles); None: a yardstick without an answer (the floor)
            if answer is not None:
                answers[e] = np.array(answer, dtype=float)
            runs[e] = run
            prep_s[e] = time.perf_counter() - t
        except Exception as err:  # an engine that cannot do this job is reported, not fatal
            errors[e] = f"{type(err).__name__}: {err}"
            log(f"    {e}: failed ({errors[e][:200]})")
    ref = answers.get("nablax-numpy", next(iter(answers.values()), None))
    agree = {}
    for e, a in answers.items():
        if ref is None or a.shape != ref.shape:
            agree[e] = None if ref is None else f"shape {a.shape} vs {ref.shape}"
            continue
        agree[e] = float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300))
    results = []
    for k in busy:
        with busy_cores(k, busy_seconds) as procs:
            timed = _time_runs(runs, repeats)
            if any(proc.poll() is not None for proc in procs):
                log(f"    the busy process stopped before the timing ended (--busy-seconds {busy_seconds})")
                timed["busy_ended_early"] = True
        results.append(dict(timed, agree=agree, errors=errors, answers=answers, prep_s=prep_s, busy=k,
                            busy_pids=[proc.pid for proc in procs]))
    return results


def _time_runs(runs: dict[str, Callable], repeats: int) -> dict:
    """``repeats`` rounds in which the engines take turns, in a new (seeded) random order each round; wall and CPU
    time, load, and nablax's peak traced memory."""
    samples: dict[str, list[float]] = {e: [] for e in runs}
    cpu: dict[str, list[float]] = {e: [] for e in runs}  # the process's CPU time: less sensitive to other load
    load = [os.getloadavg()[0]]
    gc.collect()
    gc.disable()  # as timeit does: no collector pauses inside a timed call
    order, shuffle = list(runs), random.Random(0).shuffle
    try:
        for _ in range(repeats):
            shuffle(order)  # a new order each round: thread pools spin on after a call and slow what follows
            for e in order:
                c, t = time.process_time(), time.perf_counter()
                runs[e]()
                samples[e].append(time.perf_counter() - t)
                cpu[e].append(time.process_time() - c)
    finally:
        gc.enable()
    load.append(os.getloadavg()[0])
    mem = {}
    for e in runs:
        if e.startswith("nablax") and e != "nablax-cupy":
            tracemalloc.start()
            runs[e]()
            mem[e] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return dict(samples=samples, cpu_samples=cpu, load=load, peak_mib=mem)


def summarize(case: dict, res: dict, peaks: dict) -> list[dict]:
    import numpy as np

    rows = []
    med = {e: float(np.median(s)) for e, s in res["samples"].items()}
    cpu_peers = [m for e, m in med.items() if e in PEERS or e == FLOOR]  # job 6: its floor is the peer
    fastest = {False: min(cpu_peers) if cpu_peers else None, True: med.get("torch-cuda")}
    peak = peaks.get("best") or peaks.get("square1024")
    for e, s in res["samples"].items():
        q1, q3 = np.percentile(s, [25, 75])
        gf = case["flops"] / med[e] / 1e9
        ref = fastest[e in GPU_ENGINES]
        on_cpu = e not in GPU_ENGINES
        rows.append(dict(engine=e, median_s=med[e], iqr_s=float(q3 - q1), min_s=float(min(s)), n=len(s),
                         cpu_median_s=float(np.median(res["cpu_samples"][e])),
                         ratio_to_fastest_peer=None if ref is None else med[e] / ref,
                         gflops=gf, pct_peak=100 * gf / peak if peak and on_cpu else None, agree=res["agree"].get(e),
                         peak_mib=res["peak_mib"].get(e), device=device_name(e)))
    return rows


# --- output ----------------------------------------------------------------------------------------------


def machine() -> dict:
    import numpy as np

    info = dict(python=platform.python_version(), platform=platform.platform(), cpus=os.cpu_count(), numpy=np.__version__)
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    for mod in ("numba", "torch", "jax", "cupy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    from threadpoolctl import threadpool_info

    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if blas:  # the library under NumPy's products, and the kernels it chose for this CPU
        info["blas"] = f"{blas[0].get('internal_api')} {blas[0].get('version')} ({blas[0].get('architecture', '?')})"
    try:  # AOCL-BLAS for nablax-aocl: the aoclda wheel's version
        from importlib.metadata import version

        info["aocl"] = f"aoclda {version('aoclda')}"
    except Exception:
        pass
    return info


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.3g}" if s < 10 else f"{s * 1e3:.0f}"


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} cores; threads per engine: {data['threads']}; "
        f"numpy {m.get('numpy')}, numba {m.get('numba', '-')}, torch {m.get('torch', '-')}, jax {m.get('jax', '-')}"
        f", cupy {m.get('cupy', '-')}; NumPy's BLAS {m.get('blas', '?')}; AOCL-BLAS {m.get('aocl', '-')}. Size: {data['size']}. Written {data['written']}.",
        "",
        f"Command: `{data['command']}`",
        "",
    ]
    if data.get("skipped_engines"):
        lines += ["Engines not run here: " + "; ".join(f"{k} ({v})" for k, v in data["skipped_engines"].items()), ""]
    lines += ["Matrix-multiply peak (GFLOP/s, best row block of the job's (rows, k) @ (k, n) shape; square 1024):", ""]
    for key, p in sorted(data["peaks"].items()):
        blocks = ", ".join(f"{r}: {g:.0f}" for r, g in p.get("blocks", {}).items())
        lines.append(f"- {key}: square {p['square1024']:.0f}" + (f"; shape {p['shape']} by row block {blocks}" if blocks else ""))
    lines += ["", "| job | case | dtype | engine | median ms | IQR ms | x fastest peer | GFLOP/s | % peak | agree | nablax peak MiB | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in data["cases"]:
        for r in c["rows"]:
            ratio = "-" if r["ratio_to_fastest_peer"] is None else f"{r['ratio_to_fastest_peer']:.2f}"
            pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.0f}"
            agree = r["agree"] if isinstance(r["agree"], str) else ("-" if r["agree"] is None else f"{r['agree']:.1e}")
            mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(f"| {c['job']} {JOBS[c['job']]} | {c['name']} | {c['dtype']} | {r['engine']} | {fmt_ms(r['median_s'])} | "
                         f"{fmt_ms(r['iqr_s'])} | {ratio} | {r['gflops']:.1f} | {pct} | {agree} | {mem} | "
                         f"{c['load'][0]:.1f}-{c['load'][1]:.1f} |")
        for e, err in c.get("errors", {}).items():
            lines.append(f"| {c['job']} {JOBS[c['job']]} | {c['name']} | {c['dtype']} | {e} | failed: {err[:80]} | | | | | | | |")
    before = [c for c in data["cases"] if any(r["engine"] == "nablax-before" for r in c["rows"])]
    if before:
        lines += ["", "nablax before and after (medians, ms): `nablax-before` is, in jobs 1-2, the sweep as it was (one chunk "
                  "of all seeds through the public pullbacks, norms by `(v * v).sum`), in job 6 the plain λ-split "
                  "(`EffectiveDepth(fast=False)`, Numba kernels); `numpy` and `numba` are the current code with "
                  "the NumPy reference kernels or the Numba kernels.", "",
                  "| job | case | dtype | before | numpy | numba | before / numba |", "|---|---|---|---|---|---|---|"]
        for c in before:
            m = {r["engine"]: r["median_s"] for r in c["rows"]}
            if {"nablax-before", "nablax-numpy", "nablax-numba"} <= set(m):
                lines.append(f"| {c['job']} {JOBS[c['job']]} | {c['name']} | {c['dtype']} | {fmt_ms(m['nablax-before'])} | "
                             f"{fmt_ms(m['nablax-numpy'])} | {fmt_ms(m['nablax-numba'])} | "
                             f"{m['nablax-before'] / m['nablax-numba']:.2f} |")
    lines += edstep_summary(data["cases"])
    lines += threads_summary(data["cases"])
    notes = [f"- job {c['job']} {c['name']} {c['dtype']}: {c['note']} ({100 * c['nablax_flops'] / c['flops']:.0f}% "
             "of the dense FLOPs)" for c in data["cases"] if c.get("note") and not c.get("busy") and c.get("nablax_flops", c["flops"]) < c["flops"]]
    if notes:
        lines += ["", "Structure used by nablax (GFLOP/s and % peak count the dense FLOPs, so they can exceed the peak):", ""]
        lines += notes
    lines += ["", "FLOPs: dense matrix-product FLOPs of the job as the peers do it (nablax may do fewer, see notes); "
              "agree: relative error against nablax-numpy (float32 rows: against the float64 answer); "
              "x fastest peer: median over the faster of torch and jax's median on the CPU (GPU engines: over "
              "torch-cuda's; below 1: faster); % peak: of the CPU matrix-multiply peak above; "
              "load: 1-minute load average before and after the case."]
    return "\n".join(lines)


def edstep_summary(cases: list[dict]) -> list[str]:
    """Job 6 against its matrix-product floor and the target ``EDSTEP_TARGET`` (markdown lines)."""
    rows = []
    for c in (c for c in cases if c["job"] == 6):
        floor = next((r for r in c["rows"] if r["engine"] == FLOOR), None)
        for r in c["rows"]:
            if r["engine"] == FLOOR or floor is None:
                continue
            ratio = r["median_s"] / floor["median_s"]
            cpu = r["cpu_median_s"] / floor["cpu_median_s"]
            rows.append(f"| {c['name']} | {c['dtype']} | {r['engine']} | {fmt_ms(r['median_s'])} | "
                        f"{fmt_ms(floor['median_s'])} | {ratio:.2f} | {cpu:.2f} | {'yes' if ratio <= EDSTEP_TARGET else 'no'} "
                        f"| {r['gflops']:.1f} | {c.get('note', '')} | {c['load'][0]:.1f}-{c['load'][1]:.1f} |")
    if not rows:
        return []
    return ["", f"Job 6, the training step with the exact λ-split of effective depth, against `{FLOOR}` (the step's matrix "
            "products alone with the same shapes in plain NumPy; its x fastest peer above). Target: within "
            f"{EDSTEP_TARGET}x of the floor (median wall time). CPU x floor: the same ratio of the process's CPU time, "
            "which another process's load moves less (with one thread).", "",
            "| case | dtype | engine | median ms | floor ms | x floor | CPU x floor | target met | GFLOP/s | FLOPs | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|", *rows]


def threads_summary(cases: list[dict]) -> list[str]:
    """nablax's default threads against one thread and against JAX, quiet and with busy cores (--contended)."""
    rows = []
    for c in cases:
        m = {r["engine"]: r["median_s"] for r in c["rows"]}
        nablax = next((e for e in ("nablax-numba", "nablax-numpy", "nablax-aocl") if e in m), None)
        if ONE_THREAD not in m or nablax is None:
            continue
        jax = m.get("jax")
        ratio = (lambda a, b: "-" if a is None or b is None else f"{a / b:.2f}")
        rows.append(f"| {c['job']} {JOBS[c['job']]} | {c['name'].split(', ')[0]} | {c['dtype']} | {c.get('busy', 0)} | "
                    f"{nablax} | {fmt_ms(m[nablax])} | {fmt_ms(m[ONE_THREAD])} | {'-' if jax is None else fmt_ms(jax)} | "
                    f"{ratio(m[nablax], m[ONE_THREAD])} | {ratio(m[nablax], jax)} | {ratio(m[ONE_THREAD], jax)} | "
                    f"{c['load'][0]:.1f}-{c['load'][1]:.1f} |")
    if not rows:
        return []
    return ["", f"Threads: nablax's default thread policy against `{ONE_THREAD}` (everything on one thread) and against "
            "JAX (its default threads), medians; busy: cores taken by the benchmark's own busy process (`--contended`).", "",
            "| job | case | dtype | busy | nablax | default ms | one thread ms | jax ms | default / one thread | "
            "default / jax | one thread / jax | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows]


def write_outputs(out: Path, data: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "BENCHMARKS.json"
    js.write_text(json.dumps(data, indent=1, default=float))
    md = out / "BENCHMARKS.md"
    table = markdown(data)
    block = f"{MARK_BEGIN}\n{table}\n{MARK_END}"
    if md.exists() and MARK_BEGIN in md.read_text():
        text = md.read_text()
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1] if MARK_END in rest else ""
        md.write_text(head + block + tail)
    else:
        md.write_text(f"# Benchmarks\n\nGenerated by `scripts/bench.py`.\n\n{block}\n")
    return md, js


# --- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    size = SIZES[args.size]
    threads = args.threads or len(getattr(os, "sched_getaffinity", lambda _: range(os.cpu_count() or 1))(0))
    limit_threads(threads)
    sys.path.insert(0, str(ROOT))
    import numpy as np  # noqa: F401

    from nablax import kernels
    from nablax.backend import tune_allocator

    tune_allocator()  # as the nablax command and the figure scripts do (the training steps: BENCHMARKS.md, allocator)
    wanted = [e for e in args.engines.split(",") if e]
    if args.baseline and "nablax-before" not in wanted:
        wanted.insert(1, "nablax-before")
    if args.contended and ONE_THREAD not in wanted:
        wanted.insert(next((i + 1 for i, e in enumerate(wanted) if e.startswith("nablax")), 0), ONE_THREAD)
    engines, skipped = available_engines(wanted)
    jobs = [int(j) for j in args.jobs.split(",")]
    if not set(jobs) <= set(JOBS):
        raise SystemExit(f"unknown job in {args.jobs!r}; the jobs are {JOBS}")
    dtypes = args.dtypes.split(",")
    archs = args.archs.split(",")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(size["batches"])
    repeats = args.repeats or size["repeats"]
    out = Path(args.out) if args.out else (ROOT if args.size == "full" else ROOT / "runs" / f"bench-{args.size}")
    previous, old = {}, {}
    if args.resume and (out / "BENCHMARKS.json").exists():
        old = json.loads((out / "BENCHMARKS.json").read_text())
        previous = {(c["job"], c["name"], c["dtype"]): c for c in old.get("cases", [])}
    data = dict(machine=machine(), threads=threads, size=args.size, contended=args.contended, command="python scripts/bench.py " + " ".join(argv or sys.argv[1:]),
                skipped_engines=skipped, engines=engines, peaks=dict(old.get("peaks", {})),
                cases=list(previous.values()), written=time.strftime("%Y-%m-%d %H:%M"))

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"engines: {', '.join(engines)}" + (f"; skipped: {skipped}" if skipped else "") + f"; threads {threads}")
    t_start = time.perf_counter()
    for dtype in dtypes:
        cases: list[dict] = []
        for j in jobs:
            if j in (1, 2):
                cases += job_sqnorms(size, dtype, archs, batches, full_jacobian=(j == 2))
            elif j == 3:
                cases += job_gsc(size, dtype)
            elif j == 4:
                cases += job_train(size, dtype)
            elif j == 5:
                cases += job_dfdx(size, dtype)
            elif j == 6:
                cases += job_edstep(size, dtype)
        for case in cases:
            busy = (0, 1) if args.contended else (0,)
            if all((case["job"], case_name(case["name"], k), case["dtype"]) in previous for k in busy):
                continue
            peak_key = f"{dtype} {case['gemm']}" if case["gemm"] else f"{dtype} square"
            if peak_key not in data["peaks"]:
                data["peaks"][peak_key] = gemm_peak(dtype, case["gemm"])
            log(f"job {case['job']} {JOBS[case['job']]}: {case['name']} {dtype}  (load {os.getloadavg()[0]:.1f})")
            case_engines = [e for e in engines if (e != "nablax-before" or case["job"] in BASELINE_JOBS)
                            and (e.startswith("nablax") or not case.get("nablax_only"))]
            if case["job"] == 6:
                case_engines.append(FLOOR)
            with kernels.use_cpu_kernels("auto"):
                results = _time_with_kernels(case, case_engines, repeats, log, busy, args.busy_seconds)
            if dtype == "float32":  # agreement against the float64 answer of nablax
                ref64 = _float64_reference(case, size)
                for e, a in results[0]["answers"].items():
                    results[0]["agree"][e] = float(np.linalg.norm(a - ref64) / max(np.linalg.norm(ref64), 1e-300)) \
                        if a.shape == ref64.shape else f"shape {a.shape}"
            for res in results:
                rows = summarize(case, res, data["peaks"][peak_key])
                if args.contended:
                    log(f"  {res['busy']} core busy (load {res['load'][0]:.1f}-{res['load'][1]:.1f})")
                for r in rows:
                    log(f"    {r['engine']:14s} {fmt_ms(r['median_s']):>8s} ms  (IQR {fmt_ms(r['iqr_s'])})  "
                        f"x{(r['ratio_to_fastest_peer'] or float('nan')):.2f} peer  {r['gflops']:.1f} GFLOP/s  agree {r['agree']}")
                data["cases"].append(dict(job=case["job"], name=case_name(case["name"], res["busy"]), dtype=dtype,
                                          flops=case["flops"], split_flops=case.get("split_flops"),
                                          gemm=case["gemm"], peak_key=peak_key, rows=rows, errors=res["errors"],
                                          load=res["load"], prep_s=res["prep_s"], busy=res["busy"],
                                          busy_pids=res["busy_pids"], busy_ended_early=res.get("busy_ended_early", False),
                                          samples_s=res["samples"], note=case.get("note", ""),
                                          nablax_flops=case.get("nablax_flops", case["flops"])))
            data["cases"].sort(key=lambda c: (c["job"], c["dtype"] != "float64", c["name"]))
            md, js = write_outputs(out, data)  # results are written as they come
    md, js = write_outputs(out, data)
    log(f"wrote {md} and {js} ({time.perf_counter() - t_start:.0f} s)")
    return data


def case_name(name: str, busy: int) -> str:
    return f"{name}, {busy} core busy" if busy else name


def _time_with_kernels(case: dict, engines: list[str], repeats: int, log: Callable, busy: tuple[int, ...] = (0,),
                       busy_seconds: float = 600) -> list[dict]:
    """Time the case with nablax-numpy forced to the NumPy reference kernels, nablax-numba to Numba, nablax-aocl
    to Numba with AOCL-BLAS, and nablax-1thread to Numba on one thread (a BLAS limit of 1, ``sweep_threads=1``)."""
    from threadpoolctl import ThreadpoolController

    import nablax
    from nablax import kernels

    prepare = case["prepare"]

    def wrapped(engine: str):
        run, conv = prepare(engine)
        before = "numba" if case["job"] == 6 else "numpy"  # job 6's before differs in the λ-split only
        mode = {"nablax-numpy": "numpy", "nablax-numba": "numba", "nablax-aocl": "numba", "nablax-before": before,
                ONE_THREAD: "numba"}.get(engine)
        if mode is None:
            return run, conv
        library = "aocl" if engine == "nablax-aocl" else "numpy"
        pools = ThreadpoolController() if engine == ONE_THREAD else None  # (after prepare: its libraries are loaded)

        def run_with():
            with contextlib.ExitStack() as stack:
                stack.enter_context(kernels.use_cpu_kernels(mode))
                stack.enter_context(kernels.use_blas(library))
                if pools is not None:  # one thread: the BLAS (and any OpenMP pool) and the sweeps
                    stack.enter_context(pools.limit(limits=1))
                    stack.enter_context(nablax.settings(sweep_threads=1))
                return run()

        return run_with, conv

    return time_case({**case, "prepare": wrapped}, engines, repeats, log, busy, busy_seconds)


def _float64_reference(case: dict, size: dict) -> Any:
    """nablax-numpy's float64 answer for the float32 case (the same net and inputs, in float64)."""
    import numpy as np

    twin = next(c for c in case["remake"]() if c["name"] == case["name"])
    run, conv = twin["prepare"]("nablax-numpy")
    return np.array(conv(run()), dtype=float)



if __name__ == "__main__":
    main()
