"""Two checkouts of nablax side by side: processes of each alternate (ABBA), each timing the same hot paths
(medians of 7 sweeps, 15 training steps); the table gives medians over the processes, their ratio and the minima.
By default every process is pinned to one core with one BLAS thread; ``--all-cores`` leaves threads and cores as
they are and adds norm sweeps of larger batches.

    git archive OLD nablax | tar -x -C /tmp/before && git archive HEAD nablax | tar -x -C /tmp/after
    python scripts/bench_versions.py /tmp/before /tmp/after --rounds 6 [--all-cores] [--out FILE.json]

Used for issue 16's before and after (BENCHMARKS.md). Only public API is called, so any two versions compare.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def job(large_batches: bool = False) -> dict[str, float]:
    """The hot paths in whatever checkout PYTHONPATH names, in ms."""
    import numpy as np

    from nablax.architectures import build
    from nablax.losses import SoftmaxCrossEntropy
    from nablax.optim import SGD
    from timing import median_seconds

    out, rng = {}, np.random.default_rng(0)
    for dtype in ("float64", "float32"):
        for arch in ("tanh", "ReLU"):
            net = build(arch, depth=50, width=100, in_dim=100, out_dim=100, dtype=dtype, seed=1)
            tr = net.forward(rng.standard_normal((64, 100)).astype(dtype))
            out[f"norms {arch} {dtype}"] = median_seconds(tr.jacobian_sq_norms, 7) * 1e3
            out[f"jacobian {arch} {dtype}"] = median_seconds(tr.jacobian, 7) * 1e3
            for b in (256, 1000) if large_batches else ():
                tr = net.forward(rng.standard_normal((b, 100)).astype(dtype))
                out[f"norms {arch} {dtype} B={b}"] = median_seconds(tr.jacobian_sq_norms, 5) * 1e3
        net = build("batch-ReLU", depth=50, width=100, in_dim=3072, out_dim=10, dtype=dtype, seed=1)
        x, y = rng.standard_normal((128, 3072)).astype(dtype), rng.integers(0, 10, 128)
        loss, opt = SoftmaxCrossEntropy(), SGD(0.01)

        def step():
            t = net.forward(x, train=True)
            _, grads = t.backward(loss.grad(t.output, y), input_grad=False)
            opt.step(net.named_params(), grads)

        out[f"train step batch-ReLU {dtype}"] = median_seconds(step, 15) * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--all-cores", action="store_true", help="no pinning, the BLAS's and the sweeps' own threads")
    ap.add_argument("--out", help="write every process's medians here (JSON)")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([getattr(args, name), here])}
            if not args.all_cores:
                env.update(OPENBLAS_NUM_THREADS="1", NABLAX_SWEEP_THREADS="1")
            code = f"import json, bench_versions; print(json.dumps(bench_versions.job({args.all_cores})))"
            pin = [] if args.all_cores else ["taskset", "-c", "0"]
            res = subprocess.run(pin + [sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 check=True, cwd="/")
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: load {os.getloadavg()[0]:.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(runs, f, indent=1)
    print("| job | before ms | after ms | after / before | minima before | minima after |\n|---|---|---|---|---|---|")
    for k in runs["before"][0]:
        b, a = ([r[k] for r in runs[v]] for v in ("before", "after"))
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"| {k} | {mb:.1f} | {ma:.1f} | {ma / mb:.2f} | {min(b):.1f} | {min(a):.1f} |")


if __name__ == "__main__":
    main()
