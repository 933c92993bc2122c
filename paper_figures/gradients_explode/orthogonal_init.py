"""The orthogonal initial state beside Gaussian initialisation (gradients-explode spec §7; our own figure):
GSC, pre-activation std and sign diversity of the ReLU MLPs of Fig. 1 (ReLU, layer-ReLU, batch-ReLU; 50 blocks,
width 100) at initialisation, evaluated on Gaussian noise.

    "<name>"                            Gaussian weights, variance 2/fan_in (as in Fig. 1; solid lines)
    "<name> (orthogonal initial state)" the looks-linear construction (spec §7, Reconstruction of the paper's
                                        appendix): first layer [V; -V], hidden layers [[U, -U], [-U, U]], U
                                        orthogonal, zero biases (dashed lines, hollow markers)

    A  GSC(position -> network output) against linear layers from the input, log y
    B  pre-activation std (raw) on the input of each nonlinearity layer
    C  sign diversity on the input of each nonlinearity layer

Expected (spec §7, Derived): for the plain ReLU net the orthogonal initial state has GSC exactly 1 between any
two hidden positions, and no domain collapse (sign diversity that of a linear projection of the data, ~0.5; a
pre-activation std that does not decay). Layer and batch norm rescale units, so there it is only near 1.
Settings as in fig1.py (paper setting: 1000 points, 5 seeds; --quick: 250 points, 2 seeds, Hutchinson).
"""

from __future__ import annotations

from typing import Any

import numpy
from _random_init import COLORS, PAPER, QUICK, make_figure
from nablax.figures import FigureRecord, figure_args

ARCHS = ["ReLU", "layer-ReLU", "batch-ReLU"]
ORTHO = " (orthogonal initial state)"
MARKERS = {"ReLU": "o", "layer-ReLU": "s", "batch-ReLU": "^"}
TOUCH = 0.01  # series closer than this fraction of the panel's y range (in decades on a log axis) lie on each other


def coinciding(panel: dict[str, Any], log: bool) -> list[list[str]]:
    """Groups of series that lie on each other everywhere (within TOUCH of the panel's y range)."""
    ys = {name: numpy.asarray(s["y"], float) for name, s in panel["series"].items()}
    ys = {name: numpy.log10(y) if log else y for name, y in ys.items()}
    every = numpy.concatenate(list(ys.values()))
    tol = TOUCH * (every.max() - every.min())
    groups: list[list[str]] = []
    for name, y in ys.items():
        for g in groups:
            if len(ys[g[0]]) == len(y) and numpy.abs(ys[g[0]] - y).max() <= tol:
                g.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def show_coinciding(fig: Any, rec: FigureRecord) -> Any:
    """Norm layers fix the pre-activation std at 1 under both inits, and other series lie on each other too, so a
    solid line can hide a dashed one. Draw the orthogonal-state lines on top with hollow markers, staggered so that
    each of several coinciding lines shows, and name under each panel (and in its JSON) the series that coincide."""
    for ax, (key, panel) in zip(fig.axes, rec.panels.items()):
        for line in ax.get_lines():
            arch = line.get_label().removesuffix(ORTHO)
            if arch != line.get_label():
                step = max(len(line.get_xdata()) // 10, 3)
                line.set(marker=MARKERS[arch], markevery=(ARCHS.index(arch) * step // 3, step), mfc="white", ms=5,
                         zorder=3)
        panel["coinciding"] = coinciding(panel, ax.get_yscale() == "log")
        if panel["coinciding"]:
            note = "lie on each other: " + "; ".join(" = ".join(g) for g in panel["coinciding"])
            ax.annotate(note.replace(ORTHO, " (orth.)"), (0.5, -0.16), xycoords="axes fraction", ha="center",
                        va="top", fontsize=7.5, wrap=True)
        if ax.get_legend() is not None:  # the legend copied the old line styles
            ax.legend(fontsize=ax.get_legend().get_texts()[0].get_fontsize())
    return fig


def main(argv: list[str] | None = None, overrides: dict | None = None) -> Any:
    """``overrides`` replaces settings (tests run tiny nets with it). Returns the figure."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/gradients_explode")
    s = {**(QUICK if args.quick else PAPER), **(overrides or {})}
    series = [(a, a, "gaussian") for a in ARCHS] + [(a + ORTHO, a, "looks_linear") for a in ARCHS]
    _, fig = make_figure("orthogonal_init", series, s, args, {**COLORS, **{a + ORTHO: COLORS[a] for a in ARCHS}},
                         f"Orthogonal initial state (dashed, hollow markers) vs Gaussian init (solid): {s['depth']}-layer "
                         f"ReLU MLPs, width {s['width']}, {s['eval_batch']} Gaussian-noise points, {s['n_seeds']} seeds",
                         extra={"init.scheme": {legend: init for legend, _, init in series}}, restyle=show_coinciding)
    return fig


if __name__ == "__main__":
    main()
