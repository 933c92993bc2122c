"""Figure 1 of "The Shattered Gradients Problem" (spec §10): gradients on the 1-D grid and their covariance images.

    top row     df/dx against the grid index 0..255 (256 points on [-2, 2])
    bottom row  the covariance image |(g - gbar)(g - gbar)^T| / var(g) of that one gradient (spec §3.2)
    panels      A 1-layer feedforward, B 24-layer feedforward, C 50-layer resnet, D brown noise, E white noise

Nets (width 200, one random draw each, spec §2.3 / §3.1): "one-layer" (w ~ N(0, 1/N), b ~ N(0, 1): --bias-std;
the spec's sqrt(1/N) puts every kink in |x| < 0.25 and gives a step function, not brown noise; every run measures
both against brown noise with the lag-k ACF over 20 seeds and records it); "fnn-bn" (24 x
[linear -> BN over the grid -> ReLU], He); "resnet-bn" (a first linear -> BN layer, then 49 blocks
h <- h + beta W relu(BN(h)), beta = 1). Derivative: exact forward mode with BN statistics held constant
(bn_mode "constant_stats"). The JSON holds every gradient (the images are a function of it) and its lag-1 ACF.
The run takes a fraction of a second, so --quick runs the paper setting too.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402

import nablax  # noqa: E402
from nablax.architectures import ONE_LAYER_BIAS_STD  # noqa: E402
from nablax.figures import FigureRecord, figure_args, save_figure  # noqa: E402
from nablax.metrics import shatter as sh  # noqa: E402

PANELS = [("A", "1-layer feedforward", "one-layer", 1), ("B", "24-layer feedforward", "fnn-bn", 24),
          ("C", "50-layer resnet", "resnet-bn", 50), ("D", "brown noise", None, 0), ("E", "white noise", None, 0)]
SETTINGS = {"grid": "linspace(-2, 2, 256)", "width": 200, "beta": 1.0,
            "bn_mode": "constant_stats", "bn.eps": 1e-5, "resnet.variant": "res_bn, pre-activation, 1 weight/block, "
            "first plain layer + L-1 blocks", "n_seeds": 1, "noise.brown_step_var": "1/N", "noise.white_var": 1,
            "acf.estimator": "sample", "image": "covariance_image(g) of the series y"}


STUDY_SEEDS, STUDY_LAGS = 20, 64


def bias_std_study(candidates: dict[str, float], backend: str = "numpy") -> dict[str, object]:
    """How brown the one-layer net's gradient is for each bias std: the mean over STUDY_SEEDS seeds of its lag-k
    ACF (k = 1..STUDY_LAGS) against the same mean for brown noise; the mean and max absolute difference."""
    lags = slice(1, STUDY_LAGS + 1)
    brown = numpy.mean([sh.acf(sh.brown_noise(numpy.random.default_rng([s, 7])), STUDY_LAGS)[lags]
                        for s in range(STUDY_SEEDS)], axis=0)
    out: dict[str, object] = {"seeds": STUDY_SEEDS, "lags": f"1..{STUDY_LAGS}"}
    for label, std in candidates.items():
        nets = (nablax.build("one-layer", depth=1, seed=s, bias_std=std, backend=backend) for s in range(STUDY_SEEDS))
        mean = numpy.mean([n.backend.asnumpy(sh.acf(sh.grid_gradient(n), STUDY_LAGS))[lags] for n in nets], axis=0)
        diff = numpy.abs(mean - brown)
        out[label] = {"bias_std": std, "mean_abs_acf_diff": float(diff.mean()), "max_abs_acf_diff": float(diff.max())}
    return out


def gradients(seed: int, bias_std: float, backend: str = "numpy") -> dict[str, numpy.ndarray]:
    rng = numpy.random.default_rng([seed, 7])
    out = {}
    for _, name, arch, depth in PANELS:
        if arch is not None:
            net = nablax.build(arch, depth=depth, seed=seed, beta=SETTINGS["beta"], backend=backend,
                               **({"bias_std": bias_std} if arch == "one-layer" else {}))
            out[name] = net.backend.asnumpy(sh.grid_gradient(net))
    out["brown noise"] = sh.brown_noise(rng)
    out["white noise"] = sh.white_noise(rng)
    return out


def plot(gs: dict[str, numpy.ndarray], rec: FigureRecord):
    """Both rows from the gradients (into ``rec`` as well); each covariance image has its own colour bar."""
    fig, axes = plt.subplots(2, 5, figsize=(17, 6.6), gridspec_kw={"height_ratios": [1, 1.5]})
    for col, (key, name, _, _) in enumerate(PANELS):
        g = gs[name]
        lag1 = float(sh.acf(g, 1)[1])
        rec.panel(key, name, "grid index", "df/dx" if col < 3 else "value")
        rec.add(key, name, numpy.arange(len(g)), g, acf_lag1=lag1)
        axes[0, col].plot(g, lw=0.8, color="k")
        axes[0, col].set(title=f"({key.lower()}) {name}", xlabel="grid index", xlim=(0, len(g) - 1))
        im = axes[1, col].imshow(sh.covariance_image(g), cmap="gray_r", interpolation="nearest")
        fig.colorbar(im, ax=axes[1, col], fraction=0.046, pad=0.03)
        ticks = [0, (len(g) - 1) // 2, len(g) - 1]
        axes[1, col].set(xticks=ticks, yticks=ticks, xlabel=f"ACF(1) = {lag1:.2f}")
    axes[0, 0].set_ylabel("gradient df/dx")
    axes[1, 0].set_ylabel(r"covariance image $|g_c g_c^{\top}|\,/\,\mathrm{var}(g)$")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/shattered_gradients",
                       extra=lambda p: p.add_argument("--bias-std", type=float, default=ONE_LAYER_BIAS_STD,
                                                      help="std of the one-layer net's biases (default 1; the spec's "
                                                           "reconstruction is sqrt(1/200) = 0.0707)"))
    study = bias_std_study({"used": args.bias_std, "spec sqrt(1/N)": math.sqrt(1 / SETTINGS["width"])}, args.backend)
    print(f"one-layer net, mean |ACF(k) - brown noise ACF(k)| over {study['lags']}, {study['seeds']} seeds: "
          f"bias std {args.bias_std:g}: {study['used']['mean_abs_acf_diff']:.3f}; "
          f"sqrt(1/N): {study['spec sqrt(1/N)']['mean_abs_acf_diff']:.3f}")
    rec = FigureRecord("shattered_gradients/fig1", {**SETTINGS, "one_layer.bias_std": args.bias_std,
                                                    "one_layer.bias_std_study": study, "seed": args.seed,
                                                    "quick": args.quick, "backend": args.backend})
    gs = gradients(args.seed, args.bias_std, args.backend)
    save_figure(plot(gs, rec), rec, args.out, "fig1")


if __name__ == "__main__":
    main()
