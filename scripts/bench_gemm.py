"""The matrix product under every exact sweep, alone: OpenBLAS (through NumPy) and AOCL-BLAS in both signal layouts
against XLA.

    python scripts/bench_gemm.py [--rows 1280] [--layers 50] [--repeats 9]

A sweep chunk of an L-layer width-100 MLP is a chain of L products (rows, 100) @ (100, 100) with a different
weight each (rows = probes x samples in the chunk). This times that chain on one core, median of ``repeats``:

  numpy C      the signal C-ordered (features contiguous), as before nablax 2026-11-23
  numpy fm     the signal feature-major (rows contiguous), as nablax's float64 MLP sweeps run it now
  aocl C, fm   the same through AMD's AOCL-BLAS (``nablax.kernels.use_blas("aocl")``, when the aoclda wheel is
               installed), as nablax runs the products with ``NABLAX_BLAS=aocl``
  jax          the same chain jitted by JAX on the CPU (when JAX is installed)

It says how much of the gap between nablax and JAX on the tanh sweeps (BENCHMARKS.md) is the matrix product
itself, before any elementwise work.
"""

from __future__ import annotations

import argparse
import os

from timing import median_seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1280)
    ap.add_argument("--layers", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

    os.environ["BLIS_NUM_THREADS"] = "1"  # before AOCL-BLAS loads
    import numpy as np
    from threadpoolctl import threadpool_limits

    from nablax import kernels

    threadpool_limits(1)
    try:
        kernels.check_blas("aocl")
        libraries = ["numpy", "aocl"]
    except ValueError:
        libraries = ["numpy"]
    rng = np.random.default_rng(0)
    flops = 2 * args.layers * args.rows * 100 * 100

    def rate(run) -> float:
        return flops / median_seconds(run, args.repeats) / 1e9

    print(f"one core; chain of {args.layers} products ({args.rows}, 100) @ (100, 100), distinct weights; GFLOP/s\n")
    columns = [f"{lib} {order}" for lib in libraries for order in ("C", "fm")] + ["jax"]
    print("| dtype | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for dtype in ("float64", "float32"):
        weights = [(rng.standard_normal((100, 100)) / 10).astype(dtype) for _ in range(args.layers)]
        start = rng.standard_normal((args.rows, 100)).astype(dtype)
        rates = []
        for library in libraries:
            for order in ("C", "F"):
                bufs = [np.empty((args.rows, 100), dtype=dtype, order=order) for _ in range(2)]
                a0 = np.asarray(start, order=order)

                def chain(a0=a0, bufs=bufs) -> None:
                    a = a0
                    for i, w in enumerate(weights):
                        a = kernels.blas.matmul(a, w.T, out=bufs[i % 2])

                with kernels.use_blas(library):
                    rates.append(f"{rate(chain):.1f}")
        try:
            import jax
            import jax.numpy as jnp

            jax.config.update("jax_enable_x64", True)
            ws = jnp.asarray(np.stack(weights))

            @jax.jit
            def jchain(a):
                for i in range(args.layers):
                    a = a @ ws[i].T
                return a

            a = jnp.asarray(start)
            rates.append(f"{rate(lambda: jchain(a).block_until_ready()):.1f}")
        except ImportError:
            rates.append("-")
        print(f"| {dtype} | " + " | ".join(rates) + " |")


if __name__ == "__main__":
    main()
