"""Before and after for two choices inside the exact sweeps, each switched in one process, interleaved:

    python scripts/bench_sweep_options.py layout  [--batches 64,256,1000] [--dtypes float64,float32]
    python scripts/bench_sweep_options.py threads [--batches 64,256,1000] [--dtypes float64,float32]
    python scripts/bench_sweep_options.py blocks  [--batches 64,256,1000] [--dtypes float64,float32]

layout   one core, one BLAS thread: the signal C-ordered (``nablax.settings(feature_major="off")``) against
         feature-major ("on": both dtypes here; nablax's default, "auto", is float64 only)
blocks   one core: the whole batch in every probe chunk (``nablax.settings(sample_block_bytes=0)``) against
         blocks of samples whose activation derivatives stay in cache (the default, ``fastpath.sample_blocks``)
threads  all cores this process may use: the sweep on one thread (``nablax.settings(sweep_threads=1)``; until issue 16
         part 5 that left the BLAS its threads inside every product) against chunks side by side with one BLAS thread
         each (the default, ``fastpath.sweep_threads``, when each thread gets ``fastpath.MIN_CHUNKS_PER_THREAD``
         chunks); ``scripts/bench_threads.py`` compares more policies, also with a busy core

Jobs: ``Trace.jacobian_sq_norms()`` and ``Trace.jacobian()`` of 50-layer width-100 tanh and ReLU MLPs (as in
``scripts/bench.py`` job 1 and 2). Prints the median of ``--repeats`` rounds of each and their ratio (after / before).
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("option", choices=["layout", "blocks", "threads"])
    ap.add_argument("--batches", default="64,256,1000")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--archs", default="tanh,ReLU")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.option in ("layout", "blocks") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    import numpy as np
    from threadpoolctl import threadpool_limits

    import nablax

    nablax.tune_allocator()  # as the nablax command does (BENCHMARKS.md, "The C allocator")

    if args.option in ("layout", "blocks"):
        threadpool_limits(1)
    default = nablax.settings()
    names, old, new = {
        "layout": (("C-ordered", "feature-major"), dict(feature_major="off"), dict(feature_major="on")),
        "blocks": (("whole batch", "sample blocks"), dict(sample_block_bytes=0),
                   dict(sample_block_bytes=default.sample_block_bytes)),
        "threads": (("one sweep thread", "chunks side by side"), dict(sweep_threads=1), dict(sweep_threads=0)),
    }[args.option]

    def choose(is_after: bool) -> None:
        nablax.settings(**(new if is_after else old))

    print(f"{args.option}: before = {names[0]}, after = {names[1]}; cores {len(os.sched_getaffinity(0))}\n")
    print("| job | case | dtype | before ms | after ms | after / before |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        for b in (int(v) for v in args.batches.split(",")):
            for arch in args.archs.split(","):
                net = nablax.build(arch, depth=50, width=100, dtype=dtype, seed=0)
                tr = net.forward(np.random.default_rng(0).standard_normal((b, 100)).astype(dtype))
                for job, run in (("sqnorms", tr.jacobian_sq_norms), ("jacobian", tr.jacobian)):
                    times: dict[bool, list[float]] = {False: [], True: []}
                    answers = {}
                    for after in (False, True):  # warm-up: kernel compilation, first touches
                        choose(after)
                        run()
                    for _ in range(args.repeats):
                        for after in (False, True):
                            choose(after)
                            t = time.perf_counter()
                            answers[after] = run()
                            times[after].append(time.perf_counter() - t)
                    choose(True)
                    scale = float(np.abs(answers[False]).max())
                    if float(np.abs(answers[True] - answers[False]).max()) > 1e-5 * scale:
                        raise SystemExit(f"{job} {arch}: the two settings disagree")
                    before, after = (1e3 * float(np.median(times[k])) for k in (False, True))
                    print(f"| {job} | {arch} L=50 w=100 B={b} | {dtype} | {before:.0f} | {after:.0f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
