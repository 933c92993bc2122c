"""Training from the orthogonal initial state (gradients-explode spec §7, the paper's main recommendation; our own
figure): a ReLU MLP of 50 blocks of width 100 trained from the orthogonal initial state beside the same net trained
from Gaussian initialisation.

    "ReLU (Gaussian)"                   Gaussian weights, variance 2/fan_in, zero biases (as in Fig. 1 and 2)
    "ReLU (orthogonal initial state)"   the looks-linear construction (spec §7, Reconstruction of the paper's
                                        appendix): first layer [V; -V], hidden layers [[U, -U], [-U, U]] with U
                                        orthogonal, output layer [A, -A], zero biases: at initialisation the net is
                                        the linear map A U_50 ... U_2 V, every hidden layer an orthogonal map

    A  training classification error against epoch
    B  GSC(L, 0) against epoch (per example, geometric mean; log y)
    C  effective depth against epoch (exact λ-split, threshold 0.01; the sweep over the threshold in the JSON)

Expected from the paper: the orthogonal initial state starts with GSC 1 and no collapsed domain, so it trains a
deep ReLU net well, and its effective depth grows during training. The training protocol is _protocol.py's (every
choice in it is ours): by default 40 epochs of plain SGD on the embedded digits, batch 64, the step size picked
for each initialisation from a x3 grid, seeds 0, 1 and 2; --cifar PATH runs CIFAR-10; --quick is a pipeline check.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy

from _protocol import DATA_NAMES, draw_depths, eps_sweep, figure_runs_for, over_seeds
from nablax.figures import FigureRecord, figure_args, save_figure

VARIANTS = {"ReLU (Gaussian)": {"arch": "ReLU", "init": "gaussian"},
            "ReLU (orthogonal initial state)": {"arch": "ReLU", "init": "looks_linear"}}
COLORS = {"ReLU (Gaussian)": "tab:blue", "ReLU (orthogonal initial state)": "tab:orange"}
PANELS = {"A": ("training error", "train_error", "training classification error", False),
          "B": ("GSC(L,0)", "gsc", "GSC(L,0)", True),
          "C": ("effective depth", "effective_depth", "effective depth", False)}


def build_record(runs: dict[str, list[dict[str, Any]]], settings: dict[str, Any]) -> FigureRecord:
    rec = FigureRecord("gradients_explode/orthogonal_training", settings)
    for key, (title, field, ylabel, geometric) in PANELS.items():
        rec.panel(key, title, "epoch", ylabel)
        for legend, rs in runs.items():
            s = over_seeds(rs, field, geometric)
            rec.add(key, legend, s.pop("x"), s.pop("y"), s.pop("lo"), s.pop("hi"), **s,
                    **({"eps_sweep": eps_sweep(rs)} if field == "effective_depth" else {}))
    return rec


def plot(rec: FigureRecord, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (key, (_, field, _, geometric)) in zip(axes, PANELS.items()):
        p = rec.panels[key]
        if field == "effective_depth":
            draw_depths(ax, p, COLORS)
        else:
            for legend, s in p["series"].items():  # None in the record (an undefined value) is a gap
                x, y, lo, hi = (numpy.asarray(s[k], dtype=float) for k in ("x", "y", "lo", "hi"))
                ax.plot(x, y, color=COLORS[legend], label=legend)
                ax.fill_between(x, lo, hi, color=COLORS[legend], alpha=0.15, lw=0)
            ax.legend(fontsize=8)
        if geometric:
            ax.set_yscale("log")
        ax.set(title=f"({key}) {p['title']}", xlabel=p["xlabel"], ylabel=p["ylabel"])
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None, overrides: dict[str, Any] | None = None) -> int:
    """``overrides`` replaces protocol settings (tests run tiny nets with it)."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/gradients_explode", data=True, sweep=True)
    runs, proto = figure_runs_for(args, VARIANTS, "orthogonal_training_runs", overrides)
    first = next(iter(runs.values()))[0]["result"] or {}
    rec = build_record(runs, {**proto, "quick": args.quick, "init.scheme": VARIANTS,
                              "effective_depth": first.get("effective_depth_settings"),
                              "gsc": "GSC(L, 0) from linear layer 1, per example (geometric mean)"})
    c = proto["config"]
    save_figure(plot(rec, f"ReLU MLP, {c['depth']} blocks of width {c['width']}, trained on {DATA_NAMES[args.scale]} "
                          f"from the orthogonal initial state and from Gaussian init (SGD batch {c['batch_size']}, "
                          f"seeds {proto['seeds']})"),
                rec, args.out, "orthogonal_training")
    for legend, rs in runs.items():
        for r in rs:
            last, res = r["history"][-1], r["result"]
            gsc = "undefined" if last["gsc"] is None else f"{last['gsc']:.3g}"
            print(f"{legend:32s} seed {res['config']['seed']} lr {res['config']['lr']:g}: training error "
                  f"{last['train_error']:.3f}, GSC(L,0) {gsc}, effective depth {last['effective_depth']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
