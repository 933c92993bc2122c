"""Peak memory of exact batch-level Jacobian work at batch 1000: chunking keeps it far below the matrix's size.

    python scripts/bench_memory.py [--batch 1000] [--width 10] [--depth 3] [--keep DIR]

For a batch-ReLU MLP with batch statistics (batch norm couples the samples, so the Jacobian is one
(B d) x (B d) matrix), it runs, each under ``tracemalloc`` (which sees every NumPy allocation):

  norms     ``Trace.batch_jacobian_sq_norms()``: ||J_batch(out <- p)||_F^2 at every position, one sweep
  blocks    ``Trace.jacobian_blocks()``: the whole Jacobian streamed block by block, reduced to its squared norm
  memmap    ``Trace.jacobian(out=numpy.lib.format.open_memmap(...))``: the whole Jacobian written to a .npy file

and prints, for each, the peak of the traced heap (the forward trace is made before, so it is not counted), the
time, and the size the full matrix would take. The memmap's pages belong to the file, not to the heap: the
operating system writes them out and drops them under memory pressure. Checks that the three agree.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--width", type=int, default=10)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--keep", help="write the memmap here (default: a temporary folder, deleted afterwards)")
    args = ap.parse_args(argv)

    import numpy as np

    import nablax

    net = nablax.build("batch-ReLU", depth=args.depth, width=args.width, in_dim=args.width, seed=0)
    tr = net.forward(np.random.default_rng(0).standard_normal((args.batch, args.width)))
    n = args.batch * args.width
    full_mib = n * n * 8 / 2**20
    next(tr.jacobian_blocks())  # imports and kernel compilation happen outside the measurements

    def measured(f):
        tracemalloc.start()
        t = time.perf_counter()
        value = f()
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        return value, peak, seconds

    rows = []
    norms, peak, s = measured(lambda: tr.batch_jacobian_sq_norms()[0])
    rows.append(("norms", peak, s))
    blocks, peak, s = measured(lambda: sum(float((blk ** 2).sum()) for _, blk in tr.jacobian_blocks()))
    rows.append(("blocks", peak, s))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or tmp) / "jacobian.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(args.batch, args.width) * 2)
        _, peak, s = measured(lambda: tr.jacobian(out=out))
        rows.append(("memmap", peak, s))
        out.flush()
        written = sum(float((out[b] ** 2).sum()) for b in range(args.batch))
        del out
    for name, value in (("blocks", blocks), ("memmap", written)):
        if abs(value - norms) > 1e-10 * abs(norms):
            raise SystemExit(f"{name}: squared norm {value!r} differs from the sweep's {norms!r}")

    print(f"batch-ReLU depth {args.depth} width {args.width}, batch {args.batch}: the batch Jacobian is "
          f"{n} x {n}, {full_mib:.0f} MiB in float64; squared norm {norms:.6g} (all three agree)\n")
    print("| work | peak traced heap MiB | share of the full matrix | seconds |")
    print("|---|---|---|---|")
    for name, peak, s in rows:
        print(f"| {name} | {peak:.1f} | {peak / full_mib:.2%} | {s:.1f} |")


if __name__ == "__main__":
    main()
