"""Looks-linear initialisation (spec §6, §11.9) on the 1-D grid: no shattering at initialisation, and what a few
training steps do to the gradient.

    A  df/dx over the grid of 200-layer looks-linear nets at initialisation: a horizontal line (std in the JSON)
       "CReLU looks-linear": orthogonal first layer, then CReLU -> [W; -W] with orthogonal 200 x 200 W
       "PReLU looks-linear": orthogonal weights, PReLU slopes a = 1
    B  singular values of the Jacobian between the first and the last hidden layer (one grid point) of the
       200-layer CReLU looks-linear net (all exactly 1: the chain is orthogonal) and of a 200-layer He ReLU net
       without batch norm ("fnn-no-bn") for contrast (log y; exact zeros are not drawn)
    C  df/dx of the CReLU looks-linear net after 0, 3, 10, 30, 100 training steps
    D  training loss against step, E  ACF at lag 1 of df/dx against step (undefined, so not drawn, while the net
       is still exactly linear), for the CReLU and PReLU looks-linear nets and a feedforward net with batch norm

Training (a project choice; the paper's 1-D experiments stop at initialisation): regress y = sin(pi x) on the 256
grid points with the mean squared error (nablax.losses.MeanSquaredError), full batch, Adam (lr 1e-4), all
parameters free (the mirrored halves diverge after the first step). Paper setting: the training nets have depth 50
and width 100 (the 200-layer net costs seconds per step on 2 CPU cores), 100 steps; --quick: depth 16, width 40,
20 steps with lr 1e-3, and 50-layer nets of width 100 in panels A-B. df/dx uses batch-norm statistics held constant; the BN
net trains with batch statistics. Every training run is cached under OUT/.cache.
"""

from __future__ import annotations

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
QUICK = {**PAPER, "init_depth": 50, "width": 100, "train_depth": 16, "train_width": 40, "steps": 20,
         "snapshots": [0, 3, 10, 20], "lr": 1e-3}  # fewer steps: a larger step size
FIXED = {"task": "y = sin(pi x) on linspace(-2, 2, 256)", "loss": "mse", "optimizer": "Adam(beta1 0.9, beta2 0.999)",
         "batch": "full grid", "orth.method": "qr", "orth.gain": 1.0, "ll.biases": "0 at init, trained",
         "bn_mode (df/dx)": "constant_stats", "bn (training)": "batch statistics"}


def train(arch: str, s: dict, seed: int) -> dict:
    """Adam on the regression task; loss and lag-1 ACF of df/dx at every step, df/dx at the snapshot steps."""
    net = nablax.build(arch, depth=s["train_depth"], width=s["train_width"], seed=seed)
    x = sh.grid(net=net)
    y = numpy.sin(numpy.pi * x)
    loss, opt, params = MeanSquaredError(), Adam(s["lr"]), net.named_params()
    out = {"loss": [], "acf1": [], "grad_std": [], "snapshots": {}}
    for step in range(s["steps"] + 1):
        g = sh.grid_gradient(net, x)
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


def init_checks(s: dict, seed: int) -> dict:
    """Panels A and B: df/dx of the deep LL nets, their linearity and orthogonality, and Jacobian spectra."""
    res, nets = {}, {}
    for name, arch, _ in LL:
        net = nets[name] = nablax.build(arch, depth=s["init_depth"], width=s["width"], seed=seed)
        chk = sh.looks_linear_check(net)
        res[name] = {"g": sh.grid_gradient(net), "grad_std": chk.grad_std, "grad_mean": chk.grad_mean,
                     "nonlinearity": chk.nonlinearity, "orth_error": chk.orth_error,
                     "norm_ratio_max_dev": float(numpy.abs(chk.norm_ratio - 1).max())}
    nets["ReLU, He init"] = nablax.build("fnn-no-bn", depth=s["init_depth"], width=s["width"], seed=seed)
    for name in ["CReLU looks-linear", "ReLU, He init"]:
        net = nets[name]
        tr = net.forward(sh.grid(net=net)[100:101], hold_stats=True)
        hidden = [p for p, shape in enumerate(net.shapes) if 0 < p < len(net.shapes) - 1 and shape == net.shapes[1]]
        res.setdefault("spectra", {})[name] = numpy.linalg.svd(tr.jacobian(hidden[0], hidden[-1])[0], compute_uv=False)
    return res


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__.split("\n")[0], argv, default_out="figures/shattered_gradients")
    s = QUICK if args.quick else PAPER
    rec = FigureRecord("shattered_gradients/looks_linear", {**s, **FIXED, "seed": args.seed, "quick": args.quick})
    init = cached(args.out, {"fig": "sg-ll-init-v1", "seed": args.seed, **s}, lambda: init_checks(s, args.seed))
    runs = {name: cached(args.out, {"fig": "sg-ll-train-v1", "arch": arch, "seed": args.seed, **s, **FIXED},
                         lambda: train(arch, s, args.seed)) for name, arch, _ in TRAINED}
    fig, ax = plt.subplots(1, 5, figsize=(24, 4.4))
    idx = numpy.arange(256)

    rec.panel("A", f"df/dx at initialisation, {s['init_depth']} layers", "grid index", "df/dx")
    for (name, _, color), style in zip(LL, ["-", "--"]):
        r = init[name]
        ax[0].plot(idx, r["g"], style, color=color, label=f"{name} (std {r['grad_std']:.1e})")
        rec.add("A", name, idx, r["g"], **{k: v for k, v in r.items() if k != "g"})
        print(f"  {name}: std of df/dx {r['grad_std']:.2e} (mean {r['grad_mean']:.3g}), nonlinearity "
              f"{r['nonlinearity']:.1e}, |J^T J - I| {r['orth_error']:.1e}")
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
    for name, _, color in TRAINED:
        r = runs[name]
        acf1 = numpy.array([numpy.nan if v is None else v for v in r["acf1"]])
        ax[3].semilogy(steps, r["loss"], color=color, label=name)
        ax[4].plot(steps, acf1, color=color, label=name)
        rec.add("D", name, steps, r["loss"])
        rec.add("E", name, steps, r["acf1"], grad_std=r["grad_std"])
        print(f"  {name}: loss {r['loss'][0]:.3f} -> {r['loss'][-1]:.4f}, ACF(1) at the end {acf1[-1]:+.3f}")
    ax[3].set(title=f"(d) training loss (depth {s['train_depth']}, width {s['train_width']})", xlabel="step")
    ax[4].set(title="(e) ACF at lag 1 of df/dx", xlabel="step", ylim=(-0.3, 1.05))
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, rec, args.out, "looks_linear")


if __name__ == "__main__":
    main()
