"""The first run of `nablax train` in a new process, with and without Numba's on-disk cache of compiled kernels:

    python scripts/bench_first_run.py [--repeats 3] [--epochs 1]

Each round runs README's training command with ``--epochs 1`` (``nablax train --arch batch-tanh --data digits``:
50 blocks of width 100, digits, batch 256) as three processes, one after another:

    cold    an empty NUMBA_CACHE_DIR: every kernel compiles (what each process paid without ``cache=True``, and what
            the first process on a machine pays with it)
    warm    the cache that the cold process wrote: the kernels load from disk (every later process)
    numpy   NABLAX_KERNELS=numpy: no Numba kernel at all (nothing to compile)

and prints, per kind, the medians of: the whole process (``wall``), the start up to the end of the epoch-0
measurements (``start``: imports, data, the network, the first kernels), and epoch 1 (its training steps and its
measurements, timed inside the process by wrapping ``Trainer.train_epoch`` and ``Trainer._end_epoch``). One BLAS
thread; the kernels' cache folder is a temporary one, so nothing of the user's is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from nablax import cli, train
marks = {}
step, end = train.Trainer.train_epoch, train.Trainer._end_epoch
def train_epoch(self):
    marks.setdefault(f"begin{self.epoch + 1}", time.perf_counter())
    return step(self)
def end_epoch(self, lr):
    out = end(self, lr)
    marks[f"end{self.epoch}"] = time.perf_counter()
    return out
train.Trainer.train_epoch, train.Trainer._end_epoch = train_epoch, end_epoch
rc = cli.main(sys.argv[1:])
print(json.dumps({"start": marks["end0"] - t0, "epoch1": marks["end1"] - marks["begin1"]}), file=sys.stderr)
sys.exit(rc)
"""


def one(kind: str, cache: str, out: str, epochs: int) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if kind == "numpy":
        env["NABLAX_KERNELS"] = "numpy"
    cmd = [sys.executable, "-c", CHILD, "train", "--arch", "batch-tanh", "--data", "digits", "--epochs", str(epochs),
           "--out", out]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{kind}: `nablax train` failed:\n{res.stderr[-3000:]}")
    return {"wall": wall, **json.loads(res.stderr.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args(argv)
    times: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "numpy": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            cache = f"{tmp}/numba{r}"
            for kind in times:
                times[kind].append(one(kind, cache if kind != "numpy" else f"{tmp}/unused", f"{tmp}/{kind}{r}",
                                       args.epochs))
                print(f"round {r + 1} {kind:5}: " + "  ".join(f"{k} {v:.2f} s" for k, v in times[kind][-1].items()),
                      flush=True)
    print(f"medians of {args.repeats} (load average {os.getloadavg()[0]:.2f} at the end):")
    for kind, rows in times.items():
        print(f"  {kind:5}  " + "  ".join(f"{k} {statistics.median(r[k] for r in rows):6.2f} s" for k in rows[0]))


if __name__ == "__main__":
    main()
