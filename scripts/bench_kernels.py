"""The fused Numba kernels alone, against their NumPy references, at the shapes the jobs of BENCHMARKS.md give them.

    python scripts/bench_kernels.py [--repeats 400]

One core. For each kernel and shape: the median time of the NumPy reference (the sweep's
``nablax.kernels.cpu.*_reference``; the formulas of batch norm, the rectifier and the optimiser's update, from
their own modules), of the Numba kernel (``*_numba``), their ratio, and the time of copying the kernel's input once
(``numpy.copyto``), a floor for any kernel that reads and writes it. Sweep kernels run in place, as the sweep runs
them; the chunk shapes (k probes, B samples, n entries) are those of the width-100 sweeps (about 1 MiB of signal
per chunk); the training-step kernels (batch norm's forward pass, the rectifier, the optimiser's update) get the
training step's.
"""

from __future__ import annotations

import argparse
import os

from timing import median_seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=400)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    import numpy as np
    from threadpoolctl import threadpool_limits

    from nablax.kernels import cpu
    from nablax.layers.activations import relu
    from nablax.layers.norm import standardize, standardize_vjp

    threadpool_limits(1)
    rng = np.random.default_rng(0)

    def median_us(run) -> float:
        return median_seconds(run, args.repeats) * 1e6

    def feature_major(a):  # the same logical array, last axis first in memory (``cpu.layout`` "F")
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 0)), 0, -1)

    print("| kernel | dtype | shape | NumPy us | Numba us | Numba / NumPy | copy us |")
    print("|---|---|---|---|---|---|---|")
    for dtype, chunks in (("float64", [(20, 64, 100), (5, 256, 100)]), ("float32", [(40, 64, 100), (10, 256, 100)])):
        for shape in chunks:
            v = rng.standard_normal(shape).astype(dtype)
            d = rng.choice([-1.0, 1.0], shape[1:]).astype(dtype)  # in-place scaling, repeated, keeps v's size
            y = rng.standard_normal(shape[1:]).astype(dtype)
            sigma = rng.uniform(0.5, 2.0, (1, shape[2])).astype(dtype)
            cases = [("scale_sq_norms", v, lambda v=v, d=d: cpu.scale_sq_norms_reference(v, d, out=v),
                      lambda v=v, d=d: cpu.scale_sq_norms_numba(v, d, out=v))]
            if dtype == "float64":  # float64 MLP sweeps run feature-major
                vf, df = feature_major(v), feature_major(d)
                cases.append(("scale_sq_norms, feature-major", vf, lambda: cpu.scale_sq_norms_reference(vf, df, out=vf),
                              lambda: cpu.scale_sq_norms_numba(vf, df, out=vf)))
                cases.append(("scale, feature-major", vf, lambda: cpu.scale_reference(vf, df),
                              lambda: cpu.scale_numba(vf, df)))
            cases.append(("batch_standardize_vjp", v,
                          lambda v=v, y=y, s=sigma: standardize_vjp(v, y, s, (-2,)),
                          lambda v=v, y=y, s=sigma: cpu.batch_standardize_vjp_numba(v, y, s)))
            for name, a, ref, fast in cases:
                report(name, dtype, a, ref, fast, median_us)
        z = rng.standard_normal((128, 100)).astype(dtype) * 3 + 1  # a training batch of pre-activations
        report("batch_standardize", dtype, z, lambda: standardize(z, (-2,), 1e-5),
               lambda: cpu.batch_standardize_numba(z, 1e-5), median_us)
        report("relu", dtype, z, lambda: relu(z), lambda: cpu.relu_numba(z), median_us)
        for shape in ((100, 100), (3072, 100)):  # the training step's weights (lr tiny: p barely moves)
            p, u = (rng.standard_normal(shape).astype(dtype) for _ in range(2))

            def update(p=p, u=u):  # Optimizer.step's formula
                p -= p.dtype.type(1e-12) * u

            report("subtract_scaled", dtype, p, update,
                   lambda p=p, u=u: cpu.subtract_scaled_numba(p, u, 1e-12), median_us)


def report(name, dtype, a, ref, fast, median_us) -> None:
    import numpy as np

    target = np.empty_like(a)
    t_ref, t_fast, t_copy = median_us(ref), median_us(fast), median_us(lambda: np.copyto(target, a))
    print(f"| {name} | {dtype} | {a.shape} | {t_ref:.1f} | {t_fast:.1f} | {t_fast / t_ref:.2f} | {t_copy:.1f} |")


if __name__ == "__main__":
    main()
