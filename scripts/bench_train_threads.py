"""The training step on the paper-scale digits protocol (50 blocks of width 100, batch 64) with the BLAS's default
threads against one BLAS thread, side by side in alternating rounds (medians of 7 rounds of 200 steps).

    python scripts/bench_train_threads.py ARCH BATCH          e.g. batch-ReLU 64; run it beside a busy core too

Evidence for issue 16 part 5's open item (BENCHMARKS.md, "Threads on a shared machine").
"""
import time, sys, numpy, statistics
from threadpoolctl import threadpool_limits
import nablax
from nablax.train import TrainConfig, Trainer
c = TrainConfig(arch=sys.argv[1], data="digits", depth=50, width=100, batch_size=int(sys.argv[2]), epochs=1,
                taylor=False, measure_effective_depth=False)
tr = Trainer(c)
idx = numpy.arange(c.batch_size)
x, y = tr._xy(idx)
def t(n=200):
    s = time.perf_counter()
    for _ in range(n): tr.train_step(x, y)
    return (time.perf_counter() - s) / n * 1e3
for _ in range(2): t(50)
res = {"default": [], "one": []}
for r in range(7):
    for k in (("default", "one") if r % 2 else ("one", "default")):
        if k == "one":
            with threadpool_limits(1, user_api="blas"): res[k].append(t())
        else: res[k].append(t())
md, mo = statistics.median(res["default"]), statistics.median(res["one"])
print(f"{sys.argv[1]} B={c.batch_size}: default {md:.2f} ms, one thread {mo:.2f} ms, default/one {md/mo:.2f}")
