"""The training step of BENCHMARKS.md job 4, before and after a change, in one process, alternating step by step:

    python scripts/bench_train_step.py kernels  [--blas aocl] [--dtypes float64,float32] [--steps 100]
    python scripts/bench_train_step.py blas --old-blas OLD.py  [--blas aocl] ...
    python scripts/bench_train_step.py overhead [--blas aocl] ...

kernels   the rectifier and the optimiser's update through their NumPy formulas (``layers.activations.relu``,
          ``Optimizer.step``: ``kernels.relu`` and ``kernels.subtract_scaled`` replaced by a kernel that takes
          nothing) against their Numba kernels
blas      the dense products through another version of ``nablax/kernels/blas.py`` (e.g. the one before a change
          of its copy rule: ``git show COMMIT:nablax/kernels/blas.py > OLD.py``) against the current one
overhead  the same step for a net of width 4 and input 4 (little but Python and dispatch; the Numba kernels forced,
          as the width-100 arrays take them) beside width 100; "share" is their ratio

One core (the process's affinity) and one BLAS thread. The step is that of job 4: forward, backward without the
input cotangent, and SGD, for 50-layer width-100 ReLU and batch-ReLU MLPs at batch 128 with a 3072-dimensional
input. Prints the median step time of each side and their ratio (after / before).
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("option", choices=["kernels", "blas", "overhead"])
    ap.add_argument("--blas", default="numpy", help='"numpy", "aocl" or a library path (nablax.kernels.set_blas)')
    ap.add_argument("--old-blas", help="for `blas`: the file of the other blas module")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--archs", default="ReLU,batch-ReLU")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    if args.option == "blas" and not args.old_blas:
        ap.error("blas needs --old-blas FILE")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["BLIS_NUM_THREADS"] = "1"  # before AOCL-BLAS loads

    import numpy as np
    from threadpoolctl import threadpool_limits

    import nablax
    from nablax import kernels
    from nablax.layers import linear
    from nablax.losses import SoftmaxCrossEntropy
    from nablax.optim import SGD

    nablax.tune_allocator()  # as the nablax command does (BENCHMARKS.md, "The C allocator")

    threadpool_limits(1)
    kernels.set_blas(args.blas)
    old_blas = _load_module(args.old_blas) if args.option == "blas" else None
    if old_blas is not None:
        old_blas.set_blas(args.blas)
    before_after = {  # what each side sets: (kernels.relu, kernels.subtract_scaled, linear.matmul)
        "kernels": ((_no_kernel, _no_kernel, linear.matmul),
                    (kernels.relu, kernels.subtract_scaled, linear.matmul)),
        "blas": ((kernels.relu, kernels.subtract_scaled, old_blas and old_blas.matmul),
                 (kernels.relu, kernels.subtract_scaled, linear.matmul)),
    }
    rng = np.random.default_rng(3)
    x_all, labels = rng.standard_normal((128, 3072)), rng.integers(0, 10, 128)
    print(f"{args.option}: blas {kernels.blas_library()}, one core; median ms over {args.steps} steps each\n")
    print("| case | dtype | before ms | after ms | after / before |" if args.option != "overhead"
          else "| case | dtype | width 4 ms | width 100 ms | share |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        for arch in args.archs.split(","):
            widths = (4, 100) if args.option == "overhead" else (100, 100)
            steps = [_step(nablax.build(arch, dtype=dtype, seed=0, depth=50, width=w, in_dim=w if w < 100 else 3072,
                                        out_dim=10), x_all[:, : w if w < 100 else 3072].astype(dtype), labels,
                           SoftmaxCrossEntropy(), SGD(1e-6), kernels="numba" if w < 100 else None) for w in widths]
            sides = before_after.get(args.option, (None, None))
            times: list[list[float]] = [[], []]
            order = [(i, j) for i in range(2) for j in range(args.steps + 3)]  # overhead: each net on its own
            if args.option != "overhead":  # before and after alternate, step by step
                order = [(i, j) for j in range(args.steps + 3) for i in range(2)]
            for i, _ in order:
                if sides[i] is not None:
                    kernels.relu, kernels.subtract_scaled, linear.matmul = sides[i]
                t0 = time.perf_counter()
                steps[i]()
                times[i].append(time.perf_counter() - t0)
            kernels.relu, kernels.subtract_scaled, linear.matmul = before_after["kernels"][1]
            a, b = (1e3 * float(np.median(t[3:])) for t in times)
            print(f"| {arch} L=50 in=3072 B=128 | {dtype} | {a:.2f} | {b:.2f} | {a / b if args.option == 'overhead' else b / a:.3f} |")


def _no_kernel(*args):
    """A kernel that takes no arrays: its caller computes the NumPy formula."""
    return None


def _step(net, x, labels, loss, opt, kernels=None):
    """One training step; ``kernels`` forces a kernel setting (the width-4 net takes the Numba kernels that the
    width-100 net's arrays take under "auto", so that both run the same calls)."""
    from nablax.kernels import cpu_kernels, use_cpu_kernels

    def run():
        with use_cpu_kernels(kernels or cpu_kernels()):
            tr = net.forward(x, train=True)
            _, grads = tr.backward(loss.grad(tr.output, labels), input_grad=False)
            opt.step(net.named_params(), grads)

    return run


def _load_module(path: str):
    """Another version of nablax.kernels.blas, loaded beside the current one."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("nablax.kernels._blas_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
