"""The shattered-gradients theorems against depth (spec §4): gradient correlation R(i, j) = C(i, j) / C(i) for each
architecture family, three ways.

    closed form    Theorem 1, Theorem 2 (Reconstruction), Theorem 3 (the exact product; the paper's asymptotic
                   form 1/(beta sqrt L) dotted), the scalar-gated highway corollary with t = 1/L (spec §4.3-4.7)
    path model     the idealised model of spec §4.8 (masks drawn as independent coin flips, weights shared by the
                   two inputs): it matches the closed forms in expectation; points +- 2 standard errors
    network        real randomly initialised networks of width 200 at M distinct N(0, I) inputs in R^200,
                   gradient of the scalar output with respect to the input, batch-norm statistics held constant;
                   C(i) and C(i, j) averaged over input pairs and seeds; points +- 2 standard errors over seeds

    A  feedforward ("fnn-bn": L x [linear -> BN -> ReLU])                     R = 2^-L                 (log y)
    B  resnet without batch norm ("resnet-no-bn": L blocks h + beta W relu(h)), beta = 1 and 0.1     (log y)
    C  resnet with batch norm ("resnet-bn": first layer + L-1 blocks h + beta W relu(BN h)), beta = 1 and 0.1
    D  highway ("highway": L blocks a h + b W relu(h), b^2 = t = 1/L, a^2 = 1 - t, no BN)

Where real networks drift from the theory (spec §4.9): without BN the co-active proportion exceeds 1/4 and grows
with depth, so their correlations decay far more slowly than the theorems say; in BN resnets the branch output
has a nonzero mean, so the stream variance grows by less than beta^2 per block. On log axes, estimates <= 0 are
not drawn (they are in the JSON), and the axis runs down to half the smallest estimate drawn. Colour: the family
(legend in each panel with more than one); style: closed form, path model or network (the legend below). Paper setting (project choice; the paper gives none): depths 1, 2, 4, 10, 24, 50,
10,000 path-model trials, 10 networks per point with 256 inputs. --quick: depths up to 10, 1,000 trials, 2
networks with 64 inputs. Every point is cached under OUT/.cache.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402

import nablax  # noqa: E402
from nablax.figures import FigureRecord, cached, figure_args, save_figure  # noqa: E402
from nablax.metrics import shatter as sh  # noqa: E402
from nablax.metrics import shatter_theory as th  # noqa: E402

# (panel, title, path-model kind, network name, [(legend, beta, color)], log y)
PANELS = [("A", "feedforward (Theorem 1)", "fnn", "fnn-bn", [("feedforward", 1.0, "tab:blue")], True),
          ("B", "resnet without batch norm (Theorem 2)", "res", "resnet-no-bn",
           [("resnet", 1.0, "tab:red"), ("resnet, beta = 0.1", 0.1, "tab:orange")], True),
          ("C", "resnet with batch norm (Theorem 3)", "res_bn", "resnet-bn",
           [("resnet", 1.0, "tab:red"), ("resnet, beta = 0.1", 0.1, "tab:orange")], False),
          ("D", "highway, t = 1/L (Corollary 1)", "highway", "highway", [("highway", None, "tab:green")], False)]
PAPER = {"depths": [1, 2, 4, 10, 24, 50], "trials": 10_000, "n_nets": 10, "n_inputs": 256, "width": 200}
QUICK = {**PAPER, "depths": [1, 2, 4, 10], "trials": 1_000, "n_nets": 2, "n_inputs": 64}
FIXED = {"init": "He N(0, 2/N)", "path_model.method": "gram (exact in distribution)", "bn_mode": "constant_stats",
         "network.inputs": "i.i.d. N(0, I) in R^200", "highway.t": "1/L", "error_bars": "+- 2 standard errors",
         "res_bn.depth": "first plain layer + L-1 blocks", "res.depth": "L blocks"}


def gate(kind: str, beta: float | None, depth: int) -> float:
    """The branch scale: beta, or the highway gate b = sqrt(t) with t = 1/L."""
    return math.sqrt(1.0 / depth) if kind == "highway" else beta


def path_point(kind: str, beta: float | None, depth: int, s: dict, seed: int) -> dict:
    est = th.path_model(kind, depth, width=s["width"], beta=beta or 1.0, trials=s["trials"], rng=[seed, depth])
    return {"corr": est.corr, "corr_se": est.corr_se, "z": est.z_scores(th.closed_form(kind, depth, beta or 1.0))}


def network_point(kind: str, arch: str, beta: float | None, depth: int, s: dict, seed: int,
                  backend: str = "numpy") -> dict:
    b = gate(kind, beta, depth)
    nets = (nablax.build(arch, depth=depth, width=s["width"], in_dim=s["width"], beta=b, seed=seed * 1000 + i,
                         backend=backend) for i in range(s["n_nets"]))
    x = numpy.random.default_rng([seed, depth, 5]).standard_normal((s["n_inputs"], s["width"]))
    est = sh.gradient_correlation(nets, nablax.get_backend(backend).xp.asarray(x))
    return {"corr": est.corr, "corr_se": est.corr_se, "var": est.var, "cov": est.cov}


STYLES = [("closed form", {"color": "k", "lw": 1.2}),
          (r"Theorem 3 asymptotic $1/(\beta\sqrt{L})$", {"color": "k", "ls": ":", "lw": 1}),
          ("path model ± 2 s.e.", {"color": "k", "marker": "o", "ls": "none"}),
          ("network ± 2 s.e.", {"color": "k", "marker": "s", "mfc": "white", "ls": "none"})]
LEGEND_SIZE = 10
LOG_FLOOR = "from 1.5 down to half the smallest positive point estimate drawn in the panel"


def log_floor(estimates: list[numpy.ndarray]) -> float:
    """The lower y limit of a log panel (LOG_FLOOR). The closed form and the error bars that reach further down
    (estimates consistent with 0) run out through the bottom edge."""
    positive = numpy.concatenate([r[r > 0] for r in estimates])
    return 0.5 * float(positive.min())


def main(argv: list[str] | None = None, overrides: dict | None = None) -> Any:
    """``overrides`` replaces settings (tests run tiny nets with it)."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/shattered_gradients")
    s = {**(QUICK if args.quick else PAPER), **(overrides or {})}
    rec = FigureRecord("shattered_gradients/theory", {**s, **FIXED, "seed": args.seed, "quick": args.quick,
                                                      "ylim (log panels)": LOG_FLOOR})
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    depths = numpy.array(s["depths"])
    dense_l = numpy.arange(1, depths.max() + 1)
    for ax, (key, title, kind, arch, series, logy) in zip(axes.flat, PANELS):
        rec.panel(key, title, "depth L", "gradient correlation R")
        estimates = []
        for legend, beta, color in series:
            closed = [th.closed_form(kind, int(L), beta or 1.0).corr for L in dense_l]
            ax.plot(dense_l, closed, "-", color=color, lw=1.2, label=legend)
            rec.add(key, f"{legend}: closed form", dense_l, closed)
            if kind == "res_bn":
                asym = [th.theorem3_asymptotic(int(L), beta).corr for L in dense_l]
                ax.plot(dense_l, asym, ":", color=color, lw=1)
                rec.add(key, f"{legend}: asymptotic 1/(beta sqrt L)", dense_l, asym)
            for what, marker, shift, fn in [
                    ("path model", "o", 0.97, lambda L: path_point(kind, beta, L, s, args.seed)),
                    ("network", "s", 1.03, lambda L: network_point(kind, arch, beta, L, s, args.seed, args.backend))]:
                pts = [cached(args.out, {"fig": "sg-theory-v1", "what": what, "kind": kind, "arch": arch, "beta": beta,
                                         "depth": int(L), "seed": args.seed, **s, **FIXED}, lambda: fn(int(L)))
                       for L in depths]
                r = numpy.array([p["corr"] for p in pts])
                se = numpy.array([p["corr_se"] for p in pts])
                extra = {"z_vs_closed_form": [p["z"]["corr"] for p in pts]} if what == "path model" else {}
                rec.add(key, f"{legend}: {what}", depths, r, lo=r - 2 * se, hi=r + 2 * se, stderr=se, **extra)
                show = r > 0 if logy else numpy.ones_like(r, bool)
                estimates.append(r[show])
                lo = numpy.minimum(2 * se, r * 0.999) if logy else 2 * se
                ax.errorbar(depths[show] * shift, r[show], yerr=[lo[show], 2 * se[show]], fmt=marker,
                            mfc="white" if what == "network" else color, color=color, ms=5, capsize=2)
                print(f"  {title[:28]:28s} {legend:20s} {what:10s} " +
                      " ".join(f"L={L}:{v:.3g}" for L, v in zip(depths, r)))
        ax.set(title=f"({key.lower()}) {title}", xlabel="depth L", xscale="log")
        ax.set_xticks(depths, [str(L) for L in depths], minor=False)
        ax.minorticks_off()
        if logy:
            ax.set_yscale("log")
            ax.set_ylim(log_floor(estimates), 1.5)
        else:
            ax.set_ylim(0, 1.05)
        if len(series) > 1:
            ax.legend(fontsize=LEGEND_SIZE, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel("gradient correlation R(i, j)")
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], label=label, **kw) for label, kw in STYLES], loc="lower center", ncol=4,
               fontsize=LEGEND_SIZE, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, rec, args.out, "theory")
    return fig


if __name__ == "__main__":
    main()
