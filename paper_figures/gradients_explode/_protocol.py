"""The training protocol of the gradients-explode figures (fig2.py, fig3.py panel D, orthogonal_training.py).

Every choice here is ours: spec §9 says the paper's batch size, step sizes, schedule, stopping rule and
preprocessing are unknown. Three scales (``nablax.figures.figure_args`` picks one from the command line):

    quick    a pipeline check, well under a minute a net: digits, 12 blocks of width 32 (ResNets 6 blocks), batch
             128, the step size from {0.01, 0.03, 0.1} by training error after 1 epoch, 6 epochs, 1 seed. Its
             depths and errors say nothing about the paper's claims.
    digits   the default: the papers' architectures at the papers' depths on scikit-learn's embedded digits (1797
             images of 8x8 = 64 features, 10 classes; all of them training data, since the paper reports training
             error), inputs standardised per feature. 50 blocks of width 100 and an output layer (51 linear layers;
             ResNets: an input layer, 25 blocks of two linear layers and an output layer), plain SGD with batch 64
             (28 steps an epoch: a smaller batch than CIFAR-10's 256 buys more steps for the same arithmetic,
             and effective depth grows with the steps taken), the step size from the x3 grid 1e-3 ... 1 by
             training error after 5 epochs (seed 0's choice is used for every seed), then 40 epochs with the
             step size divided by 3 after 5 epochs without a 1% improvement of the training error; GSC on 1000
             fixed training points; seeds 0, 1, 2 (two until 2026-12-06). 40 epochs keeps each figure under an
             hour on 2 cores: in an 80-epoch run (git history of RESULTS.md) training error, GSC and effective
             depth were flat after epoch 36, and the step-size schedule depends only on the errors so far. (In
             the 40-epoch run of RESULTS.md, batch-ReLU's search picked a larger step size, and its effective
             depth still rises slowly at epoch 40. Batch-ReLU fails to train at every step size of the grid, and
             its search errors move by up to 0.1 with the rounding alone (BLAS threads, BLAS kernels), so its
             pick is fragile; RESULTS.md gives the measurements. The Dask workers run one BLAS thread each, which keeps a rerun of
             the same code on the same machine bit-identical.)
    cifar    the paper's data (``--cifar PATH``), spec §9's project defaults: CIFAR-10 flattened to 3072 features,
             50 blocks of width 100 (ResNets 25 blocks), batch 256, the x3 grid 1e-4 ... 1 after 5 epochs, up to
             500 epochs, 1 seed. Days of CPU time.

Every run goes through the experiment runner (``nablax.experiments.run_sweep``), keyed by its configuration under the
figure's run folder, checkpointed every epoch: an interrupted figure resumes, and finished runs are skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy

from nablax.experiments import lr_grid, make_executor, pick_lr, run_sweep, search_configs
from nablax.figures import blas_threads, require_cifar, sweep_executor
from nablax.records import run_machines
from nablax.train import NOT_IN_KEY, TrainConfig, load_run

PROTOCOLS: dict[str, dict[str, Any]] = {
    "quick": {"data": "digits", "depth": 12, "resnet_depth": 6, "width": 32, "batch_size": 128, "epochs": 6,
              "eval_batch": 500, "patience": 3, "lr": 0.01, "lr_grid": [0.01, 0.03, 0.1], "search_epochs": 1,
              "seeds": 1},
    "digits": {"data": "digits", "depth": 50, "resnet_depth": 25, "width": 100, "batch_size": 64, "epochs": 40,
               "eval_batch": 1000, "patience": 5, "lr_grid": lr_grid(1e-3, 1.0), "search_epochs": 5, "seeds": 3},
    "cifar": {"data": "cifar10", "depth": 50, "resnet_depth": 25, "width": 100, "batch_size": 256, "epochs": 500,
              "eval_batch": 1000, "lr_grid": lr_grid(1e-4, 1.0), "search_epochs": 5, "seeds": 1},
}
DESCRIPTIONS = {"quick": "quick (digits, pipeline check)", "digits": "paper depths on digits",
                "cifar": "CIFAR-10 (spec §9 project defaults)"}
NOT_CONFIG = ("resnet_depth", "lr_grid", "search_epochs", "seeds")  # protocol keys that are not TrainConfig fields

FIG3_RESNETS = ["layer-ReLU (ResNet)", "batch-ReLU (ResNet)", "layer-tanh (ResNet)", "batch-tanh (ResNet)",
                "layer-SeLU (ResNet)"]


def protocol(scale: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The protocol of a scale, with ``overrides`` (TrainConfig fields, or ``lr_grid`` (None: no search, the
    config's ``lr``), ``search_epochs``, ``seeds``, ``resnet_depth``) on top."""
    if scale not in PROTOCOLS:
        raise ValueError(f"scale must be one of {tuple(PROTOCOLS)}, got {scale!r}")
    return {**PROTOCOLS[scale], **(overrides or {})}


def figure_runs(variants: dict[str, dict[str, Any]], out: str | Path, scale: str, *, seed: int = 0,
                seeds: int | None = None, cifar: str | None = None, backend: str = "numpy", executor: Any = "local",
                overrides: dict[str, Any] | None = None, progress: bool = True
                ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Train every variant (legend -> TrainConfig fields, at least ``arch``) with the protocol of ``scale``, for
    ``seeds`` seeds from ``seed`` (default: the protocol's number), and return ``({legend: [nablax.train.load_run(...) per seed]}, protocol settings)``.

    The step size of each variant is searched once, on the first seed (``out/lr_search``), then every seed
    trains with it (``out/runs``). ``executor``: "local", "dask" or an executor object (see nablax.experiments)."""
    out = Path(out)
    proto = protocol(scale, {**({"seeds": seeds} if seeds else {}), **(overrides or {})})
    grid, search_epochs = proto["lr_grid"], int(proto["search_epochs"])
    seeds = [seed + i for i in range(int(proto["seeds"]))]
    base = {k: v for k, v in proto.items() if k not in NOT_CONFIG}
    base.update(cifar=cifar, backend=backend)

    def config(fields: dict[str, Any], s: int) -> TrainConfig:
        depth = proto["resnet_depth"] if fields["arch"].endswith("(ResNet)") else base["depth"]
        return TrainConfig.from_dict({**base, "depth": depth, **fields, "seed": s})

    first = {legend: config(fields, seeds[0]) for legend, fields in variants.items()}
    ex = make_executor(executor) if isinstance(executor, str) else executor
    chosen: dict[str, Any] = {}
    try:
        if grid:
            trials = {legend: search_configs(c, list(grid), search_epochs) for legend, c in first.items()}
            flat = run_sweep([t for ts in trials.values() for t in ts], out / "lr_search", executor=ex,
                             progress=progress)
            for i, (legend, ts) in enumerate(trials.items()):
                lr, table = pick_lr(ts, flat[i * len(grid):(i + 1) * len(grid)])
                chosen[legend] = {"lr": lr, "table": table}
        configs = {(legend, s): dataclasses.replace(config(fields, s), **({"lr": chosen[legend]["lr"]} if grid else {}))
                   for legend, fields in variants.items() for s in seeds}
        run_sweep(list(configs.values()), out / "runs", executor=ex, progress=progress)
    finally:
        if isinstance(executor, str):
            ex.close()
    runs = {legend: [load_run(out / "runs" / configs[(legend, s)].key()) for s in seeds] for legend in variants}
    c0 = next(iter(configs.values()))
    settings = {"protocol": DESCRIPTIONS[scale], "scale": scale, "seeds": seeds,
                "config": {k: v for k, v in c0.to_dict().items() if k not in ("arch", "lr", "seed", *NOT_IN_KEY)},
                "variants": variants, "lr_grid": grid, "lr_search_epochs": search_epochs if grid else None,
                "lr_search": chosen or None,
                "run_machines": run_machines(r["result"] for rs in runs.values() for r in rs),
                "ours": "every protocol choice is a project choice (spec §9: the paper's batch size, step sizes, "
                        "schedule and preprocessing are unknown); see paper_figures/gradients_explode/_protocol.py"}
    return runs, settings


DATA_NAMES = {"quick": "digits (quick)", "digits": "digits", "cifar": "CIFAR-10"}


def figure_runs_for(args: Any, variants: dict[str, dict[str, Any]], folder: str,
                    overrides: dict[str, Any] | None = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """``figure_runs`` for a figure script's command line (``nablax.figures.figure_args(..., data=True,
    sweep=True)``): CIFAR-10 checked first when given, the executor it asks for (closed afterwards), runs under
    ``args.out/folder``."""
    require_cifar(args, (overrides or {}).get("cifar_md5"))
    ex = sweep_executor(args)
    try:
        with blas_threads(args.quick):
            return figure_runs(variants, Path(args.out) / folder, args.scale, seed=args.seed, seeds=args.seeds,
                               cifar=args.cifar, backend=args.backend, executor=ex, overrides=overrides)
    finally:
        if ex != "local":
            ex.close()


def over_seeds(runs: list[dict[str, Any]], key: str, geometric: bool = False) -> dict[str, Any]:
    """A per-epoch history value over the seeds' runs: ``x`` (epochs), ``y`` (the mean, or the geometric mean),
    ``lo``/``hi`` (min..max) and ``per_seed``, over the epochs that every seed reached (a diverged run stops)."""
    n = min(len(r["history"]) for r in runs)
    a = numpy.array([[numpy.nan if h.get(key) is None else h[key] for h in r["history"][:n]] for r in runs],
                    dtype=float)
    with numpy.errstate(divide="ignore", invalid="ignore"):
        mid = numpy.exp(numpy.log(a).mean(axis=0)) if geometric else a.mean(axis=0)
    return {"x": [h["epoch"] for h in runs[0]["history"][:n]], "y": mid, "lo": a.min(axis=0), "hi": a.max(axis=0),
            "per_seed": a}


def eps_sweep(runs: list[dict[str, Any]]) -> dict[str, list[list[int]]]:
    """Effective depth per epoch at every threshold of the sweep, per seed: {eps: [[depth per epoch] per seed]}."""
    return {e: [[h["effective_depth_sweep"][e] for h in r["history"]] for r in runs]
            for e in runs[0]["history"][-1]["effective_depth_sweep"]}


def resnet_training_panel(record: Any, runs: dict[str, list[dict[str, Any]]], panel: str = "D", ax: Any = None,
                          colors: dict[str, str] | None = None) -> None:
    """Fig. 3's training panel from the ResNets' runs (``figure_runs``): effective depth against epoch, one series
    per architecture (the mean over seeds with min..max, the per-seed values, the threshold sweep and the final
    training errors), added to the ``nablax.figures.FigureRecord`` ``record`` and drawn on ``ax`` if given."""
    record.panel(panel, "effective depth during training", "epoch", "effective depth")
    for arch, rs in runs.items():
        s = over_seeds(rs, "effective_depth")
        record.add(panel, arch, s["x"], s["y"], s["lo"], s["hi"], per_seed=s["per_seed"], eps_sweep=eps_sweep(rs),
                   final_train_error=[r["history"][-1]["train_error"] for r in rs])
    if ax is not None:
        draw_depths(ax, record.panels[panel], colors or {})


def draw_depths(ax: Any, panel: dict[str, Any], colors: dict[str, str]) -> None:
    """Effective depth against epoch: integer steps, each series nudged vertically by a few hundredths so that
    equal depths stay visible (the JSON holds the exact values), with its min..max band over seeds."""
    n = len(panel["series"])
    for i, (name, s) in enumerate(panel["series"].items()):
        x, y = numpy.asarray(s["x"], dtype=float), numpy.asarray(s["y"], dtype=float)
        nudge = 0.06 * (i - (n - 1) / 2)
        line, = ax.step(x, y + nudge, where="post", color=colors.get(name), label=name, lw=1.5)
        if "lo" in s and len(s.get("per_seed", [])) > 1:
            ax.fill_between(x, numpy.asarray(s["lo"], dtype=float) + nudge, numpy.asarray(s["hi"], dtype=float) + nudge,
                            step="post", color=line.get_color(), alpha=0.15, lw=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set(title=panel["title"], xlabel=panel["xlabel"], ylabel=panel["ylabel"])
    ax.legend(fontsize=7)
