"""Figure 3 of "The Shattered Gradients Problem" (spec §10, §3.5): "Activation of rectifiers in deep networks".

    A  active proportion A_l of ReLU layer l (the fraction of (input, neuron) pairs with a positive pre-activation)
    B  co-active proportion CO_l: the fraction of distinct input pairs on which a neuron is active on both,
       averaged over the neurons of layer l

against the layer index l = 1..depth, for feedforward ReLU nets with batch norm ("fnn-bn") and without it
("fnn-no-bn", no biases), He weights, width 200. Expected (Paper): A ~ 1/2 in both; CO ~ 1/4 (coin flips) with
batch norm at every depth, climbing with depth without it.
Inputs (Open; spec default): M = 256 i.i.d. N(0, I) points in R^200, which are also the batch-norm batch.
Curves: mean over seeds (one network and one input batch per seed); bands: mean +- 1 std over seeds.
Paper setting (the paper's own is unknown): depth 50, 10 seeds. --quick: depth 24, 3 seeds.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402

import nablax  # noqa: E402
from nablax.figures import FigureRecord, cached, figure_args, save_figure  # noqa: E402
from nablax.metrics import shatter as sh  # noqa: E402

SERIES = [("with batch norm", "fnn-bn", "tab:blue"), ("without batch norm", "fnn-no-bn", "tab:red")]
PAPER = {"depth": 50, "n_seeds": 10, "width": 200, "in_dim": 200, "n_inputs": 256}
QUICK = {**PAPER, "depth": 24, "n_seeds": 3}
FIXED = {"activity.inputs": "Gaussian N(0, I) in R^200", "init": "He N(0, 2/fan_in)", "bn.eps": 1e-5,
         "bn": "batch statistics of the input batch", "biases": "none", "band": "mean +- 1 std over seeds"}


def measure(arch: str, seed: int, s: dict, backend: str = "numpy") -> dict[str, list[float]]:
    net = nablax.build(arch, depth=s["depth"], width=s["width"], in_dim=s["in_dim"], seed=seed, backend=backend)
    x = numpy.random.default_rng([seed, 3]).standard_normal((s["n_inputs"], s["in_dim"]))
    act = sh.activity(net.forward(net.backend.xp.asarray(x)))
    return {"active": act.active, "coactive": act.coactive}


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/shattered_gradients")
    s = QUICK if args.quick else PAPER
    seeds = [args.seed * 1000 + i for i in range(s["n_seeds"])]
    rec = FigureRecord("shattered_gradients/fig3", {**s, **FIXED, "seeds": seeds, "quick": args.quick})
    panels = [("A", "active proportion", "active", 0.5), ("B", "co-active proportion", "coactive", 0.25)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    layers = numpy.arange(1, s["depth"] + 1)
    runs = {name: [cached(args.out, {"fig": "sg-fig3-v1", "arch": arch, "seed": seed, **s, **FIXED},
                          lambda: measure(arch, seed, s, args.backend)) for seed in seeds] for name, arch, _ in SERIES}
    for ax, (key, title, field, ref) in zip(axes, panels):
        rec.panel(key, title, "layer", title)
        for name, _, color in SERIES:
            v = numpy.array([r[field] for r in runs[name]])
            mean, std = v.mean(axis=0), v.std(axis=0)
            ax.plot(layers, mean, "o-", ms=3, color=color, label=name)
            ax.fill_between(layers, mean - std, mean + std, color=color, alpha=0.2, lw=0)
            rec.add(key, name, layers, mean, lo=mean - std, hi=mean + std)
            print(f"  {title:22s} {name:20s} layer 1: {mean[0]:.3f}  layer {s['depth']}: {mean[-1]:.3f}")
        ax.axhline(ref, color="0.5", ls="--", lw=0.8, label=f"{ref} (independent coin flips)")
        ax.set(title=f"({key.lower()}) {title}", xlabel="layer", ylabel=title, ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, rec, args.out, "fig3")


if __name__ == "__main__":
    main()
