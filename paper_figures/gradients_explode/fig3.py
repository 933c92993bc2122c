"""Figure 3 of "Gradients explode - Deep Networks are shallow - ResNet explained" (spec §10), the panels at
initialisation: the ResNet counterparts of Fig. 1, evaluated on Gaussian noise.

    A  GSC(position -> network output) against compositional depth (linear layers from the input), log y.
       Primary curve: the residual-stream positions (the input, each block's input and output); every position
       is stored in the JSON too ("all_x", "all_y"), with each block's k-dilution, its branch GSC r, its GSC
       and the Pythagorean prediction beside it (spec §4; nablax.metrics.dilution).
    B  sign diversity on the input of each nonlinearity layer (two per block, spec §8.2)

Layout (spec §8.2, Reconstruction): Dense(100 -> 100), then 25 pre-activation blocks
x <- x + W2 phi(N(W1 phi(N(x)))) of width 100 (51 linear layers in all), no head (resnet.head is an option for
random-init nets), Gaussian weights (2/fan_in for ReLU, 1/fan_in otherwise), zero biases, norms without affine
parameters. Paper setting: 1000 N(0, 1) points of dimension 100, 5 seeds; GSC exact for layer-normalised nets
and the Hutchinson estimate (16 probes, standard errors in the JSON) for batch-normalised ones. --quick: 250
points, 2 seeds, Hutchinson everywhere.

    D  effective depth against epoch for the five ResNets trained with the figures' protocol (spec §10, the panel
       labelled "(D)"; nablax.train.resnet_training_panel, exact λ-split, threshold 0.01 with the sweep in the JSON).
       --quick: digits, 6 blocks of width 32, a few epochs (our sizes). Without --quick: the CIFAR-10 protocol of
       spec §9 (25 blocks), through the sweep runner, resumable; it needs --cifar PATH (or NABLAX_DATA) and is
       left out, with a message, when CIFAR-10 is not available. ``--no-training`` skips it.
The unknown panel C is not drawn.
"""

from __future__ import annotations

import os
import sys

import numpy

import nablax
from fig1 import PAPER, QUICK, gsc_series, make_figure
from fig2 import extra_args
from nablax.data import DataUnavailable, load_cifar10
from nablax.figures import FigureRecord, cached, figure_args
from nablax.metrics.dilution import dilution
from nablax.train import resnet_training_panel

NAMES = ["layer-ReLU (ResNet)", "batch-ReLU (ResNet)", "layer-tanh (ResNet)", "batch-tanh (ResNet)",
         "layer-SeLU (ResNet)"]
COLORS = {"layer-ReLU (ResNet)": "tab:cyan", "batch-ReLU (ResNet)": "tab:purple", "layer-tanh (ResNet)": "tab:red",
          "batch-tanh (ResNet)": "tab:brown", "layer-SeLU (ResNet)": "tab:green"}
RESNET = {"depth": 25, "reference": "output"}


def block_dilution_summary(arch: str, seed: int, s: dict) -> dict:
    """Per-block k, r, GSC and Pythagorean prediction of one net (the same net and data as ``fig1.measure``)."""
    net = nablax.build(arch, depth=s["depth"], width=s["width"], in_dim=s["in_dim"], init=s["init"], seed=seed,
                       head=s["resnet_head"])
    x = numpy.random.default_rng([seed, 1]).standard_normal((s["eval_batch"], s["in_dim"]))
    tr = net.forward(x)
    exact = not tr.couples_batch and s["width"] <= s["exact_max_width"]
    d = dilution(tr, method="exact" if exact else "hutchinson", n_probes=s["n_probes"], rng=seed)
    out = {name: d.column(name) for name in ("block", "k", "gsc_branch", "gsc_block", "predicted", "cos_values",
                                             "cos_jacobians")}
    return {**out, "end_to_end": d.end_to_end, "product_measured": d.product_measured,
            "product_predicted": d.product_predicted, "telescoped": d.telescoped, "method": d.blocks[0].method}


def training_available(quick: bool, cifar: str | None) -> str | None:
    """None when panel D can be trained here, else the reason it cannot."""
    if quick:
        return None
    try:
        load_cifar10(cifar, n_train=1)
    except DataUnavailable as err:
        return f"panel D trains on CIFAR-10, which is not available here: {err}"
    return None


def main(argv: list[str] | None = None, overrides: dict | None = None) -> None:
    """``overrides`` replaces settings (tests run tiny nets with it); ``overrides["training"]`` replaces the
    training protocol of panel D."""
    extra, rest = extra_args(argv)
    no_training = "--no-training" in rest
    rest = [a for a in rest if a != "--no-training"]
    args = figure_args(__doc__.split("\n")[0], rest, default_out="figures/gradients_explode")
    s = {**(QUICK if args.quick else PAPER), **RESNET, **(overrides or {})}
    training_overrides = s.pop("training", None)
    seed = args.seed * 1000
    cifar = extra.cifar or os.environ.get("NABLAX_DATA")
    skip_reason = "--no-training" if no_training else training_available(args.quick, cifar)
    if skip_reason and not no_training:
        print(skip_reason, file=sys.stderr)

    def add_dilution(rec: FigureRecord, runs: dict) -> None:
        rec.settings["n_linear"] = runs[NAMES[0]][0]["n_linear"]
        for legend, rs in runs.items():
            every = gsc_series(rs, "positions")
            dil = cached(args.out, {**s, "measure": "ge-dilution-v2", "arch": legend, "seed": seed},
                         lambda: block_dilution_summary(legend, seed, s))
            rec.panels["A"]["series"][legend].update(all_x=every["x"], all_y=list(every["y"]), dilution_seed0=dil)
        if skip_reason:
            rec.settings["panel_D"] = f"not drawn: {skip_reason}"
        else:
            rec.settings["panel_D"] = resnet_training_panel(rec, "D", quick=args.quick, out=args.out, seed=args.seed,
                                                            cifar=cifar, executor=extra.executor,
                                                            scheduler=extra.scheduler, overrides=training_overrides)

    rec = make_figure("fig3", [(n, n, s["init"]) for n in NAMES], s, args, COLORS,
                      f"Fig. 3: ResNets of {s['depth']} blocks, width {s['width']}, "
                      f"{s['eval_batch']} Gaussian-noise points, {s['n_seeds']} seeds (A, B at initialisation; D trained on "
                      f"{'digits, quick protocol' if args.quick else 'CIFAR-10'})",
                      extra={"resnet.n_blocks": s["depth"],
                             "resnet.input_layer": "linear in_dim -> width outside the blocks",
                             "panels_omitted": "C (unknown)"},
                      panels={"A": "gsc", "B": "sign_div"}, gsc_which="stream", finish=add_dilution)
    for legend, series in rec.panels["A"]["series"].items():
        d = series["dilution_seed0"]
        print(f"{legend:20s} seed {seed}: GSC first block's input -> last block's output {d['end_to_end']:.4g}; "
              f"product of block GSCs {d['product_measured']:.4g}, of Pythagorean predictions "
              f"{d['product_predicted']:.4g}; "
              f"telescoped (k_b^2 = b) {d['telescoped']:.4g}")


if __name__ == "__main__":
    main()
