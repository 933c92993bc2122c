"""Minibatch training with per-epoch measurements, checkpoints and exact resumption (gradients-explode spec §9).

    cfg = TrainConfig(arch="batch-tanh", data="digits", depth=10, width=32, epochs=5, lr=0.01)
    trainer = Trainer(cfg, out="runs/bt")        # or Trainer.resume("runs/bt")
    trainer.fit()                                # tqdm bars (steps, measurements); one checkpoint per epoch

One step on a minibatch (X, y):  forward at θ(t) with batch statistics (running statistics updated), the mean
softmax cross-entropy E, dE/dθ by ``Trace.backward``, the optimiser's step (SGD with momentum, Adam, RMSprop), and
the callbacks (``metrics.training.TrainingCallback``) before and after it.

Per epoch (epoch 0 is the network at θ(0)), written to ``metrics.jsonl`` (one JSON object per epoch) and
``arrays.npz`` (per-epoch arrays stacked along axis 0):
    train_error, train_loss   over the whole training set (``Trainer.evaluate``; spec §9)
    gsc                       GSC(L, 0) from ``gsc.bottom`` to the error layer on a fixed subset of ``eval_batch``
                              training points (``Trainer.gsc``); the array ``gsc_positions`` holds GSC(p, 0) at
                              every position
    relative_update, bound    per linear layer, averaged over the epoch's steps (``metrics.training.UpdateSizes``)
    residual_opnorm(_rel)     ||W_i(t) - W_i(0)||_2 (and / ||W_i(0)||_2) per linear layer (spec §2.10)
    effective_depth           at the threshold ``ed_eps`` and swept over ``ed_eps_grid``; the array
                              ``lambda_contributions`` is C[λ] (``metrics.effective_depth.EffectiveDepth``)
    lr                        the step size used during the epoch
At the end: ``network.npz`` (θ(T)), the Taylor experiment (``metrics.taylor``) and ``result.json`` (with
``machine``: ``records.machine()``, the versions, settings and BLAS kernels used).

Step-size schedule (spec §9 project default; the paper's is unknown): divide the step size by ``lr_decay`` (3) when
the training error has not improved by the relative margin ``plateau_tol`` for ``patience`` epochs.
``grid_search_lr`` picks the step size from a x3 grid by the training error after a few epochs.

Resumption: ``checkpoint.npz`` (no pickles) holds the parameters, θ(0), the batch-norm running statistics, the
optimiser's buffers, the shuffling generator's state, the schedule, the history and every callback's
accumulators, written atomically after every epoch. A run killed at any point and resumed from it ends with
results identical, bit for bit, to an uninterrupted run with the same seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
from tqdm import tqdm

from .architectures import ARCHITECTURES, build, unknown_architecture
from .data import Dataset, batch_slices, load_dataset
from .fastpath import blas_threads
from .losses import SoftmaxCrossEntropy
from .metrics.effective_depth import DEFAULT_EPS, EPS_GRID, EffectiveDepth
from .metrics.gsc import AGGREGATIONS, gsc_to_error
from .metrics.jacobian import BOTTOMS, bottom_position
from .metrics.taylor import taylor_errors
from .metrics.training import Step, TrainingCallback, UpdateSizes, residual_opnorms
from .optim import make_optimizer
from .performance import current
from .records import config_key, jsonable, machine, write_atomic

CHECKPOINT = "checkpoint.npz"
NOT_IN_KEY = ("cifar", "cifar_md5")  # where the data lives (and its expected checksum) does not change a result


@dataclass
class TrainConfig:
    """Everything that determines a run. Defaults are the spec §9 project protocol (the paper's own settings are
    unknown). ``head`` (ResNets: a final norm -> nonlinearity before the output, spec §8.2) defaults to present;
    ``beta`` scales residual branches (1: the plain ResNet). ``cifar`` is the path of the CIFAR-10 archive and
    ``cifar_md5`` its expected MD5 (default: the published one; only for test archives); neither is part of the
    run's key."""

    arch: str = "batch-tanh"
    data: str = "digits"
    depth: int = 50
    width: int = 100
    init: str = "gaussian"
    head: bool = True
    beta: float = 1.0
    norm_affine: bool = False
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    batch_size: int = 256
    epochs: int = 500
    seed: int = 0
    n_train: int | None = None
    drop_last: bool = True
    lr_decay: float = 3.0
    patience: int = 5
    plateau_tol: float = 0.01
    eval_batch: int = 1000
    gsc_bottom: str = "linear1"
    gsc_aggregation: str = "per_example_geomean"
    measure_effective_depth: bool = True
    ed_eps: float = DEFAULT_EPS
    ed_eps_grid: list[float] = field(default_factory=lambda: list(EPS_GRID))
    ed_accumulate: str = "sum_of_norms"
    ed_layer_weight: str = "one"
    ed_every: int = 1
    update_norm: str = "fro"
    bound_scale: float = 1.0
    taylor: bool = True
    taylor_block_end: str = "linear_output"
    taylor_bn_stats: str = "batch_differentiated"
    taylor_top_bn: str = "batch"
    dtype: str = "float64"
    backend: str = "numpy"
    cifar: str | None = None
    cifar_md5: str | None = None

    def __post_init__(self) -> None:
        """Refuse a value of the wrong type (by the field's annotation; floats must be finite) or out of range."""
        for name, tp in _field_types().items():
            value = getattr(self, name)
            if not _is_a(value, tp):
                raise ValueError(f"{name} must be {_describe(tp)}, got {value!r}")
        if self.arch not in ARCHITECTURES:
            raise unknown_architecture(self.arch)
        for name, choices in (("gsc_bottom", BOTTOMS), ("gsc_aggregation", AGGREGATIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        for name in ("lr", "epochs", "lr_decay", "eval_batch", "depth", "width", "ed_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("batch_size", "n_train"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2 (training skips batches of one point), "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def parse(cls, setting: str) -> tuple[str, Any]:
        """``"KEY=VALUE"`` (``nablax train --set``) as (field, value of the field's type): bool takes
        true/false, yes/no, on/off, 1/0 (any case); int and float parse or are refused; an optional field takes
        none/null; a list takes comma-separated items, in brackets or not."""
        key, eq, text = setting.partition("=")
        types = _field_types()
        if not eq or key not in types:
            raise ValueError(f"--set takes KEY=VALUE with KEY a training option ({', '.join(types)}), got {setting!r}")
        return key, _parse_as(key, text.strip(), types[key])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def key_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in NOT_IN_KEY}

    def key(self) -> str:
        """A stable hash of everything that determines the result (``nablax.records.config_key``)."""
        return config_key(self.key_dict())


@functools.lru_cache(maxsize=None)
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _optional(tp: Any) -> Any | None:
    """X for ``X | None``, else None."""
    args = typing.get_args(tp)
    return next(a for a in args if a is not type(None)) if type(None) in args else None


def _is_a(value: Any, tp: Any) -> bool:
    if _optional(tp) is not None:
        return value is None or _is_a(value, _optional(tp))
    if typing.get_origin(tp) is list:
        return isinstance(value, (list, tuple)) and all(_is_a(v, typing.get_args(tp)[0]) for v in value)
    numbers = {int: (int, numpy.integer), float: (int, float, numpy.integer, numpy.floating)}
    if tp in numbers:  # a bool is an int to Python, not to a training option
        return isinstance(value, numbers[tp]) and not isinstance(value, bool) and (tp is int or math.isfinite(value))
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if _optional(tp) is not None:
        return f"{_describe(_optional(tp))} or None"
    if typing.get_origin(tp) is list:
        return f"a list, each {_describe(typing.get_args(tp)[0])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[tp]


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _parse_as(key: str, text: str, tp: Any) -> Any:
    """``text`` as a value of the type ``tp`` (``TrainConfig.parse``)."""
    if _optional(tp) is not None:
        return None if text.lower() in ("none", "null") else _parse_as(key, text, _optional(tp))
    if typing.get_origin(tp) is list:
        items = text.removeprefix("[").removesuffix("]").split(",")
        return [_parse_as(key, item.strip(), typing.get_args(tp)[0]) for item in items if item.strip()]
    try:
        return _BOOLS[text.lower()] if tp is bool else tp(text)
    except (KeyError, ValueError):
        raise ValueError(f"{key} must be {_describe(tp)}"
                         f"{' (yes/no, on/off, 1/0)' if tp is bool else ''}, got {text!r}") from None


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@functools.lru_cache(maxsize=4)
def _dataset(data: str, cifar: str | None, md5: str | None, n_train: int | None, seed: int, dtype: str) -> Dataset:
    return load_dataset(data, cifar=cifar, n_train=n_train, seed=seed, dtype=dtype, **({"md5": md5} if md5 else {}))


def dataset_for(config: TrainConfig) -> Dataset:
    """The (cached) data set of a configuration."""
    return _dataset(config.data, config.cifar, config.cifar_md5, config.n_train, config.seed, config.dtype)


def progress_bar(desc: str, show: bool, unit: str, **kw: Any) -> Any:
    """A tqdm bar on stderr (``show=False``: a silent one)."""
    return tqdm(desc=desc, unit=unit, file=sys.stderr, disable=not show, **kw)


def default_callbacks(config: TrainConfig) -> list[TrainingCallback]:
    cbs: list[TrainingCallback] = [UpdateSizes(config.update_norm, config.bound_scale)]
    if config.measure_effective_depth:
        cbs.append(EffectiveDepth(config.ed_eps, tuple(config.ed_eps_grid), config.ed_accumulate,
                                  config.ed_layer_weight, config.ed_every))
    return cbs


class Trainer:
    """One training run of a ``TrainConfig``; ``out`` (optional) is its folder for results and checkpoints."""

    def __init__(self, config: TrainConfig, *, data: Dataset | None = None, out: str | Path | None = None,
                 callbacks: list[TrainingCallback] | None = None, progress: bool = True) -> None:
        self.config = c = config
        self.data = data if data is not None else dataset_for(c)
        if self.data.y_train is None:
            raise ValueError(f"data set {self.data.name!r} has no labels to train on")
        self.net = build(c.arch, depth=c.depth, width=c.width, in_dim=self.data.in_dim, out_dim=self.data.n_classes,
                         init=c.init, seed=c.seed, dtype=c.dtype, backend=c.backend, norm_affine=c.norm_affine, beta=c.beta,
                         **({"head": c.head} if c.arch.endswith("(ResNet)") else {}))
        self.params0 = self.net.copy_params()
        self.opt = make_optimizer(c.optimizer, c.lr, **({"momentum": c.momentum} if c.optimizer == "sgd" else {}))
        self.rng = numpy.random.default_rng([c.seed, 1])  # minibatch order; the weights used stream [seed]
        self.loss = SoftmaxCrossEntropy()
        self.callbacks = default_callbacks(c) if callbacks is None else list(callbacks)
        self.progress = progress
        n = self.data.n_train
        self.eval_idx = numpy.sort(numpy.random.default_rng([c.seed, 2]).permutation(n)[: min(c.eval_batch, n)])
        self.batch_size = min(c.batch_size, n)
        self.bottom = bottom_position(self.net, c.gsc_bottom)
        self.epoch, self.steps, self.status = 0, 0, "running"
        self.history: list[dict[str, Any]] = []
        self.arrays: dict[str, list[numpy.ndarray]] = {}
        self.schedule = {"best_error": None, "bad_epochs": 0, "n_decays": 0}
        self.out = Path(out) if out is not None else None
        self._started = False

    # -- the training loop ----------------------------------------------------------------------------
    def _xy(self, idx: Any) -> tuple[Any, Any]:
        xp = self.net.backend.xp
        return xp.asarray(self.data.x_train[idx]), xp.asarray(self.data.y_train[idx])

    def loss_and_grads(self, x: Any, y: Any, update_stats: bool = False) -> tuple[float, dict[str, Any], Any, Any]:
        """(E, dE/dθ, trace, dE/d(output)) of the minibatch (x, y) at the current parameters, training mode."""
        tr = self.net.forward(x, train=True, update_stats=update_stats)
        e = self.loss.value(tr.output, y)
        g = self.loss.grad(tr.output, y)
        _, grads = tr.backward(g, input_grad=False)
        return e, grads, tr, g

    def train_step(self, x: Any, y: Any) -> float:
        e, grads, tr, g = self.loss_and_grads(x, y, update_stats=True)
        if not math.isfinite(e):
            raise Diverged(f"loss is {e} at step {self.steps}")
        step = Step(tr, g, e, grads, self.opt.lr, self.steps)
        for cb in self.callbacks:
            cb.before_step(self, step)
        self.opt.step(self.net.named_params(), grads)
        for cb in self.callbacks:
            cb.after_step(self, step)
        self.steps += 1
        return e

    def _batches(self) -> list[numpy.ndarray]:
        n, bs = self.data.n_train, self.batch_size
        perm = self.rng.permutation(n)
        stop = (n // bs) * bs if self.config.drop_last else n
        return [perm[i:i + bs] for i in range(0, stop, bs) if len(perm[i:i + bs]) > 1]

    def train_epoch(self) -> None:
        bar = progress_bar(f"epoch {self.epoch + 1}", self.progress, "step", iterable=self._batches(), leave=False)
        for idx in bar:
            e = self.train_step(*self._xy(idx))
            bar.set_postfix(loss=f"{e:.4f}", refresh=False)

    def fit(self, epochs: int | None = None, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train up to ``epochs`` (default: the config's). ``stop_after`` stops once that many epochs are done
        (as if the process were killed after that checkpoint). Returns the result when the run finished. The BLAS
        runs on ``nablax.settings().train_threads`` threads meanwhile (one by default: two lose up to 3x when another
        process keeps a core busy; BENCHMARKS.md, "Threads on a shared machine")."""
        with blas_threads(current().train_threads):
            return self._fit(self.config.epochs if epochs is None else epochs, stop_after)

    def _fit(self, epochs: int, stop_after: int | None) -> dict[str, Any] | None:
        self._start()
        bar = progress_bar(self.config.arch, self.progress, "epoch", total=epochs, initial=self.epoch)
        while self.epoch < epochs and self.status == "running":
            if stop_after is not None and self.epoch >= stop_after:
                bar.close()
                return None
            lr = self.opt.lr
            try:
                self.train_epoch()
            except Diverged:
                self.status = "diverged"
            self.epoch += 1
            rec = self._end_epoch(lr)
            bar.update(1)
            bar.set_postfix(err=f"{rec['train_error']:.3f}", lr=f"{lr:.3g}", ed=rec.get("effective_depth"),
                            refresh=False)
        bar.close()
        return self.finish()

    def _start(self) -> None:
        if self._started:
            return
        for cb in self.callbacks:
            cb.start(self)
        self._started = True
        if not self.history:
            if self.out is not None:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1, sort_keys=True))
                self.net.save(self.out / "network_init.npz")
            self._end_epoch(None)

    # -- measurements ---------------------------------------------------------------------------------
    def evaluate(self, x: Any = None, y: Any = None, bar: Any = None) -> tuple[float, float]:
        """(classification error, mean loss) over (x, y) (default: the training set) in evaluation batches of the
        training batch size (``data.batch_slices``), fixed order, batch statistics (running statistics untouched);
        ``bar``, a tqdm bar, advances by one per batch."""
        xp = self.net.backend.xp
        x = self.data.x_train if x is None else x
        y = self.data.y_train if y is None else y
        n, wrong, total = len(y), 0.0, 0.0
        for rows in batch_slices(n, self.batch_size):
            xb, yb = xp.asarray(x[rows]), xp.asarray(y[rows])
            out = self.net(xb, train=True)
            wrong += float((out.argmax(axis=1) != yb).sum())
            total += self.loss.value(out, yb) * len(yb)
            if bar is not None:
                bar.update()
        return wrong / n, total / n

    def gsc(self) -> numpy.ndarray:
        """GSC(p, 0) for every position p on the fixed evaluation subset, by one backward pass
        (``metrics.gsc.gsc_to_error``; NaN where undefined: a non-finite error, or every error exactly 0): per
        example, aggregated by ``gsc_aggregation`` (default the geometric mean; batch statistics held constant,
        examples with an error of exactly 0 left out), or batch-level when ``gsc_aggregation="batch"``."""
        x, y = self._xy(self.eval_idx)
        agg = self.config.gsc_aggregation
        tr = self.net.forward(x, train=True, hold_stats=agg != "batch")
        errors = self.loss.values(tr.output, y)
        e = self.net.backend.asnumpy(errors)
        if not (numpy.all(numpy.isfinite(e)) and numpy.any(e > 0)):
            return numpy.full(len(tr.values), numpy.nan)
        return gsc_to_error(tr, len(y) * self.loss.grad(tr.output, y), errors, aggregation=agg).value

    def _end_epoch(self, lr: float | None) -> dict[str, Any]:
        n_batches = len(batch_slices(self.data.n_train, self.batch_size))
        bar = progress_bar(f"epoch {self.epoch} measurements", self.progress, "step",
                           total=n_batches + 2 + len(self.callbacks), leave=False)
        bar.set_postfix_str("training error", refresh=False)
        err, loss = self.evaluate(bar=bar)
        if not math.isfinite(loss):
            self.status = "diverged"
        bar.set_postfix_str("GSC")
        gsc = self.gsc()
        bar.update()
        bar.set_postfix_str("operator norms")
        opnorm, opnorm_rel = residual_opnorms(self.net, self.params0)
        bar.update()
        rec: dict[str, Any] = {"epoch": self.epoch, "steps": self.steps, "lr": lr, "train_error": err,
                               "train_loss": loss, "gsc": float(gsc[self.bottom]), "status": self.status}
        arrays = {"gsc_positions": gsc, "residual_opnorm": opnorm, "residual_opnorm_rel": opnorm_rel}
        for cb in self.callbacks:
            bar.set_postfix_str(cb.name or type(cb).__name__)
            scalars, arrs = cb.end_epoch(self)
            rec.update(scalars)
            arrays.update(arrs)
            bar.update()
        bar.close()
        self.history.append(jsonable(rec))
        for k, v in arrays.items():
            self.arrays.setdefault(k, []).append(numpy.asarray(v, dtype=float))
        self._schedule(err)
        self.save()
        return rec

    def _schedule(self, err: float) -> None:
        s, c = self.schedule, self.config
        if s["best_error"] is None or err < s["best_error"] * (1 - c.plateau_tol):
            s["best_error"], s["bad_epochs"] = err, 0
            return
        s["bad_epochs"] += 1
        if s["bad_epochs"] >= c.patience:
            self.opt.lr /= c.lr_decay
            s["bad_epochs"] = 0
            s["n_decays"] += 1

    def finish(self) -> dict[str, Any]:
        """Taylor experiment, final network and ``result.json``."""
        c = self.config
        if self.status == "running":
            self.status = "done"
        result: dict[str, Any] = {"key": c.key(), "config": c.to_dict(), "status": self.status, "epochs": self.epoch,
                                  "steps": self.steps, "final": self.history[-1], "machine": machine()}
        if c.taylor and self.status == "done":
            t = taylor_errors(self.net, self.params0, *self._xy(slice(None)), loss=self.loss,
                              batch_size=self.batch_size, block_end=c.taylor_block_end, bn_stats=c.taylor_bn_stats,
                              top_bn=c.taylor_top_bn)
            result["taylor"] = {k: getattr(t, k) for k in ("r", "k", "error", "loss", "error_original", "settings")}
        ed = next((cb for cb in self.callbacks if isinstance(cb, EffectiveDepth)), None)
        if ed is not None:
            result["effective_depth_settings"] = ed.settings()
        result = jsonable(result)
        if self.out is not None:
            self.net.save(self.out / "network.npz")
            (self.out / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        return result

    # -- checkpoints ----------------------------------------------------------------------------------
    def save(self) -> None:
        """Write metrics.jsonl, arrays.npz and checkpoint.npz (each atomically) if the run has a folder."""
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history))
        stacked = {k: numpy.stack(v) for k, v in self.arrays.items()}
        write_atomic(self.out / "arrays.npz", lambda fh: numpy.savez(fh, **stacked))
        arrays, meta = self._state()
        arrays["__meta__"] = numpy.array(json.dumps(meta, sort_keys=True))
        write_atomic(self.out / CHECKPOINT, lambda fh: numpy.savez(fh, **arrays))

    def _state(self) -> tuple[dict[str, numpy.ndarray], dict[str, Any]]:
        host, opt = self.net.backend.asnumpy, self.opt.state_dict()
        groups = {"param": self.net.named_params(), "param0": self.params0, "state": self.net.named_state(),
                  **{f"opt/{kind}": bufs for kind, bufs in opt["buffers"].items()}}
        arrays = {f"{group}/{k}": host(v) for group, named in groups.items() for k, v in named.items()}
        cb_json: dict[str, dict[str, Any]] = {}
        for cb in self.callbacks:
            for k, v in cb.state_dict().items():
                if hasattr(v, "shape"):
                    arrays[f"cb/{cb.name}/{k}"] = host(v)
                else:
                    cb_json.setdefault(cb.name, {})[k] = v
        arrays.update({f"hist/{k}": numpy.stack(v) for k, v in self.arrays.items()})
        meta = {"config": self.config.key_dict(), "epoch": self.epoch, "steps": self.steps, "status": self.status,
                "opt": {"lr": opt["lr"], "t": opt["t"]}, "rng": self.rng.bit_generator.state,
                "schedule": self.schedule, "history": self.history, "callbacks": cb_json}
        return arrays, meta

    @classmethod
    def resume(cls, out: str | Path, *, data: Dataset | None = None, callbacks: list[TrainingCallback] | None = None,
               progress: bool = True, **where: Any) -> "Trainer":
        """The run in folder ``out`` at its last checkpoint (the configuration is read from ``config.json``);
        ``where`` may point ``cifar`` / ``cifar_md5`` elsewhere (they are not part of the result)."""
        out = Path(out)
        config = TrainConfig.from_dict(cls.stored_config(out))
        for k, v in where.items():
            if k not in NOT_IN_KEY:
                raise ValueError(f"resume can only change {NOT_IN_KEY}, not {k!r}")
            if v is not None:
                setattr(config, k, v)
        trainer = cls(config, data=data, out=out, callbacks=callbacks, progress=progress)
        trainer.load_checkpoint(out / CHECKPOINT)
        return trainer

    @staticmethod
    def stored_config(out: str | Path) -> dict[str, Any]:
        """The configuration of the run in folder ``out`` (its ``config.json``), or FileNotFoundError when there is
        no run to resume there (no folder, or no checkpoint yet), or ValueError when the file is not valid JSON."""
        out = Path(out)
        if not out.is_dir():
            raise FileNotFoundError(f"cannot resume: there is no run folder {out}")
        if not (out / CHECKPOINT).is_file() or not (out / "config.json").is_file():
            raise FileNotFoundError(f"cannot resume: {out} holds no {CHECKPOINT} and config.json (no epoch was "
                                    f"checkpointed there); start the run without resuming")
        try:
            return json.loads((out / "config.json").read_text())
        except ValueError as err:
            raise ValueError(f"cannot resume: {out / 'config.json'} is not valid JSON ({err})") from None

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state saved by ``save``; a file that cannot be read raises ValueError, which names it."""
        xp = self.net.backend.xp
        try:
            with numpy.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("__meta__")))
        except FileNotFoundError:
            raise
        except Exception as err:  # a truncated or overwritten file: BadZipFile, zlib.error, KeyError, ValueError, ...
            raise ValueError(f"{path} is damaged and cannot be resumed from ({type(err).__name__}: {err}); "
                             f"delete it to start the run over") from err
        if meta["config"] != jsonable(self.config.key_dict()):
            raise ValueError(f"{path}: the checkpoint belongs to a different configuration")

        def group(prefix: str, to: Any = xp.asarray) -> dict[str, Any]:
            return {k[len(prefix):]: to(v) for k, v in arrays.items() if k.startswith(prefix)}

        self.net.set_params(group("param/"))
        for target, prefix in ((self.params0, "param0/"), (self.net.named_state(), "state/")):
            for k, v in group(prefix).items():
                target[k][...] = v
        buffers: dict[str, dict[str, Any]] = {}
        for k, v in group("opt/").items():
            kind, _, name = k.partition("/")
            buffers.setdefault(kind, {})[name] = v
        self.opt.load_state_dict({"lr": meta["opt"]["lr"], "t": meta["opt"]["t"], "buffers": buffers})
        self.rng.bit_generator.state = meta["rng"]
        self.epoch, self.steps, self.status = meta["epoch"], meta["steps"], meta["status"]
        self.schedule, self.history = meta["schedule"], meta["history"]
        self.arrays = group("hist/", list)  # per-epoch arrays stay on the host
        for cb in self.callbacks:
            cb.start(self)
            cb.load_state_dict({**meta["callbacks"].get(cb.name, {}), **group(f"cb/{cb.name}/")})
        self._started = True
        self.save()  # rewrite metrics.jsonl and arrays.npz from the checkpoint (drops anything written after it)


def run(config: TrainConfig, out: str | Path, *, resume: bool = True, data: Dataset | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Run ``config`` in folder ``out``: return the stored result if it finished, resume from its checkpoint if it
    has one (``resume=True``), else start fresh."""
    out = Path(out)
    if (out / "result.json").exists() and resume:
        result = json.loads((out / "result.json").read_text())
        if result["key"] != config.key():
            raise ValueError(f"{out} holds a finished run of a different configuration")
        return result
    if (out / CHECKPOINT).exists():
        if not resume:
            raise FileExistsError(f"{out} holds a run already: resume it, or choose another folder")
        trainer = Trainer.resume(out, data=data, progress=progress, cifar=config.cifar, cifar_md5=config.cifar_md5)
        if trainer.config.key() != config.key():
            raise ValueError(f"{out} holds a run of a different configuration")
    else:
        trainer = Trainer(config, data=data, out=out, progress=progress)
    return trainer.fit()


def load_run(out: str | Path) -> dict[str, Any]:
    """A run folder's records: ``history`` (list of per-epoch dicts), ``arrays`` (stacked per epoch), ``result``."""
    out = Path(out)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    with numpy.load(out / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else None
    return {"history": history, "arrays": arrays, "result": result, "dir": str(out)}


__all__ = ["TrainConfig", "Trainer", "Diverged", "run", "load_run", "dataset_for", "default_callbacks"]
