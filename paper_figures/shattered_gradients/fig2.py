"""Figure 2 of "The Shattered Gradients Problem" (spec §10): autocorrelation of df/dx over the 1-D grid.

    A  feedforward nets ("fnn-bn": L x [linear -> BN over the grid -> ReLU]) of several depths
    B  resnets with beta = 1 ("resnet-bn": a first linear -> BN layer, then L-1 blocks h <- h + beta W relu(BN(h)))
    C  resnets with beta-rescaling, beta = 0.1 (Reconstruction of the value)

Every panel also shows the white- and brown-noise reference ACFs (spec §3.4). Curves are the mean ACF over
n_seeds random draws (one network per seed; ACF curves averaged, not gradients); bands are mean +- 1 std over the
seeds. Width 200, 256 grid points on [-2, 2], He weights, exact forward-mode df/dx with BN statistics held
constant (bn_mode "constant_stats"), the standard sample ACF against integer lag.
Paper setting (spec defaults; the paper's depth list and seed count are Open): depths 1, 2, 4, 10, 24, 50 and
20 seeds. --quick: depths 1, 4, 24, 50 and 4 seeds. Each (family, depth) is cached under OUT/.cache.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402

import nablax  # noqa: E402
from nablax.figures import FigureRecord, cached, figure_args, save_figure  # noqa: E402
from nablax.metrics import shatter as sh  # noqa: E402

FAMILIES = [("A", "feedforward", "fnn-bn", 1.0), ("B", "resnet", "resnet-bn", 1.0),
            ("C", "resnet, beta = 0.1", "resnet-bn", 0.1)]
PAPER = {"depths": [1, 2, 4, 10, 24, 50], "n_seeds": 20, "max_lag": 60}
QUICK = {**PAPER, "depths": [1, 4, 24, 50], "n_seeds": 4}
FIXED = {"grid": "linspace(-2, 2, 256)", "width": 200, "bn_mode": "constant_stats", "bn.eps": 1e-5,
         "acf.estimator": "sample", "acf.lag_units": "integer", "resnet.variant": "res_bn (first plain layer + "
         "L-1 pre-activation blocks, one weight layer each)", "noise.brown_step_var": "1/N", "noise.white_var": 1,
         "band": "mean +- 1 std over seeds", "curve": "mean ACF over seeds"}


def acf_curves(arch: str, depth: int, beta: float, seeds: list[int], max_lag: int,
               backend: str = "numpy") -> list[list[float]] | None:
    """ACF (lags 0..max_lag) of df/dx for one network per seed, on the host; None where df/dx is constant (a
    1-layer resnet has no block: it is linear, and its ACF is undefined)."""
    nets = (nablax.build(arch, depth=depth, beta=beta, seed=s, backend=backend) for s in seeds)
    try:
        return [net.backend.asnumpy(sh.acf(sh.grid_gradient(net), max_lag)) for net in nets]
    except sh.UndefinedACF:
        return None


def noise_curves(seed: int, n: int, max_lag: int) -> dict[str, numpy.ndarray]:
    rng = numpy.random.default_rng([seed, 11])
    return {"white noise": sh.acf(sh.white_noise(rng, size=(n,)), max_lag),
            "brown noise": sh.acf(sh.brown_noise(rng, size=(n,)), max_lag)}


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/shattered_gradients")
    s = QUICK if args.quick else PAPER
    seeds = [args.seed * 1000 + i for i in range(s["n_seeds"])]
    rec = FigureRecord("shattered_gradients/fig2", {**s, **FIXED, "seeds": seeds, "quick": args.quick,
                                                    "backend": args.backend})
    noise = noise_curves(args.seed, s["n_seeds"], s["max_lag"])
    k = numpy.arange(s["max_lag"] + 1)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), sharey=True)
    colors = plt.cm.viridis(numpy.linspace(0, 0.9, len(s["depths"])))
    for ax, (key, title, arch, beta) in zip(axes, FAMILIES):
        rec.panel(key, title, "lag", "autocorrelation")
        for depth, color in zip(s["depths"], colors):
            config = {"fig": "sg-fig2-v1", "arch": arch, "depth": depth, "beta": beta, "seeds": seeds, **s, **FIXED}
            r = cached(args.out, config, lambda: acf_curves(arch, depth, beta, seeds, s["max_lag"], args.backend))
            name = f"{depth}-layer {title}"
            if r is None:
                rec.settings.setdefault("undefined_acf", []).append(f"{name} (linear: df/dx constant)")
                print(f"  {name:32s} ACF undefined (df/dx is constant on the grid)")
                continue
            r = numpy.array(r)
            _band(ax, rec, key, name, k, r, color, "-")
            print(f"  {name:32s} ACF(1) = {r[:, 1].mean():+.3f} +- {r[:, 1].std():.3f} ({len(seeds)} seeds)")
        for name, r in noise.items():
            _band(ax, rec, key, name, k, r, "k" if name == "white noise" else "tab:brown", "--")
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set(title=f"({key.lower()}) {title}", xlabel="lag")
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("autocorrelation of df/dx")
    fig.tight_layout()
    save_figure(fig, rec, args.out, "fig2")


def _band(ax, rec: FigureRecord, key: str, name: str, k, r: numpy.ndarray, color, style: str) -> None:
    mean, std = r.mean(axis=0), r.std(axis=0)
    ax.plot(k, mean, style, color=color, lw=1.3, label=name)
    ax.fill_between(k, mean - std, mean + std, color=color, alpha=0.15, lw=0)
    rec.add(key, name, k, mean, lo=mean - std, hi=mean + std, acf_lag1=mean[1], acf_lag1_std=std[1], n_seeds=len(r))


if __name__ == "__main__":
    main()
