"""What an epoch's end costs beside its steps: ``Trainer.train_epoch`` against ``Trainer._end_epoch`` (the whole-
training-set evaluation, the GSC on the evaluation subset, the residual operator norms), on digits:

    python scripts/bench_epoch.py [--arch batch-tanh] [--depth 50] [--width 100] [--batch 128] [--rounds 5]

Two runs side by side, with the effective depth callback (the figures' runs) and without it (the step-size search),
in turns: each round trains one epoch of each run and then measures its epoch's end. Prints the medians and the
share of the epoch's end in the whole epoch, and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="batch-tanh")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    import numpy as np

    from nablax.train import TrainConfig, Trainer

    runs = {}
    for ed in (True, False):
        config = TrainConfig(arch=args.arch, data="digits", depth=args.depth, width=args.width, batch_size=args.batch,
                             epochs=args.rounds, lr=0.01, measure_effective_depth=ed)
        runs["with effective depth" if ed else "without"] = t = Trainer(config, progress=False)
        t._start()
    times = {(name, part): [] for name in runs for part in ("steps", "end")}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, t in runs.items():
            start = time.perf_counter()
            t.train_epoch()
            middle = time.perf_counter()
            t._end_epoch(t.opt.lr)
            times[name, "steps"].append(middle - start)
            times[name, "end"].append(time.perf_counter() - middle)
    n_steps = len(next(iter(runs.values()))._batches())
    print(f"{args.arch} depth {args.depth} width {args.width}, batch {args.batch} ({n_steps} steps an epoch), "
          f"{args.rounds} rounds, load {load:.1f}-{os.getloadavg()[0]:.1f}")
    print("| run | epoch's steps ms | epoch's end ms | end / (steps + end) |")
    print("|---|---|---|---|")
    for name in runs:
        steps, end = np.median(times[name, "steps"]), np.median(times[name, "end"])
        print(f"| {name} | {steps * 1e3:.0f} | {end * 1e3:.0f} | {end / (steps + end):.2f} |")


if __name__ == "__main__":
    main()
