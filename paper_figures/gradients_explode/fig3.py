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
       labelled "(D)"; exact λ-split, threshold 0.01 with the sweep in the JSON), mean over seeds with min..max.
       The protocol is _protocol.py's: by default 25 blocks of width 100 on the embedded digits, 3 seeds;
       --cifar PATH: CIFAR-10; --quick: digits, 6 blocks of width 32, a few epochs. Through the experiment runner,
       resumable. ``--no-training`` skips it.
The paper's panel C is unknown (spec §10) and is not drawn; the figure says so.
"""

from __future__ import annotations

import numpy

import nablax
from _protocol import FIG3_RESNETS, figure_runs_for, protocol, resnet_training_panel
from _random_init import PAPER, QUICK, gsc_series, make_figure
from nablax.figures import FigureRecord, cached, figure_args, require_cifar
from nablax.metrics.dilution import dilution

NAMES = FIG3_RESNETS  # the five ResNets of Fig. 3 (and of its training panel)
COLORS = {"layer-ReLU (ResNet)": "tab:cyan", "batch-ReLU (ResNet)": "tab:purple", "layer-tanh (ResNet)": "tab:red",
          "batch-tanh (ResNet)": "tab:brown", "layer-SeLU (ResNet)": "tab:green"}
RESNET = {"depth": 25, "reference": "output"}


def block_dilution_summary(arch: str, seed: int, s: dict, backend: str = "numpy") -> dict:
    """Per-block k, r, GSC and Pythagorean prediction of one net (the same net and data as
    ``_random_init.measure``)."""
    net = nablax.build(arch, depth=s["depth"], width=s["width"], in_dim=s["in_dim"], init=s["init"], seed=seed,
                       head=s["resnet_head"], backend=backend)
    x = numpy.random.default_rng([seed, 1]).standard_normal((s["eval_batch"], s["in_dim"]))
    tr = net.forward(net.backend.xp.asarray(x))
    exact = not tr.couples_batch and s["width"] <= s["exact_max_width"]
    d = dilution(tr, method="exact" if exact else "hutchinson", n_probes=s["n_probes"], rng=seed)
    out = {name: d.column(name) for name in ("block", "k", "gsc_branch", "gsc_block", "predicted", "cos_values",
                                             "cos_jacobians")}
    return {**out, "end_to_end": d.end_to_end, "product_measured": d.product_measured,
            "product_predicted": d.product_predicted, "telescoped": d.telescoped, "method": d.blocks[0].method}


def main(argv: list[str] | None = None, overrides: dict | None = None) -> None:
    """``overrides`` replaces settings (tests run tiny nets with it); ``overrides["training"]`` replaces the
    training protocol of panel D."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/gradients_explode", data=True, sweep=True,
                       extra=lambda p: p.add_argument("--no-training", action="store_true", help="leave out panel D"))
    s = {**(QUICK if args.quick else PAPER), **RESNET, **(overrides or {})}
    training_overrides = s.pop("training", None)
    seed = args.seed * 1000
    if not args.no_training:
        require_cifar(args, (training_overrides or {}).get("cifar_md5"))  # before any measurement

    def add_dilution(rec: FigureRecord, runs: dict) -> None:
        rec.settings["n_linear"] = runs[NAMES[0]][0]["n_linear"]
        for legend, rs in runs.items():
            every = gsc_series(rs, "positions")
            dil = cached(args.out, {**s, "measure": "ge-dilution-v2", "arch": legend, "seed": seed},
                         lambda: block_dilution_summary(legend, seed, s, args.backend))
            rec.panels["A"]["series"][legend].update(all_x=every["x"], all_y=list(every["y"]), dilution_seed0=dil)
        if args.no_training:
            rec.settings["panel_D"] = "not drawn: --no-training"
            return
        runs_d, rec.settings["panel_D"] = figure_runs_for(args, {a: {"arch": a} for a in NAMES}, "fig3_runs",
                                                         training_overrides)
        resnet_training_panel(rec, runs_d, "D")

    trained_on = {"quick": "digits, quick protocol", "digits": "digits, paper depth", "cifar": "CIFAR-10"}[args.scale]
    d_seeds = args.seeds or protocol(args.scale, training_overrides)["seeds"]
    panel_d = "" if args.no_training else f"; D: {d_seeds} seed{'s' * (d_seeds > 1)} trained on {trained_on}"
    rec, _ = make_figure("fig3", [(n, n, s["init"]) for n in NAMES], s, args, COLORS,
                      f"Fig. 3: ResNets of {s['depth']} blocks, width {s['width']}, "
                      f"{s['eval_batch']} Gaussian-noise points, {s['n_seeds']} seeds (A, B at initialisation){panel_d}",
                      extra={"resnet.n_blocks": s["depth"],
                             "resnet.input_layer": "linear in_dim -> width outside the blocks",
                             "panels_omitted": "C (unknown)",
                             "panels_note": "The paper's panel C is unknown (spec §10), so it is not drawn."},
                      panels={"A": "gsc", "B": "sign_div"}, gsc_which="stream", finish=add_dilution)
    for legend, series in rec.panels["A"]["series"].items():
        d = series["dilution_seed0"]
        print(f"{legend:20s} seed {seed}: GSC first block's input -> last block's output {d['end_to_end']:.4g}; "
              f"product of block GSCs {d['product_measured']:.4g}, of Pythagorean predictions "
              f"{d['product_predicted']:.4g}; "
              f"telescoped (k_b^2 = b) {d['telescoped']:.4g}")


if __name__ == "__main__":
    main()
