"""The orthogonal initial state beside Gaussian initialisation (gradients-explode spec §7; our own figure):
GSC, pre-activation std and sign diversity of the ReLU MLPs of Fig. 1 (ReLU, layer-ReLU, batch-ReLU; 50 blocks,
width 100) at initialisation, evaluated on Gaussian noise.

    "<name>"                            Gaussian weights, variance 2/fan_in (as in Fig. 1; solid lines)
    "<name> (orthogonal initial state)" the looks-linear construction (spec §7, Reconstruction of the paper's
                                        appendix): first layer [V; -V], hidden layers [[U, -U], [-U, U]], U
                                        orthogonal, zero biases (dashed lines)

    A  GSC(position -> network output) against linear layers from the input, log y
    B  pre-activation std (raw) on the input of each nonlinearity layer
    C  sign diversity on the input of each nonlinearity layer

Expected (spec §7, Derived): for the plain ReLU net the orthogonal initial state has GSC exactly 1 between any
two hidden positions, and no domain collapse (sign diversity that of a linear projection of the data, ~0.5; a
pre-activation std that does not decay). Layer and batch norm rescale units, so there it is only near 1.
Settings as in fig1.py (_random_init.py) (paper setting: 1000 points, 5 seeds; --quick: 250 points, 2 seeds, Hutchinson).
"""

from __future__ import annotations

from _random_init import COLORS, PAPER, QUICK, make_figure
from nablax.figures import figure_args

ARCHS = ["ReLU", "layer-ReLU", "batch-ReLU"]
ORTHO = " (orthogonal initial state)"


def main(argv: list[str] | None = None, overrides: dict | None = None) -> None:
    """``overrides`` replaces settings (tests run tiny nets with it)."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/gradients_explode")
    s = {**(QUICK if args.quick else PAPER), **(overrides or {})}
    series = [(a, a, "gaussian") for a in ARCHS] + [(a + ORTHO, a, "looks_linear") for a in ARCHS]
    make_figure("orthogonal_init", series, s, args, {**COLORS, **{a + ORTHO: COLORS[a] for a in ARCHS}},
                f"Orthogonal initial state (dashed) vs Gaussian init (solid): {s['depth']}-layer ReLU MLPs, "
                f"width {s['width']}, {s['eval_batch']} Gaussian-noise points, {s['n_seeds']} seeds",
                extra={"init.scheme": {legend: init for legend, _, init in series}})


if __name__ == "__main__":
    main()
