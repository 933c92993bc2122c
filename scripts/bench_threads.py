#!/usr/bin/env python
"""Thread policies of the exact sweeps side by side, quiet and with a busy core (issue 16 part 5):

    python scripts/bench_threads.py [--batches 64,256,1000] [--dtypes float64,float32] [--archs tanh,ReLU]
                                    [--jobs sqnorms,jacobian] [--policies one,old,min1,min2,min4] [--busy 0,1]
                                    [--repeats 7] [--depth 50] [--width 100]

Policies, switched in one process and timed in turns (interleaved; each round in a new random order, since OpenBLAS's
threads spin on for a while after a product and slow whatever runs next), on every core this process may use:
  one          everything on one thread: a BLAS limit of 1 and ``sweep_threads=1``
  old          the policy before part 5: chunks side by side on the BLAS's threads, one BLAS thread each, when each
               thread gets 4 chunks; otherwise serially with the BLAS's own threads inside every product
               (``run_chunks`` then dealt the chunks in fixed groups; here the workers take the next chunk)
  minN         the current policy (``fastpath.run_chunks``: one BLAS thread always, workers side by side when each
               gets ``MIN_CHUNKS_PER_THREAD`` chunks) with MIN_CHUNKS_PER_THREAD = N
  blas         serially with the BLAS's own threads inside every product (the old policy's fallback, always)

Busy: how many of those cores a busy process takes (``bench.busy_cores``, started and killed for each case).
Timed: ``net.forward(x, train=False)`` and the sweep (``jacobian_sq_norms()`` or ``jacobian()``), as bench.py's jobs 1
and 2. Prints the median ms of each policy and its ratio to ``one``, and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


def policy(name: str, pools: Any) -> Callable[[], contextlib.ExitStack]:
    """A context that puts the policy ``name`` in effect (and takes it back)."""
    import nablax
    from nablax import fastpath

    current = fastpath.run_chunks

    def serial_with_blas_threads(work: Callable, chunks: list[slice], threads: int, new_state: Callable | None = None):
        if name == "old" and min(threads, len(chunks) // 4) > 1:
            return current(work, chunks, threads, new_state)
        total = None
        for rows in chunks:  # as run_chunks does serially: each chunk's own state, added up in order
            state = None if new_state is None else new_state()
            work(rows, state)
            total = state if total is None else total + state
        return total

    def enter() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if name == "one":
            stack.enter_context(pools.limit(limits=1, user_api="blas"))
            stack.enter_context(nablax.settings(sweep_threads=1))
        stack.enter_context(_patched(fastpath, "MIN_CHUNKS_PER_THREAD", int(name[3:]) if name.startswith("min") else 4))
        if name in ("old", "blas"):
            stack.enter_context(_patched(fastpath, "run_chunks", serial_with_blas_threads))
        return stack

    return enter


@contextlib.contextmanager
def _patched(module: Any, attr: str, value: Any):
    old = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, old)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="64,256,1000")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--archs", default="tanh,ReLU")
    ap.add_argument("--jobs", default="sqnorms")
    ap.add_argument("--policies", default="one,old,min1,min2,min4")
    ap.add_argument("--busy", default="0,1")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--width", type=int, default=100)
    args = ap.parse_args(argv)

    import numpy as np
    from threadpoolctl import ThreadpoolController

    import nablax
    from bench import busy_cores

    nablax.tune_allocator()  # as the nablax command and bench.py do
    names = args.policies.split(",")
    pools = ThreadpoolController()
    policies = {n: policy(n, pools) for n in names}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} cores; medians of {args.repeats} rounds in turns, ms (x one: over the policy one)\n")
    print("| job | case | dtype | busy | " + " | ".join(names) + " | " + " | ".join(f"{n} x one" for n in names if n != "one")
          + " | load |")
    print("|---" * (5 + 2 * len(names) - ("one" in names)) + "|")
    for job in args.jobs.split(","):
        for dtype in args.dtypes.split(","):
            for arch in args.archs.split(","):
                for b in (int(v) for v in args.batches.split(",")):
                    net = nablax.build(arch, depth=args.depth, width=args.width, dtype=dtype, seed=0)
                    x = np.random.default_rng(1).standard_normal((b, args.width)).astype(dtype)

                    def run() -> Any:
                        tr = net.forward(x, train=False)
                        return tr.jacobian_sq_norms() if job == "sqnorms" else tr.jacobian()

                    answers, rng = {}, np.random.default_rng(0)
                    for n in names:  # warm-up (kernel compilation) and the answers
                        with policies[n]():
                            answers[n] = run()
                    ref = answers[names[0]]
                    if any(float(np.abs(a - ref).max()) > 1e-5 * float(np.abs(ref).max()) for a in answers.values()):
                        raise SystemExit(f"{job} {arch} B={b} {dtype}: the policies disagree")
                    for k in (int(v) for v in args.busy.split(",")):
                        times: dict[str, list[float]] = {n: [] for n in names}
                        with busy_cores(k, 600):
                            load = os.getloadavg()[0]
                            for _ in range(args.repeats):  # each round in another order: BLAS threads spin
                                for n in rng.permutation(names):  # on after a product, and slow what follows
                                    with policies[n]():
                                        t = time.perf_counter()
                                        run()
                                        times[n].append(time.perf_counter() - t)
                            load1 = os.getloadavg()[0]
                        med = {n: float(np.median(v)) for n, v in times.items()}
                        ratios = [f"{med[n] / med['one']:.2f}" for n in names if n != "one"] if "one" in med else []
                        print(f"| {job} | {arch} L={args.depth} w={args.width} B={b} | {dtype} | {k} | "
                              + " | ".join(f"{med[n] * 1e3:.3g}" for n in names) + " | " + " | ".join(ratios)
                              + f" | {load:.1f}-{load1:.1f} |", flush=True)


if __name__ == "__main__":
    main()
