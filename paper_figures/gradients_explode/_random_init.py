"""What the random-initialisation figures of the gradients-explode paper share (fig1.py, fig3.py,
orthogonal_init.py): the paper setting and the quick one, the measurement of one randomly initialised net on
Gaussian noise (GSC to the reference position, pre-activation std, sign diversity), its cache, the bands over
seeds, the panels and the plot.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy

import nablax
from nablax.figures import FigureRecord, cached, save_figure
from nablax.metrics.domain import domain_metrics
from nablax.metrics.gsc import gsc_to
from nablax.metrics.jacobian import reference_position, select_positions, x_coordinates
from _protocol import draw_depths

COLORS = {"ReLU": "tab:blue", "layer-ReLU": "tab:cyan", "batch-ReLU": "tab:purple", "tanh": "tab:orange",
          "layer-tanh": "tab:red", "batch-tanh": "tab:brown", "SeLU": "tab:green", "SeLU wide": "tab:olive"}

PAPER = {"depth": 50, "width": 100, "in_dim": 100, "eval_batch": 1000, "n_seeds": 5, "selu_wide_width": 400,
         "reference": "last_block", "plot_positions": "all", "exact_max_width": 100, "n_probes": 16,
         "init": "gaussian", "resnet_head": False}
QUICK = {**PAPER, "eval_batch": 250, "n_seeds": 2, "exact_max_width": 0, "n_probes": 8}

# every option of spec §13 that these measurements touch, with the value used (recorded in every JSON)
FIXED = {"gsc.squared": False, "gsc.aggregation": "batch", "bn.stats_mode": "batch_differentiated", "bn.eps": 1e-5,
         "norm.affine": False, "preact_std.variant": "raw", "preact_std.ddof": 0,
         "sign_div.zero_policy": "ignore (zeros in neither count; empty neurons skipped)",
         "data": "i.i.d. N(0, 1) Gaussian noise", "band": "min..max over seeds",
         "gsc_curve": "geometric mean over seeds", "domain_curves": "arithmetic mean over seeds"}

SPEC_NAMES = {"reference": "gsc.reference", "in_dim": "input.dim", "selu_wide_width": "selu_wide.width",
              "init": "init.scheme", "resnet_head": "resnet.head", "n_probes": "gsc.n_probes"}


def measure(arch: str, seed: int, s: dict[str, Any], init: str | None = None, backend: str = "numpy") -> dict[str, Any]:
    """One randomly initialised net on one batch of Gaussian noise: GSC from every position to the reference
    position, and pre-activation std and sign diversity at every nonlinearity (JSON-able). The noise is drawn on
    the host and moved to the ``backend``'s device, so both backends measure the same net on the same points."""
    width = s["selu_wide_width"] if arch == "SeLU wide" else s["width"]
    kw = {"head": s["resnet_head"]} if arch.endswith("(ResNet)") else {}
    net = nablax.build(arch, depth=s["depth"], width=width, in_dim=s["in_dim"], init=init or s["init"], seed=seed,
                       backend=backend, **kw)
    x = numpy.random.default_rng([seed, 1]).standard_normal((s["eval_batch"], s["in_dim"]))
    tr = net.forward(net.backend.xp.asarray(x))  # batch statistics, differentiated through (bn.stats_mode)
    exact = not tr.couples_batch and width <= s["exact_max_width"]
    t0 = time.perf_counter()
    g = gsc_to(tr, s["reference"], method="exact" if exact else "hutchinson", n_probes=s["n_probes"], rng=seed)
    d = domain_metrics(tr)
    return {"positions": g.positions, "n_lin": x_coordinates(net, g.positions), "gsc": g.value, "stderr": g.stderr,
            "method": g.method, "seconds": time.perf_counter() - t0, "n_linear": net.n_linear,
            "reference": reference_position(net, s["reference"]),
            "stream": select_positions(net, "stream"), "plot": select_positions(net, s["plot_positions"]),
            "j": d.index, "preact_std": d.preact_std, "sign_div": d.sign_diversity}


def measure_all(series: list[tuple[str, str, str]], s: dict[str, Any], out: str, base_seed: int,
                backend: str = "numpy") -> dict[str, list]:
    """``{legend: [run per seed]}`` for (legend, architecture, init) triples, each run cached under out/.cache
    (the cache key leaves out the backend: both compute the same numbers)."""
    runs: dict[str, list] = {}
    for legend, arch, init in series:
        runs[legend] = []
        for i in range(s["n_seeds"]):
            seed = base_seed * 1000 + i
            config = {**s, "measure": "ge-init-v1", "arch": arch, "init": init, "seed": seed}
            t0 = time.perf_counter()
            runs[legend].append(cached(out, config, lambda: measure(arch, seed, s, init, backend)))
            print(f"  {legend:28s} seed {seed}: {runs[legend][-1]['method']:10s} {time.perf_counter() - t0:6.1f}s",
                  file=sys.stderr)
    return runs


def band(ys: list[list[float]], geometric: bool = False) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """(curve, lo, hi) over seeds: the (geometric) mean and the min..max range."""
    a = numpy.array(ys, dtype=float)
    mid = numpy.exp(numpy.log(a).mean(axis=0)) if geometric else a.mean(axis=0)
    return mid, a.min(axis=0), a.max(axis=0)


def gsc_series(runs: list[dict], which: str = "plot") -> dict[str, Any]:
    """Panel-A series over seeds at the positions ``runs[0][which]`` (x = linear layers from the input)."""
    idx = [list(runs[0]["positions"]).index(p) for p in runs[0][which]]
    y, lo, hi = band([[r["gsc"][i] for i in idx] for r in runs], geometric=True)
    rel = max(float(numpy.max(numpy.array(r["stderr"])[idx] / numpy.array(r["gsc"])[idx])) for r in runs)
    return {"x": [runs[0]["n_lin"][i] for i in idx], "y": y, "lo": lo, "hi": hi, "positions": runs[0][which],
            "method": runs[0]["method"], "max_rel_stderr": rel}


def domain_series(runs: list[dict], key: str) -> dict[str, Any]:
    y, lo, hi = band([r[key] for r in runs])
    return {"x": runs[0]["j"], "y": y, "lo": lo, "hi": hi}


PANEL_TITLES = {"gsc": ("GSC to the network output", "linear layers from the input", "GSC"),
                "preact_std": ("pre-activation std", "nonlinearity layer", "pre-activation std (raw)"),
                "sign_div": ("sign diversity", "nonlinearity layer", "sign diversity")}
FIG1_PANELS = {"A": "gsc", "B": "preact_std", "C": "sign_div"}


def add_panels(rec: FigureRecord, runs: dict[str, list], panels: dict[str, str] = FIG1_PANELS,
               gsc_which: str = "plot") -> None:
    """Fill the panels ``{letter: "gsc" | "preact_std" | "sign_div"}`` with a series per legend name."""
    for key, metric in panels.items():
        rec.panel(key, *PANEL_TITLES[metric])
        for legend, rs in runs.items():
            s = gsc_series(rs, gsc_which) if metric == "gsc" else domain_series(rs, metric)
            rec.add(key, legend, s.pop("x"), s.pop("y"), s.pop("lo"), s.pop("hi"), **s)


def plot(rec: FigureRecord, colors: dict[str, str], suptitle: str) -> Any:
    """One row of panels from the record (log y for GSC); bands where the record has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rec.panels)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.4))
    for ax, key in zip(numpy.atleast_1d(axes), keys):
        panel = rec.panels[key]
        if panel["ylabel"] == "effective depth":
            draw_depths(ax, panel, colors)
        else:
            for legend, s in panel["series"].items():
                c = colors.get(legend)
                ls = "--" if "orthogonal" in legend else "-"
                ax.plot(s["x"], s["y"], ls, color=c, label=legend, lw=1.4)
                if "lo" in s:
                    ax.fill_between(s["x"], s["lo"], s["hi"], color=c, alpha=0.2, lw=0)
        ax.set_title(f"{key}: {panel['title']}", fontsize=10)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        if panel["ylabel"] == "GSC":
            ax.set_yscale("log")
        if panel["ylabel"] == "sign diversity":
            ax.set_ylim(0, 0.52)
        ax.grid(alpha=0.3)
    numpy.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(suptitle, fontsize=11)
    if rec.settings.get("panels_note"):
        fig.text(0.5, -0.01, rec.settings["panels_note"], ha="center", va="top", fontsize=9)
    fig.tight_layout()
    return fig


def input_summary(runs: dict[str, list]) -> dict[str, dict[str, float]]:
    """GSC from the network input (position 0) to the reference position, over seeds."""
    out = {}
    for legend, rs in runs.items():
        v = numpy.array([r["gsc"][0] for r in rs])
        out[legend] = {"geomean": float(numpy.exp(numpy.log(v).mean())), "min": float(v.min()), "max": float(v.max()),
                       "max_rel_stderr": max(float(r["stderr"][0] / r["gsc"][0]) for r in rs)}
    return out


def settings_record(s: dict[str, Any], runs: dict[str, list], base_seed: int) -> dict[str, Any]:
    methods = {legend: {"method": rs[0]["method"], "max_rel_stderr": gsc_series(rs)["max_rel_stderr"],
                        "n_probes": s["n_probes"] if rs[0]["method"] == "hutchinson" else None}
               for legend, rs in runs.items()}
    named = {SPEC_NAMES.get(k, k): v for k, v in s.items()}
    return {**FIXED, **named, "seeds": [base_seed * 1000 + i for i in range(s["n_seeds"])], "gsc.jacobian": methods,
            "gsc_at_input": input_summary(runs)}


def make_figure(name: str, series: list[tuple[str, str, str]], s: dict[str, Any], args: Any, colors: dict[str, str],
                title: str, extra: dict[str, Any] | None = None, panels: dict[str, str] = FIG1_PANELS,
                gsc_which: str = "plot", finish: Any = None, restyle: Any = None) -> tuple[FigureRecord, Any]:
    """Measure every (legend, architecture, init) over the seeds, fill the panels, let ``finish(rec, runs)`` add
    to the record and ``restyle(fig, rec)`` change the drawn figure, then write OUT/name.png and OUT/name.json and
    print the GSC at the input per legend. Returns the record and the matplotlib figure."""
    runs = measure_all(series, s, args.out, args.seed, args.backend)
    rec = FigureRecord(f"gradients_explode/{name}", {**settings_record(s, runs, args.seed), "quick": args.quick,
                                                     **(extra or {})})
    add_panels(rec, runs, panels, gsc_which)
    if finish is not None:
        finish(rec, runs)
    fig = plot(rec, colors, title)
    if restyle is not None:
        fig = restyle(fig, rec)
    save_figure(fig, rec, args.out, name)
    for legend, v in rec.settings["gsc_at_input"].items():
        print(f"GSC(input -> output) {legend:40s} {v['geomean']:.6g}  (seeds: {v['min']:.6g} .. {v['max']:.6g})")
    return rec, fig
