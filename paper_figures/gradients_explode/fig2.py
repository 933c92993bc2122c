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

Without --quick: the CIFAR-10 protocol of spec §9 (project defaults, not the paper's, which are unknown): 50 blocks
of width 100 and an output layer (51 linear layers), inputs flattened and standardised per feature, plain SGD with
batch 256, the step size picked from a x3 grid (1e-4 ... 1) by training error after 5 epochs, then up to 500 epochs
with the step size divided by 3 when the training error plateaus (5 epochs without a 1% improvement). Every run
goes through the sweep runner (nablax.sweep, keyed by configuration, checkpointed every epoch), so an interrupted
figure resumes. CIFAR-10 cannot be downloaded by this script's default: pass --cifar PATH (the official
cifar-10-python.tar.gz, checked against its MD5) or set NABLAX_DATA; --executor dask [--scheduler ADDRESS] spreads
the runs over a Dask cluster. The full protocol is days of CPU time (hours on a GPU).

--quick: scikit-learn's digits (1797 images, 64 features), 12 blocks of width 32 (13 linear layers), batch 128, the
step size picked from {0.003, 0.01, 0.03, 0.1} by training error after 2 epochs, 6 epochs. These sizes are ours.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy

from nablax.data import DataUnavailable, load_cifar10
from nablax.figures import FigureRecord, blas_threads, figure_args, save_figure
from nablax.train import figure_runs

NAMES = ["batch-ReLU", "layer-tanh", "batch-tanh", "SeLU"]
COLORS = {"batch-ReLU": "tab:purple", "layer-tanh": "tab:red", "batch-tanh": "tab:brown", "SeLU": "tab:green"}
UPDATE_EPOCH = 1


def extra_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cifar", default=None, help="CIFAR-10 archive or folder (default: $NABLAX_DATA)")
    p.add_argument("--executor", choices=["local", "dask"], default="local")
    p.add_argument("--scheduler", default=None, help="a running Dask scheduler's address")
    return p.parse_known_args(sys.argv[1:] if argv is None else argv)


def settings_for(args: argparse.Namespace, proto: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    result = next(iter(runs.values()))["result"] or {}
    return {**proto, "quick": args.quick, "seed": args.seed, "update_epoch": UPDATE_EPOCH,
            "n_linear": len(next(iter(runs.values()))["arrays"]["residual_opnorm"][0]),
            "options (spec §13)": {
                "gsc.bottom": "output of linear layer 1", "gsc.aggregation": "batch", "eval_batch": proto["config"]["eval_batch"],
                "bn.stats_mode": "batch statistics, differentiated", "norm.affine": False, "init.scheme": "gaussian",
                "effective_depth": result.get("effective_depth_settings"),
                "taylor": (result.get("taylor") or {}).get("settings"), "taylor.expansion_point": "θ(0)",
                "update_size.norm": "Frobenius", "bound.form": "|E| / (||W||_F ||dE/dW||_F), scale 1",
                "residual_opnorm.relative": "both stored; absolute plotted",
                "training protocol": "project defaults (spec §9), not the paper's"}}


def build_record(runs: dict[str, Any], settings: dict[str, Any]) -> FigureRecord:
    rec = FigureRecord("gradients_explode/fig2", settings)
    rec.panel("A", "relative update size", "linear layer", "relative update size")
    rec.panel("B", "training error", "epoch", "training classification error")
    rec.panel("C", "GSC(L,0)", "epoch", "GSC(L,0)")
    rec.panel("D", "effective depth", "epoch", "effective depth")
    rec.panel("E", "operator norm of the residual", "linear layer", "||W(T) - W(0)||_2")
    rec.panel("F", "compositional depth reduction", "compositional depth reduction r", "training classification error")
    for arch, run in runs.items():
        hist, arr, res = run["history"], run["arrays"], run["result"]
        epochs = [h["epoch"] for h in hist]
        layers = numpy.arange(1, arr["residual_opnorm"].shape[1] + 1)
        e = min(UPDATE_EPOCH, len(hist) - 1)
        rec.add("A", arch, layers, arr["relative_update"][e], bound=arr["bound"][e])
        rec.add("B", arch, epochs, [h["train_error"] for h in hist])
        rec.add("C", arch, epochs, [h["gsc"] for h in hist])
        sweep = {k: [h["effective_depth_sweep"][k] for h in hist] for k in hist[-1]["effective_depth_sweep"]}
        rec.add("D", arch, epochs, [h["effective_depth"] for h in hist], eps_sweep=sweep)
        rec.add("E", arch, layers, arr["residual_opnorm"][-1], relative=arr["residual_opnorm_rel"][-1])
        if res and res.get("taylor"):
            rec.add("F", arch, res["taylor"]["r"], res["taylor"]["error"], error_original=res["taylor"]["error_original"])
    return rec


def plot(rec: FigureRecord, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, key in zip(axes.ravel(), "ABCDEF"):
        p = rec.panels[key]
        for i, (arch, s) in enumerate(p["series"].items()):
            x, y = numpy.asarray(s["x"], dtype=float), numpy.array(s["y"], dtype=float)
            if key == "D":  # integer steps; drawn slightly apart so that equal depths stay visible
                ax.step(x, y + 0.04 * (i - 1.5), where="post", color=COLORS[arch], label=arch)
            else:
                ax.plot(x, y, "-", color=COLORS[arch], label=arch, ms=3, marker="o" if key in "AEF" else None)
            if key == "A":
                ax.plot(x, numpy.array(s["bound"], dtype=float), "--", color=COLORS[arch], lw=1)
        if key in "ACE":
            ax.set_yscale("log")
        if key == "D":
            ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set(title=f"({key}) {p['title']}", xlabel=p["xlabel"], ylabel=p["ylabel"])
    axes[0, 0].plot([], [], "k--", lw=1, label="bound")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None, overrides: dict[str, Any] | None = None) -> int:
    """``overrides`` replaces protocol settings (tests run tiny nets with it)."""
    extra, rest = extra_args(argv)
    args = figure_args(__doc__.split("\n")[0], rest, default_out="figures/gradients_explode")
    cifar = extra.cifar or os.environ.get("NABLAX_DATA")
    if not args.quick:
        try:  # fail before any training if the data is not there
            load_cifar10(cifar, n_train=1, **({"md5": overrides["cifar_md5"]} if "cifar_md5" in (overrides or {}) else {}))
        except DataUnavailable as err:
            print(f"fig2 without --quick trains on CIFAR-10, which is not available here: {err}", file=sys.stderr)
            return 2
    with blas_threads(args.quick):
        runs, proto = figure_runs(NAMES, os.path.join(args.out, "fig2_runs"), quick=args.quick, seed=args.seed,
                                  cifar=cifar, executor=extra.executor, scheduler=extra.scheduler, overrides=overrides)
    rec = build_record(runs, settings_for(args, proto, runs))
    c = proto["config"]
    title = (f"Fig. 2: MLPs trained on {'digits (quick)' if args.quick else 'CIFAR-10'}: {c['depth']} blocks of width "
             f"{c['width']} + output layer, SGD batch {c['batch_size']}, {c['epochs']} epochs (project protocol)")
    save_figure(plot(rec, title), rec, args.out, "fig2")
    for arch, run in runs.items():
        last, res = run["history"][-1], run["result"]
        taylor = " ".join(f"{e:.3f}" for e in res["taylor"]["error"]) if res and res.get("taylor") else "-"
        print(f"{arch:11s} lr {res['config']['lr']:g}: training error {last['train_error']:.3f}, GSC(L,0) {last['gsc']:.3g}, "
              f"effective depth {last['effective_depth']} (eps sweep {last['effective_depth_sweep']}); "
              f"Taylor error for r = 0..: {taylor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
