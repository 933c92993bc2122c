"""Figure 2 of "Gradients explode - Deep Networks are shallow - ResNet explained" (spec §10): key metrics of MLPs
trained on CIFAR-10, for batch-ReLU, layer-tanh, batch-tanh and SeLU.

    A  relative update size ||ΔW_i||_F / ||W_i||_F per linear layer i (mean over the steps of epoch 1), with the
       "bound" |E| / (||W_i||_F ||dE/dW_i||_F) dashed (spec §2.6; the bound's form is Open), log y
    B  training classification error against epoch
    C  GSC(L, 0): from the output of linear layer 1 to the error layer, on a fixed training subset, log y
    D  effective depth against epoch (spec §5, exact λ-split; threshold eps = 0.01, the sweep over eps in the JSON)
    E  operator norm ||W_i(T) - W_i(0)||_2 of the residual per linear layer at the end of training, log y (the
       value relative to ||W_i(0)||_2 is in the JSON)
    F  training error against compositional depth reduction r (spec §6: the bottom r + 1 linear layers replaced by
       their first-order Taylor expansion around θ(0))

The training protocol is _protocol.py's (every choice in it is ours; spec §9: the paper's is unknown). By default
the papers' architectures at the paper's depth on the embedded digits: 50 blocks of width 100 and an output layer
(51 linear layers), plain SGD with batch 64, the step size from a x3 grid (1e-3 ... 1) by training error after 5
epochs, then 40 epochs with the step size divided by 3 when the training error plateaus (5 epochs without a 1%
improvement), seeds 0, 1 and 2 (curves: the mean, or the geometric mean for the GSC; bands: min..max). --cifar PATH:
the same code on CIFAR-10 (the official cifar-10-python.tar.gz, checked against its MD5) with spec §9's defaults
(batch 256, up to 500 epochs: days of CPU time). --quick: digits, 12 blocks of width 32, 6 epochs, a pipeline
check. Every run goes through the experiment runner (nablax.experiments, keyed by configuration, checkpointed every
epoch), so an interrupted figure resumes; --executor dask [--workers N | --scheduler ADDRESS] spreads the runs over
a Dask cluster, --backend cupy puts them on a GPU.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy

from _protocol import DATA_NAMES, draw_depths, eps_sweep, figure_runs_for, over_seeds
from nablax.figures import FigureRecord, figure_args, save_figure

NAMES = ["batch-ReLU", "layer-tanh", "batch-tanh", "SeLU"]
COLORS = {"batch-ReLU": "tab:purple", "layer-tanh": "tab:red", "batch-tanh": "tab:brown", "SeLU": "tab:green"}
UPDATE_EPOCH = 1


def settings_for(args: Any, proto: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    first = next(iter(runs.values()))[0]
    result = first["result"] or {}
    return {**proto, "quick": args.quick, "seed": args.seed, "update_epoch": UPDATE_EPOCH,
            "n_linear": len(first["arrays"]["residual_opnorm"][0]),
            "options (spec §13)": {
                "gsc.bottom": "output of linear layer 1", "gsc.aggregation": proto["config"]["gsc_aggregation"],
                "gsc.per_example": "each example's own error; batch statistics held constant (a per-example "
                                   "gradient of a batch-coupled pass does not exist)",
                "eval_batch": proto["config"]["eval_batch"],
                "bn.stats_mode": "batch statistics, differentiated (training); held constant for the per-example GSC",
                "norm.affine": False, "init.scheme": "gaussian",
                "effective_depth": result.get("effective_depth_settings"),
                "taylor": (result.get("taylor") or {}).get("settings"), "taylor.expansion_point": "θ(0)",
                "update_size.norm": "Frobenius", "bound.form": "|E| / (||W||_F ||dE/dW||_F), scale 1",
                "residual_opnorm.relative": "both stored; absolute plotted",
                "training protocol": "project choices (spec §9), not the paper's: _protocol.py"}}


def seed_mean(rows: list[Any]) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """(mean, min, max) over seeds of equally long per-seed rows."""
    a = numpy.array(rows, dtype=float)
    return a.mean(axis=0), a.min(axis=0), a.max(axis=0)


def build_record(runs: dict[str, list[dict[str, Any]]], settings: dict[str, Any]) -> FigureRecord:
    rec = FigureRecord("gradients_explode/fig2", settings)
    rec.panel("A", "relative update size", "linear layer", "relative update size")
    rec.panel("B", "training error", "epoch", "training classification error")
    rec.panel("C", "GSC(L,0)", "epoch", "GSC(L,0)")
    rec.panel("D", "effective depth", "epoch", "effective depth")
    rec.panel("E", "operator norm of the residual", "linear layer", "||W(T) - W(0)||_2")
    rec.panel("F", "compositional depth reduction", "compositional depth reduction r", "training classification error")
    for arch, rs in runs.items():
        layers = numpy.arange(1, rs[0]["arrays"]["residual_opnorm"].shape[1] + 1)
        e = min(UPDATE_EPOCH, min(len(r["history"]) for r in rs) - 1)
        y, lo, hi = seed_mean([r["arrays"]["relative_update"][e] for r in rs])
        rec.add("A", arch, layers, y, lo, hi, bound=seed_mean([r["arrays"]["bound"][e] for r in rs])[0])
        for key, field, geo in (("B", "train_error", False), ("C", "gsc", True), ("D", "effective_depth", False)):
            s = over_seeds(rs, field, geometric=geo)
            rec.add(key, arch, s.pop("x"), s.pop("y"), s.pop("lo"), s.pop("hi"), **s,
                    **({"eps_sweep": eps_sweep(rs)} if key == "D" else {}))
        y, lo, hi = seed_mean([r["arrays"]["residual_opnorm"][-1] for r in rs])
        rec.add("E", arch, layers, y, lo, hi, relative=seed_mean([r["arrays"]["residual_opnorm_rel"][-1] for r in rs])[0])
        taylor = [r["result"]["taylor"] for r in rs if r["result"] and r["result"].get("taylor")]
        if taylor:
            y, lo, hi = seed_mean([t["error"] for t in taylor])
            rec.add("F", arch, taylor[0]["r"], y, lo, hi, error_original=[t["error_original"] for t in taylor],
                    n_seeds=len(taylor))
    return rec


def draw_lines(ax: Any, key: str, panel: dict[str, Any], bands: bool) -> None:
    """One line per architecture (None in the record, an undefined value, is a gap), its min..max band over seeds
    when there are several, and panel A's bound dashed."""
    for arch, s in panel["series"].items():
        x, y = numpy.asarray(s["x"], dtype=float), numpy.asarray(s["y"], dtype=float)
        ax.plot(x, y, "-", color=COLORS[arch], label=arch, ms=3, marker="o" if key in "AEF" else None)
        if bands:
            ax.fill_between(x, numpy.asarray(s["lo"], dtype=float), numpy.asarray(s["hi"], dtype=float),
                            color=COLORS[arch], alpha=0.15, lw=0)
        if key == "A":
            ax.plot(x, numpy.asarray(s["bound"], dtype=float), "--", color=COLORS[arch], lw=1)


def plot(rec: FigureRecord, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    bands = len(rec.settings["seeds"]) > 1  # min..max over seeds
    for ax, key in zip(axes.ravel(), "ABCDEF"):
        p = rec.panels[key]
        if key == "D":
            draw_depths(ax, p, COLORS)
        else:
            draw_lines(ax, key, p, bands)
        if key in "ACE":
            ax.set_yscale("log")
        ax.set(title=f"({key}) {p['title']}", xlabel=p["xlabel"], ylabel=p["ylabel"])
    axes[0, 0].plot([], [], "k--", lw=1, label="bound")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None, overrides: dict[str, Any] | None = None) -> int:
    """``overrides`` replaces protocol settings (tests run tiny nets with it)."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/gradients_explode", data=True, sweep=True)
    runs, proto = figure_runs_for(args, {a: {"arch": a} for a in NAMES}, "fig2_runs", overrides)
    rec = build_record(runs, settings_for(args, proto, runs))
    c = proto["config"]
    title = (f"Fig. 2: MLPs trained on {DATA_NAMES[args.scale]}: {c['depth']} blocks of width {c['width']} + output layer, SGD batch "
             f"{c['batch_size']}, {c['epochs']} epochs, seeds {proto['seeds']} (project protocol)")
    save_figure(plot(rec, title), rec, args.out, "fig2")
    for arch, rs in runs.items():
        for run in rs:
            last, res = run["history"][-1], run["result"]
            taylor = " ".join(f"{e:.3f}" for e in res["taylor"]["error"]) if res and res.get("taylor") else "-"
            print(f"{arch:11s} seed {res['config']['seed']} lr {res['config']['lr']:g}: training error "
                  f"{last['train_error']:.3f}, GSC(L,0) {last['gsc']:.3g}, effective depth {last['effective_depth']} "
                  f"(eps sweep {last['effective_depth_sweep']}); Taylor error for r = 0..: {taylor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
