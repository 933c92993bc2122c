"""Looks-linear initialisation (spec §6, §11.9) on the 1-D grid: no shattering at initialisation, and what a few
training steps do to the gradient.

    A  df/dx over the grid of 200-layer looks-linear nets at initialisation: a horizontal line (std in the JSON)
       "CReLU looks-linear": orthogonal first layer, then CReLU -> [W; -W] with orthogonal 200 x 200 W
       "PReLU looks-linear": orthogonal weights, PReLU slopes a = 1
       (one seed draws the same base matrices for both, so at initialisation they are the same linear map and
       their lines coincide; the figure says so)
    B  singular values of the Jacobian between the first and the last hidden layer (one grid point) of the
       200-layer CReLU looks-linear net (all exactly 1: the chain is orthogonal) and of a 200-layer He ReLU net
       without batch norm ("fnn-no-bn") for contrast (log y; exact zeros are not drawn)
    C  df/dx of the CReLU looks-linear net at the snapshot steps
    D  training loss against step, with the loss of the best affine fit a x + b of the target on the grid (dotted)
    E  ACF at lag 1 of df/dx against step, for the CReLU and PReLU looks-linear nets and a feedforward net with
       batch norm. While a net is still exactly linear df/dx is constant and its ACF undefined: not drawn, marked
       on the bottom edge, and listed in the JSON (acf_undefined_steps; y is null there)
    F  notes: what the panels show, in numbers

Training (a project choice; the paper's 1-D experiments stop at initialisation): regress y = sin(pi x) on the 256
grid points with the mean squared error (nablax.losses.MeanSquaredError), full batch, Adam (lr 1e-4), all
parameters free (the mirrored halves diverge after the first step), 100 steps. Paper setting: the training nets
have depth 50 and width 100 (the 200-layer net costs seconds per step on 2 CPU cores); --quick: the same steps and
step size on smaller nets (depth 16, width 40; 50-layer nets of width 100 in panels A-B). --steps and --lr change
the protocol. df/dx uses batch-norm statistics held constant; the BN net trains with batch statistics. Every
training run is cached under OUT/.cache.

Why --quick keeps the 100 steps: a looks-linear net starts as a linear map, at about the loss of the best affine
fit (0.21 here), and leaves that plateau only once training has made it nonlinear (mirrored halves apart, biases
off 0), which takes tens of steps (20 steps at lr 1e-3 end on the plateau, at 0.208). The PReLU net leaves it far
more slowly: Adam moves each slope by about lr per step from a = 1.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402

import nablax  # noqa: E402
from nablax.figures import FigureRecord, cached, figure_args, save_figure  # noqa: E402
from nablax.losses import MeanSquaredError  # noqa: E402
from nablax.metrics import shatter as sh  # noqa: E402
from nablax.optim import Adam  # noqa: E402

LL = [("CReLU looks-linear", "crelu-ll", "tab:blue"), ("PReLU looks-linear", "prelu-ll", "tab:green")]
TRAINED = LL + [("feedforward", "fnn-bn", "tab:red")]
PAPER = {"init_depth": 200, "width": 200, "train_depth": 50, "train_width": 100, "steps": 100,
         "snapshots": [0, 3, 10, 30, 100], "lr": 1e-4}
QUICK = {**PAPER, "init_depth": 50, "width": 100, "train_depth": 16, "train_width": 40}  # the paper's protocol
FIXED = {"task": "y = sin(pi x) on linspace(-2, 2, 256)", "loss": "mse", "optimizer": "Adam(beta1 0.9, beta2 0.999)",
         "batch": "full grid", "orth.method": "qr", "orth.gain": 1.0, "ll.biases": "0 at init, trained",
         "bn_mode (df/dx)": "constant_stats", "bn (training)": "batch statistics",
         "acf.undefined": "ACF(1) of a constant df/dx (the net still exactly linear) is undefined (sh.UndefinedACF): "
                          "y is null at those steps, listed in acf_undefined_steps, not drawn in (e)",
         "protocol.quick": "--quick keeps the paper setting's steps and step size and shrinks the nets only"}


def train(arch: str, s: dict, seed: int, backend: str = "numpy") -> dict:
    """Adam on the regression task; loss and lag-1 ACF of df/dx at every step, df/dx at the snapshot steps (all
    on the host)."""
    net = nablax.build(arch, depth=s["train_depth"], width=s["train_width"], seed=seed, backend=backend)
    host, xp = net.backend.asnumpy, net.backend.xp
    x = sh.grid(net=net)
    y = xp.sin(numpy.pi * x)
    loss, opt, params = MeanSquaredError(), Adam(s["lr"]), net.named_params()
    out = {"loss": [], "acf1": [], "grad_std": [], "snapshots": {}}
    slopes = [v for k, v in params.items() if k.endswith(".a")]  # PReLU
    for step in range(s["steps"] + 1):
        if slopes:
            out.setdefault("max_abs_a_minus_1", []).append(max(float(xp.abs(a - 1).max()) for a in slopes))
        g = host(sh.grid_gradient(net, x))
        try:
            out["acf1"].append(float(sh.acf(g, 1)[1]))
        except sh.UndefinedACF:
            out["acf1"].append(None)  # still exactly linear
        out["grad_std"].append(float(g.std()))
        if step in s["snapshots"]:
            out["snapshots"][str(step)] = g
        tr = net.forward(x)
        out["loss"].append(loss.value(tr.output, y))
        if step < s["steps"]:
            _, grads = tr.backward(loss.grad(tr.output, y))
            opt.step(params, grads)
    return out


def init_checks(s: dict, seed: int, backend: str = "numpy") -> dict:
    """Panels A and B: df/dx of the deep LL nets, their linearity and orthogonality, and Jacobian spectra (all
    on the host)."""
    res, nets = {}, {}
    for name, arch, _ in LL:
        net = nets[name] = nablax.build(arch, depth=s["init_depth"], width=s["width"], seed=seed, backend=backend)
        chk = sh.looks_linear_check(net)
        res[name] = {"g": net.backend.asnumpy(sh.grid_gradient(net)), "grad_std": chk.grad_std, "grad_mean": chk.grad_mean,
                     "nonlinearity": chk.nonlinearity, "orth_error": chk.orth_error,
                     "norm_ratio_max_dev": float(numpy.abs(chk.norm_ratio - 1).max())}
    nets["ReLU, He init"] = nablax.build("fnn-no-bn", depth=s["init_depth"], width=s["width"], seed=seed,
                                         backend=backend)
    for name in ["CReLU looks-linear", "ReLU, He init"]:
        net = nets[name]
        tr = net.forward(sh.grid(net=net)[100:101], hold_stats=True)
        hidden = [p for p, shape in enumerate(net.shapes) if 0 < p < len(net.shapes) - 1 and shape == net.shapes[1]]
        jac = net.backend.asnumpy(tr.jacobian(hidden[0], hidden[-1])[0])
        res.setdefault("spectra", {})[name] = numpy.linalg.svd(jac, compute_uv=False)
    return res


def best_affine_loss(x: numpy.ndarray, y: numpy.ndarray) -> float:
    """The loss of the least-squares fit a x + b: where a linear net's loss can get to at best."""
    basis = numpy.concatenate([x, numpy.ones_like(x)], axis=1)
    coef = numpy.linalg.lstsq(basis, y, rcond=None)[0]
    return MeanSquaredError().value(basis @ coef, y)


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, help=f"training steps (default {PAPER['steps']})")
    p.add_argument("--lr", type=float, help=f"Adam step size (default {PAPER['lr']})")


def spans(steps: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out: list[list[int]] = []
    for t in steps:
        if out and t == out[-1][-1] + 1:
            out[-1].append(t)
        else:
            out.append([t])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in out) or "none"


def main(argv: list[str] | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """``overrides`` replaces settings (tests run tiny nets with it). Returns the figure."""
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/shattered_gradients", extra=options)
    s = {**(QUICK if args.quick else PAPER), **(overrides or {})}
    s.update({k: v for k, v in [("steps", args.steps), ("lr", args.lr)] if v is not None})
    s["snapshots"] = sorted({t for t in s["snapshots"] if t <= s["steps"]} | {s["steps"]})
    grid_x = sh.grid()
    floor = best_affine_loss(grid_x, numpy.sin(numpy.pi * grid_x))
    rec = FigureRecord("shattered_gradients/looks_linear", {**s, **FIXED, "seed": args.seed, "quick": args.quick,
                                                             "best_affine_fit_loss": floor})
    init = cached(args.out, {"fig": "sg-ll-init-v1", "seed": args.seed, **s},
                  lambda: init_checks(s, args.seed, args.backend))
    runs = {name: cached(args.out, {"fig": "sg-ll-train-v2", "arch": arch, "seed": args.seed, **s, **FIXED},
                         lambda: train(arch, s, args.seed, args.backend)) for name, arch, _ in TRAINED}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    ax = axes.flat
    idx = numpy.arange(256)
    notes = []

    rec.panel("A", f"df/dx at initialisation, {s['init_depth']} layers", "grid index", "df/dx")
    (c_name, _, c_color), (p_name, _, p_color) = LL
    for name, _, _ in LL:
        r = init[name]
        rec.add("A", name, idx, r["g"], **{k: v for k, v in r.items() if k != "g"})
        print(f"  {name}: std of df/dx {r['grad_std']:.2e} (mean {r['grad_mean']:.3g}), nonlinearity "
              f"{r['nonlinearity']:.1e}, |J^T J - I| {r['orth_error']:.1e}")
    # the two nets share their base matrices: draw the CReLU line wide and the PReLU one on top with markers
    ax[0].plot(idx, init[c_name]["g"], "-", color=c_color, lw=4, alpha=0.5,
               label=f"{c_name} (std {init[c_name]['grad_std']:.1e})")
    ax[0].plot(idx, init[p_name]["g"], "--", color=p_color, lw=1.5, marker="o", mfc="white", markevery=16,
               label=f"{p_name} (std {init[p_name]['grad_std']:.1e})", zorder=3)
    diff = float(numpy.abs(numpy.subtract(init[c_name]["g"], init[p_name]["g"])).max())
    rec.panels["A"]["max_abs_difference"] = diff
    notes.append(f"(a) One seed draws the same base matrices for both looks-linear nets, so at initialisation they "
                 f"are the same linear map, slope {init[c_name]['grad_mean']:.3g}: the lines coincide (largest "
                 f"difference {diff:.1e}).")
    level = max(abs(init[name]["grad_mean"]) for name, _, _ in LL)
    ax[0].set(title=f"(a) df/dx at initialisation, {s['init_depth']} layers", xlabel="grid index", ylabel="df/dx",
              ylim=(-2 * level, 2 * level))  # a scale on which a shattered gradient would show; no offset zoom

    rec.panel("B", "singular values of the hidden-layer Jacobian", "index", "singular value")
    for name, color in [("CReLU looks-linear", "tab:blue"), ("ReLU, He init", "tab:gray")]:
        sv = numpy.array(init["spectra"][name])
        rec.add("B", name, numpy.arange(len(sv)), sv)
        ax[1].semilogy(numpy.where(sv > 0, sv, numpy.nan), color=color, label=name)
    ax[1].set(title=f"(b) Jacobian spectrum, {s['init_depth']} layers", xlabel="index", ylabel="singular value",
              ylim=(1e-20, 1e4))

    rec.panel("C", "df/dx during training (CReLU looks-linear)", "grid index", "df/dx")
    colors = plt.cm.viridis(numpy.linspace(0, 0.9, len(s["snapshots"])))
    for step, color in zip(s["snapshots"], colors):
        g = runs["CReLU looks-linear"]["snapshots"][str(step)]
        ax[2].plot(idx, g, color=color, lw=1, label=f"step {step}")
        rec.add("C", f"step {step}", idx, g)
    ax[2].set(title="(c) df/dx during training, CReLU looks-linear", xlabel="grid index", ylabel="df/dx")

    steps = numpy.arange(s["steps"] + 1)
    rec.panel("D", "training loss", "step", "mean squared error")
    rec.panel("E", "ACF at lag 1 of df/dx", "step", "ACF(1)")
    ax[3].axhline(floor, color="k", ls=":", lw=1.2, label="best affine fit a x + b")
    rec.add("D", "best affine fit", steps[[0, -1]], [floor, floor])
    undefined_text = []
    for name, _, color in TRAINED:
        r = runs[name]
        acf1 = numpy.array([numpy.nan if v is None else v for v in r["acf1"]])
        undefined = [int(t) for t in steps[numpy.isnan(acf1)]]
        ax[3].semilogy(steps, r["loss"], color=color, label=name)
        ax[4].plot(steps, acf1, color=color, label=name)
        if undefined:  # (an empty unclipped line would stretch the layout to the figure's corner)
            ax[4].plot(undefined, [-0.3] * len(undefined), "x", color=color, ms=9, mew=2, clip_on=False)
        rec.add("D", name, steps, r["loss"], **{k: v for k, v in r.items() if k == "max_abs_a_minus_1"})
        rec.add("E", name, steps, r["acf1"], grad_std=r["grad_std"], acf_undefined_steps=undefined)
        undefined_text.append(f"{name}: {spans(undefined)}")
        print(f"  {name}: loss {r['loss'][0]:.3f} -> {r['loss'][-1]:.4f}, ACF(1) at the end {acf1[-1]:+.3f}, "
              f"ACF undefined at steps {spans(undefined)}")
    ax[4].plot([], [], "kx", label="ACF undefined (df/dx constant)")
    notes.append(f"(d) Dotted: the loss of the best affine fit of sin(pi x) on the grid, {floor:.4f}. A looks-linear "
                 "net starts as a linear map, so its loss starts near that line, and gets below it only once "
                 "training has made the net nonlinear (mirrored halves apart, biases off 0).")
    a_dev = runs[p_name].get("max_abs_a_minus_1")
    if a_dev:
        notes.append(f"PReLU slopes start at a = 1, and Adam moves each by about lr = {s['lr']:g} per step at most: "
                     f"after {s['steps']} steps max |a - 1| = {a_dev[-1]:.3g}, which bounds how nonlinear that net "
                     "can have become.")
    notes.append("(e) While a net is still exactly linear, df/dx is constant and its ACF undefined; those steps are "
                 "not drawn (x on the bottom edge): " + "; ".join(undefined_text) + ".")
    notes.append(f"Training: Adam, lr {s['lr']:g}, {s['steps']} steps, full batch, MSE; depth {s['train_depth']}, "
                 f"width {s['train_width']}; seed {args.seed}.")
    ax[3].set(title=f"(d) training loss (depth {s['train_depth']}, width {s['train_width']})", xlabel="step",
              ylabel="mean squared error")
    ax[4].set(title="(e) ACF at lag 1 of df/dx", xlabel="step", ylabel="ACF(1)", ylim=(-0.3, 1.05))
    for a in ax[:5]:
        a.legend(fontsize=9)
    ax[5].axis("off")
    ax[5].set_title("(f) notes")
    ax[5].text(0, 1, "\n\n".join(textwrap.fill(n, 62) for n in notes), va="top", fontsize=9.5,
               transform=ax[5].transAxes).set_in_layout(False)  # sized to the panel; no squeeze of the rest
    rec.settings["notes"] = notes
    fig.tight_layout()
    save_figure(fig, rec, args.out, "looks_linear")
    return fig


if __name__ == "__main__":
    main()
