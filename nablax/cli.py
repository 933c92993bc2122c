"""nablax: hand-written gradients of deep networks, and the measurements of two papers on them.

The commands (``nablax --help``; README, Command line) each live in a ``cmd_<name>`` function below; long-running
ones show a progress bar. An error the user can act on (``USER_ERRORS``: a bad argument, missing data or file, a
missing optional dependency) ends the command with one line on stderr and exit status 2 (``main``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy

from . import __version__, build, kernels
from .architectures import ARCHITECTURES, TAKES
from .backend import BLAS_THREAD_VARS, BackendUnavailable, gpu_available, numba_available, tune_allocator
from .data import DataUnavailable, load_cifar10
from .network import describe_file_format
from .performance import current

USER_ERRORS = (ValueError, OSError, ImportError, DataUnavailable, BackendUnavailable)
DEBUG_ENV = "NABLAX_DEBUG"


def find_figure_scripts(root: Path | None = None) -> list[Path]:
    """Every paper figure script: ``paper_figures/<paper>/<name>.py``, in a stable order."""
    candidates = [root] if root else [Path.cwd() / "paper_figures", Path(__file__).resolve().parent.parent / "paper_figures"]
    for base in candidates:
        if base is not None and base.is_dir():
            return sorted(p for p in base.glob("*/*.py") if not p.name.startswith("_"))
    raise FileNotFoundError("no paper_figures/ folder found: run `nablax figures` from the nablax repository "
                            "(it is installed with `pip install -e .`)")


# the figure scripts that read a data set (``figure_args(..., data=True)``): they take --cifar
DATA_FIGURES = ("gradients_explode/fig2", "gradients_explode/fig3", "gradients_explode/orthogonal_training",
                "shattered_gradients/fig4", "shattered_gradients/fig6")


def cmd_figures(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.cifar:
        if args.quick:
            raise ValueError("--quick runs on the embedded digits; leave out --cifar, or --quick")
        try:  # once, before any figure starts
            load_cifar10(args.cifar, n_train=1)
        except DataUnavailable as err:
            raise DataUnavailable(f"CIFAR-10 is not usable: {err}") from None
    scripts = find_figure_scripts(Path(args.root) if args.root else None)
    if args.only:
        scripts = [s for s in scripts if any(o in f"{s.parent.name}/{s.stem}" for o in args.only)]
        if not scripts:
            raise ValueError(f"no figure script matches {args.only}")
    out = Path(args.out)
    failed = []
    # the figures multiply small matrices: extra BLAS threads only wait (a thread count set by the user stays)
    env = {**{var: "1" for var in BLAS_THREAD_VARS}, **os.environ, "MPLBACKEND": "Agg"}
    bar = tqdm(scripts, desc="figures", unit="fig", file=sys.stderr)
    for script in bar:
        name = f"{script.parent.name}/{script.stem}"
        bar.set_postfix_str(name)
        cmd = [sys.executable, str(script), "--out", str(out / script.parent.name), "--seed", str(args.seed),
               "--backend", args.backend]
        if args.quick:
            cmd.append("--quick")
        if args.cifar and name in DATA_FIGURES:
            cmd += ["--cifar", args.cifar]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            failed.append(name)
            tqdm.write(f"FAILED {name} ({dt:.1f}s):\n{res.stderr[-3000:]}", file=sys.stderr)
        else:
            for line in res.stdout.strip().splitlines():
                if args.verbose or line.startswith("wrote "):
                    tqdm.write(f"{name}: {line}")
    print(f"{len(scripts) - len(failed)} of {len(scripts)} figures written under {out}/")
    return 1 if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    print(f"nablax {__version__}")
    print(f"backends: numpy (always), numba kernels: {'yes' if numba_available() else 'no'}, "
          f"cupy GPU: {'yes' if gpu_available() else 'no'}")
    print(f"matrix products: {kernels.blas_library()} (NABLAX_BLAS: {kernels.blas_name()})")
    print(f"performance {current()} (README, Performance)")
    print("architectures: " + ", ".join(ARCHITECTURES))
    print(describe_file_format())
    return 0


def cmd_gsc(args: argparse.Namespace) -> int:
    """Per-position GSC to the reference position, with the pre-activation std and sign diversity of every
    nonlinearity, for a gradients-explode architecture at initialisation on Gaussian noise."""
    from tqdm import tqdm

    from .metrics.domain import domain_metrics
    from .metrics.gsc import gsc_to
    from .metrics.jacobian import paper_index

    net = build(args.arch, depth=args.depth, width=args.width, in_dim=args.in_dim, init=args.init, seed=args.seed)
    x = numpy.random.default_rng([args.seed, 1]).standard_normal((args.batch,) + net.in_shape)
    bar = tqdm(total=3, desc="gsc", unit="step", file=sys.stderr, leave=False)
    bar.set_postfix_str("forward")
    tr = net.forward(x, hold_stats=args.bn_stats == "batch_constant")
    bar.update()
    bar.set_postfix_str(f"GSC sweep ({args.method})")
    g = gsc_to(tr, args.reference, method=args.method, n_probes=args.probes, rng=args.seed)
    bar.update()
    d = domain_metrics(tr)
    bar.update()
    bar.close()
    how = g.method + (f", {g.n_probes} probes, +- one standard error" if g.method == "hutchinson" else "")
    print(f"{args.arch}: depth {args.depth}, width {net.meta['width']}, input {net.meta['in_dim']}, init {args.init}, "
          f"seed {args.seed}; {args.batch} Gaussian-noise points; batch norm {args.bn_stats}; GSC batch-level, {how}; "
          f"reference position {g.hi} ({args.reference}); pre-activation std raw, sign diversity per neuron across "
          f"data, on the input of each nonlinearity in that row")
    pos = net.positions()
    n_layers = len(net.layers)
    ref = paper_index(g.hi, n_layers)
    print(f"pos: forward position (0 = input, {n_layers} = output); paper l: the paper's layer index, numbered from "
          f"the output (l = {n_layers + 1} - pos; l = 1 is the output, l = 0 the error), so GSC(p->ref) is the "
          f"paper's GSC(l, {ref})")
    print(f"{'pos':>4} {'paper l':>7}  {'layer':10} {'n_lin':>5} {'GSC(p->ref)':>22}  {'preact std':>13} {'sign div':>13}")
    for i, p in enumerate(g.positions):
        gs = f"{g.value[i]:.5g}" + (f" +- {g.stderr[i]:.2g}" if g.method == "hutchinson" else "")
        sd, dv = ("/".join(f"{v:.3f}" for v in values[d.position == p]) for values in (d.preact_std, d.sign_diversity))
        print(f"{p:4d} {paper_index(int(p), n_layers):7d}  {pos[p].kind:10} {pos[p].n_lin:5d} {gs:>22}  {sd:>13} {dv:>13}")
    if args.plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(15, 4), layout="tight")
        ax = fig.subplots(1, 3)
        ax[0].semilogy([pos[p].n_lin for p in g.positions], g.value, "-")
        ax[0].set(title=f"{args.arch}: GSC(l, {ref}) to the paper's layer {ref} (position {g.hi})",
                  xlabel="linear layers from the input", ylabel="GSC")
        ax[1].plot(d.index, d.preact_std, "o-", ms=3)
        ax[1].set(title="pre-activation std", xlabel="nonlinearity layer", ylabel="pre-activation std (raw)",
                  ylim=(0, 1.1 * max(1.0, float(numpy.max(d.preact_std)))))
        ax[2].plot(d.index, d.sign_diversity, "o-", ms=3)
        ax[2].set(title="sign diversity", xlabel="nonlinearity layer", ylabel="sign diversity", ylim=(0, 0.52))
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return _finite(g.value, "some GSCs")


def _finite(values: Any, what: str) -> int:
    """Exit status 0 when every value is finite, else 1 with a line on stderr that says so."""
    if numpy.isfinite(values).all():
        return 0
    print(f"nablax: {what} are NaN or infinite (see the table above)", file=sys.stderr)
    return 1


def cmd_shatter(args: argparse.Namespace) -> int:
    """df/dx of a shattered-gradients net on the 1-D grid: ACF at a few lags, co-activity per ReLU layer, a plot."""
    from .metrics import shatter as sh

    given = {k: getattr(args, k) for k in TAKES if getattr(args, k) is not None}
    for k in given:
        if args.arch not in TAKES[k]:
            raise ValueError(f"--{k.replace('_', '-')}: {args.arch} does not take it (only {', '.join(TAKES[k])})")
    bad = [k for k in args.lags if not 0 <= k < sh.GRID_SIZE]
    if bad:
        raise ValueError(f"--lags {' '.join(map(str, bad))}: a lag lies in 0..{sh.GRID_SIZE - 1} (the grid has "
                         f"M = {sh.GRID_SIZE} points)")
    net = build(args.arch, depth=args.depth, seed=args.seed, **given)
    x = sh.grid(kind=args.grid, net=net)
    g = net.backend.asnumpy(sh.grid_gradient(net, x, args.bn_mode))
    print(f"{args.arch}, depth {args.depth}, " + "".join(f"{k} {v}, " for k, v in given.items())
          + f"seed {args.seed}, bn_mode {args.bn_mode}, grid {args.grid} (M = {len(g)}): df/dx mean {g.mean():.6g}, "
          f"std {g.std():.3g}")
    try:
        r = sh.acf(g)
        print("ACF  " + "  ".join(f"lag {k}: {r[k]:+.4f}" for k in args.lags))
    except sh.UndefinedACF as err:
        r = None
        print(f"ACF  undefined: {err}")
    try:
        act = sh.activity(net.forward(x, hold_stats=True))
        print("ReLU layer   active  co-active   (inputs: the grid)")
        for l, a, c in zip(act.layers, act.active, act.coactive):
            print(f"{l:10d}   {a:.3f}   {c:.3f}")
    except ValueError as err:
        act = None
        print(f"activity: {err}")
    if args.plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(16, 3.6), layout="tight")
        ax = fig.subplots(1, 4)
        ax[0].plot(g, lw=0.8)
        ax[0].set(title=f"{args.arch} ({args.depth})", xlabel="grid index", ylabel="df/dx")
        if r is not None:
            ax[1].imshow(sh.covariance_image(g), cmap="gray_r")
            ax[2].plot(r, label=args.arch)
        ax[1].set(title="covariance image")
        ax[2].set(title="autocorrelation", xlabel="lag", ylabel="ACF")
        if act is not None:
            ax[3].plot(act.layers, act.active, "o-", label="active")
            ax[3].plot(act.layers, act.coactive, "s-", label="co-active")
            ax[3].legend()
        ax[3].set(title="ReLU activity on the grid", xlabel="layer", ylim=(0, 1))
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return _finite(g, "some values of df/dx")


def cmd_train(args: argparse.Namespace) -> int:
    """Train one network with per-epoch metrics and checkpoints (``nablax.train``); ``--resume`` continues a run."""
    import dataclasses

    from .train import CHECKPOINT, TrainConfig, Trainer, run

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    given.update(TrainConfig.parse(item) for item in args.set or [])
    if args.cifar and args.data is None and not args.resume:
        given["data"] = "cifar10"
    out = Path(args.out)
    if args.resume:
        stored = Trainer.stored_config(out)
        clash = {k: (stored.get(k), v) for k, v in given.items() if k != "cifar" and stored.get(k) != v}
        if clash:
            raise ValueError(f"{out} holds a run with other settings (stored, given): {clash}; a run's settings are "
                             f"fixed when it starts: for others (more epochs too) start a new run in another --out")
        config = TrainConfig.from_dict({**stored, **given})
    else:
        config = TrainConfig.from_dict(given)
        if (out / CHECKPOINT).exists():
            raise ValueError(f"{out} already holds a run: add --resume to continue it, or choose another --out")
    result = run(config, out, resume=True)
    final = result["final"]
    g4 = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in final.items()}  # all digits: result.json
    print(f"{config.arch} on {config.data}: {result['status']} after {result['epochs']} epoch(s); training error "
          f"{g4['train_error']}, loss {g4['train_loss']}, GSC(L,0) {g4['gsc']}, "
          f"effective depth {final.get('effective_depth')} (eps {config.ed_eps}; sweep {final.get('effective_depth_sweep')})")
    if "taylor" in result:
        print("Taylor: training error vs reduction r: " + " ".join(f"{r}:{e:.3f}" for r, e in
                                                              zip(result["taylor"]["r"], result["taylor"]["error"])))
    print(f"results in {out}/ (metrics.jsonl, arrays.npz, result.json, network.npz)")
    return 0 if result["status"] == "done" else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a grid of training configurations (``nablax.experiments``), skipping finished runs."""
    from .experiments import load_sweep_file, run_sweep

    configs, opts = load_sweep_file(args.config)
    out = args.out or opts.get("out") or "runs"
    kw = {"n_workers": args.workers, "processes": args.processes} if args.executor == "dask" and not args.scheduler else {}
    results = run_sweep(configs, out, executor=args.executor, scheduler=args.scheduler, **kw)
    print(f"{'key':16} {'arch':22} {'lr':>8} {'seed':>4} {'status':9} {'error':>7} {'eff.depth':>9}  skipped")
    for c, r in zip(configs, results):
        f = r["final"]
        print(f"{c.key():16} {c.arch:22} {c.lr:8.3g} {c.seed:4d} {r['status']:9} {f['train_error']:7.4g} "
              f"{str(f.get('effective_depth')):>9}  {r['skipped']}")
    print(f"{len(results)} runs under {out}/ (index.json maps keys to configurations)")
    return 0 if all(r["status"] == "done" for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nablax", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"nablax {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser("figures", help="regenerate the paper figures into a folder")
    f.add_argument("--quick", action="store_true", help="small runs that finish in well under a minute each")
    f.add_argument("--out", default="figures", help="output folder (default: figures/)")
    f.add_argument("--only", nargs="*", help="substrings of <paper>/<figure> to run, e.g. gradients_explode/fig1")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--cifar", metavar="PATH", help="CIFAR-10 for the figures that read data (default: the embedded digits)")
    f.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="numpy (CPU, default) or cupy (GPU)")
    f.add_argument("--root", help="the paper_figures/ folder (default: found from the current directory)")
    f.add_argument("-v", "--verbose", action="store_true", help="show every line the figure scripts print")
    f.set_defaults(func=cmd_figures)

    sub.add_parser("info", help="architectures, backends and the network file format").set_defaults(func=cmd_info)

    g = sub.add_parser("gsc", help="gradients explode: per-layer GSC, pre-activation std and sign diversity at init")
    g.add_argument("--arch", default="batch-ReLU", help="a gradients-explode name: ReLU, layer-ReLU, batch-ReLU, tanh, "
                   "layer-tanh, batch-tanh, SeLU, SeLU wide, or '<norm>-<nonlinearity> (ResNet)' (default batch-ReLU)")
    g.add_argument("--depth", type=int, default=50, help="blocks (default 50)")
    g.add_argument("--width", type=int, default=None, help="default 100 (SeLU wide: 400)")
    g.add_argument("--in-dim", type=int, default=100, help="input dimension (spec input.dim, default 100)")
    g.add_argument("--batch", type=int, default=1000, help="Gaussian-noise points, also the batch-norm batch (default 1000)")
    g.add_argument("--init", default="gaussian", choices=["gaussian", "orthogonal", "looks_linear"],
                   help="looks_linear = the orthogonal initial state (ReLU MLPs)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--method", default="auto", choices=["auto", "exact", "hutchinson"],
                   help="Jacobian norms: auto = exact unless batch-coupled at a large batch")
    g.add_argument("--probes", type=int, default=16, help="Hutchinson probes (default 16)")
    g.add_argument("--reference", default="last_block", choices=["last_block", "last_linear", "output"],
                   help="where GSCs are measured to (spec gsc.reference, default last_block)")
    g.add_argument("--bn-stats", default="batch_differentiated", choices=["batch_differentiated", "batch_constant"],
                   help="batch-norm statistics in the Jacobian: differentiated through (default) or held constant")
    g.add_argument("--plot", help="save GSC, pre-activation std and sign diversity panels to this PNG")
    g.set_defaults(func=cmd_gsc)

    s = sub.add_parser("shatter", help="shattered gradients: df/dx on the 1-D grid, its ACF, co-activity per layer")
    s.add_argument("--arch", default="fnn-bn", help="one-layer, fnn-bn, fnn-no-bn-bias, fnn-no-bn, resnet-bn, "
                   "resnet-no-bn, resnet-bn-2w, resnet-bn-post, highway, crelu-ll, prelu-ll (default fnn-bn)")
    s.add_argument("--depth", type=int, default=24)
    s.add_argument("--beta", type=float, help="residual branch scale (highway: the gate b); default 1; only for "
                   "the nets with residual branches")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bias-std", type=float, help="bias std (one-layer: default 1/sqrt(width); resnet-bn, "
                   "resnet-no-bn: random biases, default none)")
    s.add_argument("--bn-mode", default="constant_stats",
                   choices=["constant_stats", "through_stats", "through_stats_diag"])
    s.add_argument("--grid", default="linspace", choices=["linspace", "arange"])
    s.add_argument("--lags", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32], help="ACF lags to print, each in "
                   "0..M-1 = 0..255 (default 1 2 4 8 16 32)")
    s.add_argument("--plot", help="save a plot (df/dx, covariance image, ACF, activity) to this PNG")
    s.set_defaults(func=cmd_shatter)

    t = sub.add_parser("train", help="gradients explode: train a network with per-epoch metrics, checkpoints, --resume")
    t.add_argument("--arch", help="a gradients-explode name, e.g. batch-tanh, layer-tanh, batch-ReLU, SeLU, "
                   "'batch-ReLU (ResNet)' (default batch-tanh)")
    t.add_argument("--data", choices=["cifar10", "digits", "gaussian"],
                   help="default: the embedded digits, or cifar10 when --cifar is given")
    t.add_argument("--cifar", help="CIFAR-10: cifar-10-python.tar.gz, a folder holding it, or the extracted folder")
    t.add_argument("--backend", choices=["numpy", "cupy"], help="numpy (CPU, default) or cupy (a CUDA GPU)")
    t.add_argument("--depth", type=int, help="blocks (default 50: 51 linear layers with the output layer)")
    t.add_argument("--width", type=int, help="default 100")
    t.add_argument("--epochs", type=int, help="default 500")
    t.add_argument("--lr", type=float, help="step size (default 0.01; divided by 3 on plateaus)")
    t.add_argument("--optimizer", choices=["sgd", "adam", "rmsprop"], help="default sgd")
    t.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    t.add_argument("--batch-size", type=int, help="default 256")
    t.add_argument("--n-train", type=int, help="use only this many training points")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--ed-eps", type=float, help="effective-depth threshold (default 0.01; a sweep is reported too)")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other TrainConfig field, e.g. taylor=false")
    t.add_argument("--out", required=True, help="run folder (metrics.jsonl, arrays.npz, checkpoint.npz, result.json)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.set_defaults(func=cmd_train)

    w = sub.add_parser("sweep", help="run a grid of training configurations (local or Dask), skipping finished runs")
    w.add_argument("config", help="sweep file (JSON or .toml): {\"out\": DIR, \"base\": {...}, \"grid\": {...}}")
    w.add_argument("--executor", choices=["local", "dask"], default="local")
    w.add_argument("--scheduler", help="address of a running Dask scheduler (default: start a LocalCluster)")
    w.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    w.add_argument("--processes", action="store_true", help="LocalCluster workers as processes (default threads)")
    w.add_argument("--out", help="sweep folder (default: the file's \"out\", else runs/)")
    w.set_defaults(func=cmd_sweep)
    for parser in (p, *sub.choices.values()):  # --debug before or after the command; SUPPRESS keeps one given before
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. ``USER_ERRORS`` end it with one line on stderr and status 2 (``--debug``: the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()  # a command owns its process (the setting malloc_tuning, NABLAX_MALLOC_TUNING=0, says no)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
    print(f"nablax: error: {message}", file=sys.stderr)  # after the except block: its progress bars are closed
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
