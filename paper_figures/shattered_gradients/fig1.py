"""Figure 1 of "The Shattered Gradients Problem" (spec §10): gradients on the 1-D grid and their covariance images.

    top row     df/dx against the grid index 0..255 (256 points on [-2, 2])
    bottom row  the covariance image |(g - gbar)(g - gbar)^T| / var(g) of that one gradient (spec §3.2)
    panels      A 1-layer feedforward, B 24-layer feedforward, C 50-layer resnet, D brown noise, E white noise

Nets (width 200, one random draw each, spec §2.3 / §3.1): "one-layer" (w, b ~ N(0, 1/N)); "fnn-bn" (24 x
[linear -> BN over the grid -> ReLU], He); "resnet-bn" (a first linear -> BN layer, then 49 blocks
h <- h + beta W relu(BN(h)), beta = 1). Derivative: exact forward mode with BN statistics held constant
(bn_mode "constant_stats"). The JSON holds every gradient (the images are a function of it) and its lag-1 ACF.
The run takes a fraction of a second, so --quick runs the paper setting too.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402

import nablax  # noqa: E402
from nablax.figures import FigureRecord, figure_args, save_figure  # noqa: E402
from nablax.metrics import shatter as sh  # noqa: E402

PANELS = [("A", "1-layer feedforward", "one-layer", 1), ("B", "24-layer feedforward", "fnn-bn", 24),
          ("C", "50-layer resnet", "resnet-bn", 50), ("D", "brown noise", None, 0), ("E", "white noise", None, 0)]
SETTINGS = {"grid": "linspace(-2, 2, 256)", "width": 200, "beta": 1.0, "one_layer.bias_std": "sqrt(1/N)",
            "bn_mode": "constant_stats", "bn.eps": 1e-5, "resnet.variant": "res_bn, pre-activation, 1 weight/block, "
            "first plain layer + L-1 blocks", "n_seeds": 1, "noise.brown_step_var": "1/N", "noise.white_var": 1,
            "acf.estimator": "sample", "image": "covariance_image(g) of the series y"}


def gradients(seed: int) -> dict[str, numpy.ndarray]:
    rng = numpy.random.default_rng([seed, 7])
    out = {}
    for _, name, arch, depth in PANELS:
        if arch is not None:
            out[name] = sh.grid_gradient(nablax.build(arch, depth=depth, seed=seed, beta=SETTINGS["beta"]))
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
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/shattered_gradients")
    rec = FigureRecord("shattered_gradients/fig1", {**SETTINGS, "seed": args.seed, "quick": args.quick})
    save_figure(plot(gradients(args.seed), rec), rec, args.out, "fig1")

if __name__ == "__main__":
    main()
