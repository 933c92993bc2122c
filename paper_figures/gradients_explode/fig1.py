"""Figure 1 of "Gradients explode - Deep Networks are shallow - ResNet explained" (spec §10): key metrics of
50-layer MLPs of width 100 in their randomly initialised state, evaluated on Gaussian noise.

    A  GSC(position -> network output) against linear layers from the input (log y); every position is plotted,
       so the positions after a linear layer, its norm and its nonlinearity stack at the same x (spec §1.3)
    B  pre-activation std (raw, spec §2.7) on the input of each nonlinearity layer j = 1..50
    C  sign diversity (spec §2.8) on the input of each nonlinearity layer

Paper setting (run without --quick): 1000 i.i.d. N(0, 1) points of dimension 100 (also the batch-norm batch,
statistics differentiated), 5 seeds (network and data), "SeLU wide" at width 400, GSC to the output of the last
block. GSC is exact for uncoupled nets of width <= 100 and the Hutchinson estimate (16 Gaussian probes, with its
standard error in the JSON) for batch-coupled nets and SeLU wide, where the exact sweep costs minutes on a CPU.
Curves: GSC the geometric mean over seeds, the other panels the arithmetic mean; bands span min..max over seeds.
--quick: 250 points, 2 seeds, Hutchinson (8 probes) everywhere. Every (net, seed) is cached under OUT/.cache,
so an interrupted run resumes.
"""

from __future__ import annotations

from typing import Any

from _random_init import COLORS, PAPER, QUICK, make_figure
from nablax.figures import figure_args

NAMES = ["ReLU", "layer-ReLU", "batch-ReLU", "tanh", "layer-tanh", "batch-tanh", "SeLU", "SeLU wide"]


def main(argv: list[str] | None = None, overrides: dict[str, Any] | None = None) -> None:
    """``overrides`` replaces settings (tests run tiny nets with it)."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/gradients_explode")
    s = {**(QUICK if args.quick else PAPER), **(overrides or {})}
    make_figure("fig1", [(n, n, s["init"]) for n in NAMES], s, args, COLORS,
                f"Fig. 1: {s['depth']}-layer MLPs of width {s['width']} at initialisation, "
                f"{s['eval_batch']} Gaussian-noise points, {s['n_seeds']} seeds")


if __name__ == "__main__":
    main()
