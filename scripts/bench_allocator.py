"""The C allocator's effect on a training step, in a plain nablax process (no JAX or torch loaded).

    python scripts/bench_allocator.py            # runs itself twice: tuned (as the nablax command) and NABLAX_MALLOC_TUNING=0

Prints the median forward-pass and training-step times (one core, one BLAS thread) for a 50-layer width-100 ReLU
MLP with a 3072-dim input at batch 128. See ``nablax.backend.tune_allocator``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from timing import median_seconds


def measure(repeats: int = 21) -> tuple[float, float]:
    import numpy as np
    from threadpoolctl import threadpool_limits

    import nablax
    from nablax.losses import SoftmaxCrossEntropy
    from nablax.optim import SGD

    nablax.tune_allocator()  # as the nablax command and the figure scripts do (no-op under NABLAX_MALLOC_TUNING=0)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    net = nablax.build("ReLU", depth=50, width=100, in_dim=3072, out_dim=10, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((128, 3072)), rng.integers(0, 10, 128)
    loss, opt = SoftmaxCrossEntropy(), SGD(0.01)

    def step() -> None:
        tr = net.forward(x)
        _, grads = tr.backward(loss.grad(tr.output, y))
        opt.step(net.named_params(), grads)

    def median_ms(f) -> float:
        return 1e3 * median_seconds(f, repeats)

    with threadpool_limits(1):
        return median_ms(lambda: net.forward(x)), median_ms(step)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        fwd, step = measure()
        print(f"{fwd:.2f} {step:.2f}")
        sys.exit(0)
    rows = {}
    for label, tuning in (("tuned", "1"), ("glibc defaults", "0")):
        env = {**os.environ, "NABLAX_MALLOC_TUNING": tuning}
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
        rows[label] = tuple(map(float, out.stdout.split()))
    base = rows["glibc defaults"]
    for label, (fwd, step) in rows.items():
        print(f"{label:16s} forward {fwd:6.2f} ms   training step {step:6.2f} ms   (x{base[1] / step:.2f} vs defaults)")
