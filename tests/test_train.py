"""Training: the loss goes down on digits for every architecture, gradients inside a step match finite
differences, per-epoch metrics against closed forms, the schedule, kill-and-resume is bit-identical, the CLI, and
the per-example GSC. The figures' protocols are tested in test_figure_protocols.py."""

import dataclasses
import json

import numpy as np
import pytest

from gradcheck import FD_RTOL, central_difference, rel_err
from nablax import cli, data, settings
from nablax.architectures import GE_MLPS, GE_RESNETS
from nablax.metrics.effective_depth import EffectiveDepth
from nablax.metrics.training import TrainingCallback, UpdateSizes, linear_keys
from nablax.experiments import grid_search_lr, lr_grid
from nablax.train import Trainer, TrainConfig, load_run, run


def tiny(**kw):
    base = dict(arch="batch-tanh", data="digits", depth=3, width=12, batch_size=64, epochs=2, eval_batch=100,
                n_train=320, lr=0.05, taylor=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", [a for a in GE_MLPS if a != "SeLU wide"] + GE_RESNETS)
def test_training_reduces_the_loss_on_digits(arch):
    t = Trainer(tiny(arch=arch, lr=0.1, measure_effective_depth=False), progress=False)
    t.fit()
    losses = [h["train_loss"] for h in t.history]
    assert losses[2] < losses[1] < losses[0] and losses[2] < 0.95 * losses[0], losses
    assert t.history[-1]["train_error"] < t.history[0]["train_error"]


@pytest.mark.parametrize("arch", ["batch-tanh", "SeLU", "batch-ReLU (ResNet)"])
def test_parameter_gradients_match_finite_differences_inside_a_step(arch, rng):
    t = Trainer(tiny(arch=arch), progress=False)
    t._start()
    t.fit(epochs=1)  # move away from θ(0) first
    x, y = t._xy(np.arange(64))
    e, grads, _, _ = t.loss_and_grads(x, y)
    params = t.net.named_params()
    direction = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    theta = t.net.copy_params()

    def loss_at(h):
        t.net.set_params({k: theta[k] + h * direction[k] for k in theta})
        return t.loss.value(t.net(x, train=True), y)

    fd = central_difference(loss_at, 0.0, 1.0)
    t.net.set_params(theta)
    analytic = sum(float((grads[k] * direction[k]).sum()) for k in grads)
    assert rel_err(analytic, fd) < FD_RTOL
    # ... and the step applies exactly these gradients (plain SGD: θ <- θ - lr g)
    lr = t.opt.lr
    t.train_step(x, y)
    for k, v in t.net.named_params().items():
        np.testing.assert_allclose(v, theta[k] - lr * grads[k], rtol=1e-12, atol=1e-15)


def test_epoch_records_and_closed_forms():
    t = Trainer(tiny(epochs=1, batch_size=320), progress=False)  # one step per epoch
    t._start()
    keys = linear_keys(t.net)
    w0 = t.net.copy_params()
    x, y = t._xy(np.arange(320))
    e, grads, _, _ = t.loss_and_grads(x, y)
    t.fit()
    arr = {k: np.stack(v) for k, v in t.arrays.items()}
    D = t.net.n_linear
    assert len(t.history) == 2 and t.history[0]["epoch"] == 0 and t.history[1]["steps"] == 1
    assert arr["relative_update"].shape == (2, D) and np.all(np.isnan(arr["relative_update"][0]))
    lr = t.config.lr
    for i, k in enumerate(keys):  # one plain SGD step: ||ΔW|| / ||W|| = lr ||g|| / ||W||, ||W(1) - W(0)||_2 = lr ||g||_2
        g, w = grads[k], w0[k]
        assert arr["relative_update"][1, i] == pytest.approx(lr * np.linalg.norm(g) / np.linalg.norm(w), rel=1e-10)
        assert arr["bound"][1, i] == pytest.approx(e / (np.linalg.norm(w) * np.linalg.norm(g)), rel=1e-10)
        assert arr["residual_opnorm"][1, i] == pytest.approx(lr * np.linalg.norm(g, 2), rel=1e-8)
        assert arr["residual_opnorm_rel"][1, i] == pytest.approx(lr * np.linalg.norm(g, 2) / np.linalg.norm(w, 2), rel=1e-8)
    assert np.all(arr["residual_opnorm"][0] == 0)
    assert arr["lambda_contributions"].shape == (2, D)
    assert t.history[1]["gsc"] == pytest.approx(arr["gsc_positions"][1][1])  # gsc.bottom: after linear layer 1
    t2 = Trainer(tiny(epochs=1, gsc_bottom="input"), progress=False)
    t2._start()
    assert t2.history[0]["gsc"] == pytest.approx(np.stack(t2.arrays["gsc_positions"])[0][0])


def test_spectral_update_norm_and_plateau_schedule():
    t = Trainer(tiny(epochs=4, plateau_tol=1.0, patience=1, lr=0.05), progress=False,
                callbacks=[UpdateSizes(norm="spectral")])
    t.fit()
    lrs = [h["lr"] for h in t.history[1:]]  # an improvement by 100% is never reached: /3 after every epoch
    assert lrs == pytest.approx([0.05, 0.05 / 3, 0.05 / 9, 0.05 / 27])
    assert t.schedule["n_decays"] == 4
    assert np.all(np.isfinite(np.stack(t.arrays["relative_update"])[1:]))


class Crash(TrainingCallback):
    """Kills the run (an exception out of the training loop) at a given step, mid-epoch."""

    name = "crash"

    def __init__(self, at):
        self.at = at

    def before_step(self, trainer, step):
        if step.index == self.at:
            raise KeyboardInterrupt


def _files(folder):
    run_ = load_run(folder)
    return (folder / "metrics.jsonl").read_bytes(), run_["arrays"], (folder / "result.json").read_text()


def test_result_says_where_it_was_computed(tmp_path):
    """result.json records the versions and the BLAS kernels (a deep run differs across CPUs: README, Data)."""
    Trainer(tiny(epochs=1), out=tmp_path, progress=False).fit()
    machine = json.loads((tmp_path / "result.json").read_text())["machine"]
    assert machine["numpy"] == np.__version__ and machine["blas"]
    assert set(machine["performance"]) == {f.name for f in dataclasses.fields(settings()) if f.init}
    assert machine["performance"]["train_threads"] == settings().train_threads
    assert all(b["architecture"] and b["version"] for b in machine["blas"])
    assert 1 in [b["num_threads"] for b in machine["blas"]]  # written while training held the BLAS at one thread


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", momentum=0.9, plateau_tol=0.2, patience=1),
                                dict(optimizer="adam", lr=0.003, ed_accumulate="norm_of_sum", arch="layer-SeLU (ResNet)"),
                                dict(optimizer="rmsprop", lr=0.003, arch="batch-ReLU")])
def test_kill_and_resume_is_identical_to_an_uninterrupted_run(kw, tmp_path):
    cfg = tiny(epochs=4, taylor=True, **kw)
    whole = Trainer(cfg, out=tmp_path / "whole", progress=False)
    whole.fit()
    # a run killed mid-epoch 3 (after the epoch-2 checkpoint), then resumed in a fresh Trainer
    steps_per_epoch = 320 // 64
    cbs = lambda: [UpdateSizes(), EffectiveDepth(cfg.ed_eps, tuple(cfg.ed_eps_grid), cfg.ed_accumulate)]  # noqa: E731
    killed = Trainer(cfg, out=tmp_path / "killed", progress=False, callbacks=cbs() + [Crash(2 * steps_per_epoch + 2)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert [json.loads(s)["epoch"] for s in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    resumed = Trainer.resume(tmp_path / "killed", progress=False)
    assert resumed.epoch == 2
    resumed.fit()
    a, b = _files(tmp_path / "whole"), _files(tmp_path / "killed")
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys() and all(np.array_equal(a[1][k], b[1][k], equal_nan=True) for k in a[1])
    assert a[2] == b[2]
    for k, v in whole.net.named_params().items():
        np.testing.assert_array_equal(v, resumed.net.named_params()[k])
    for k, v in whole.net.named_state().items():
        np.testing.assert_array_equal(v, resumed.net.named_state()[k])
    # stop_after (the same kill at an epoch boundary) through run(), which resumes by itself
    Trainer(cfg, out=tmp_path / "stopped", progress=False).fit(stop_after=1)
    assert run(cfg, tmp_path / "stopped", progress=False) == json.loads(a[2])
    assert _files(tmp_path / "stopped")[0] == a[0]


def test_run_folders_refuse_mixing(tmp_path):
    cfg = tiny(epochs=1)
    Trainer(cfg, out=tmp_path / "r", progress=False).fit(epochs=1, stop_after=0)
    with pytest.raises(FileExistsError):
        run(cfg, tmp_path / "r", resume=False, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        run(dataclasses.replace(cfg, lr=0.1), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"arch": "SeLU", "learning_rate": 1})
    with pytest.raises(ValueError):
        TrainConfig(gsc_bottom="middle")


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_is_recorded_not_raised(tmp_path):
    res = run(tiny(arch="SeLU", lr=1e6, epochs=3, taylor=True), tmp_path / "d", progress=False)
    assert res["status"] == "diverged" and "taylor" not in res


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_step_size_grid_search(tmp_path):
    assert lr_grid(1e-4, 1.0) == pytest.approx([1e-4 * 3 ** i for i in range(9)], rel=1e-5)
    lr, table = grid_search_lr(tiny(arch="SeLU"), [1e-6, 0.05, 1e6], tmp_path / "s", epochs=1, progress=False)
    assert lr == 0.05
    by_lr = {row["lr"]: row for row in table}
    assert by_lr[1e6]["status"] == "diverged" and by_lr[1e6]["train_error"] == 1.0


def test_cli_train_and_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    args = ["train", "--arch", "SeLU", "--data", "digits", "--depth", "2", "--width", "8", "--epochs", "2",
            "--n-train", "200", "--batch-size", "50", "--out", str(out), "--set", "eval_batch=100"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "effective depth" in text and "Taylor" in text
    final = json.loads((out / "result.json").read_text())["final"]
    assert f"loss {final['train_loss']:.4g}," in text  # 4 digits on screen, all of them in result.json
    assert cli.main(args) == 2 and "--resume" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    assert cli.main(["train", "--out", str(out), "--resume", "--lr", "0.5"]) == 2  # other settings: refused
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 2  # more epochs too: a new run
    assert "start a new run in another --out" in capsys.readouterr().err
    monkeypatch.setenv("NABLAX_DATA", str(tmp_path / "none"))
    assert cli.main(["train", "--data", "cifar10", "--depth", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--cifar PATH" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["batch-ReLU", "SeLU"])
def test_trainer_gsc_is_per_example_and_does_not_scale_with_the_evaluation_batch(arch):
    """The per-epoch GSC(L, 0) is per example by default (spec §2.4): about the same on 100 or 300 evaluation points,
    while the batch-level option falls like 1/sqrt(B) (sqrt(1/3) = 0.58)."""
    def gsc(**kw):
        return Trainer(tiny(arch=arch, **kw), progress=False).gsc()[1]

    per = gsc(eval_batch=300) / gsc(eval_batch=100)
    batch = gsc(eval_batch=300, gsc_aggregation="batch") / gsc(eval_batch=100, gsc_aggregation="batch")
    assert 0.85 < per < 1.15 and 0.45 < batch < 0.7, (per, batch)


def test_set_values_take_the_type_of_their_field(tmp_path):
    for text, value in [("true", True), ("False", False), ("no", False), ("OFF", False), ("on", True), ("1", True),
                        ("0", False), ("Yes", True)]:
        assert TrainConfig.parse(f"taylor={text}") == ("taylor", value)
    assert TrainConfig.parse("epochs=7") == ("epochs", 7) and TrainConfig.parse("lr=1e-3") == ("lr", 1e-3)
    assert TrainConfig.parse("n_train=none") == ("n_train", None) and TrainConfig.parse("n_train=50") == ("n_train", 50)
    assert TrainConfig.parse("ed_eps_grid=[0.1, 0.01]") == TrainConfig.parse("ed_eps_grid=0.1,0.01") == \
        ("ed_eps_grid", [0.1, 0.01])
    assert TrainConfig.parse("cifar=/data/x") == ("cifar", "/data/x")
    for bad, says in [("epochs=abc", "epochs must be an integer"), ("epochs=2.5", "epochs must be an integer"),
                      ("lr=fast", "lr must be a finite number"), ("taylor=maybe", "taylor must be true or false"),
                      ("taylor", "--set takes KEY=VALUE"), ("learning_rate=1", "--set takes KEY=VALUE"),
                      ("ed_eps_grid=0.1,x", "ed_eps_grid must be a finite number")]:
        with pytest.raises(ValueError, match=says):
            TrainConfig.parse(bad)
    out = tmp_path / "r"  # through the command line: "False" is stored as false, and no Taylor experiment runs
    assert cli.main(["train", "--arch", "SeLU", "--data", "digits", "--depth", "2", "--width", "8", "--epochs", "1",
                     "--n-train", "100", "--batch-size", "50", "--out", str(out), "--set", "taylor=False"]) == 0
    assert json.loads((out / "config.json").read_text())["taylor"] is False
    assert "taylor" not in json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("kw, says", [
    (dict(epochs="abc"), "epochs must be an integer, got 'abc'"), (dict(taylor="False"), "taylor must be true or false"),
    (dict(lr=float("nan")), "lr must be a finite number"), (dict(beta=float("inf")), "beta must be a finite number"),
    (dict(seed=True), "seed must be an integer"), (dict(ed_eps_grid=[0.1, "x"]), "ed_eps_grid must be a list"),
    (dict(n_train=0), "n_train must be at least 2"), (dict(batch_size=1), "batch_size must be at least 2"),
    (dict(depth=0), "depth must be positive"), (dict(width=0), "width must be positive"),
    (dict(arch="resnet-50"), "unknown architecture 'resnet-50'"), (dict(cifar=3), "cifar must be a string or None"),
])
def test_config_refuses_wrong_types_and_sizes(kw, says):
    with pytest.raises(ValueError, match=says):
        TrainConfig(**kw)


def test_resume_says_what_is_wrong(tmp_path, capsys):
    args = ["train", "--arch", "SeLU", "--data", "digits", "--depth", "2", "--width", "8", "--epochs", "1",
            "--n-train", "100", "--batch-size", "50", "--set", "taylor=false"]
    assert cli.main(args + ["--out", str(tmp_path / "nowhere"), "--resume"]) == 2  # no folder: not a fresh run
    assert "no run folder" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert cli.main(args + ["--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no checkpoint.npz" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no run folder"):
        Trainer.resume(tmp_path / "nowhere")
    run_dir = tmp_path / "r"
    Trainer(tiny(epochs=2), out=run_dir, progress=False).fit(stop_after=1)
    blob = bytearray((run_dir / "checkpoint.npz").read_bytes())
    for damaged in (blob[: len(blob) // 2], blob[:100] + bytes(len(blob) - 100)):  # truncated; overwritten
        (run_dir / "checkpoint.npz").write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="checkpoint.npz is damaged and cannot be resumed from"):
            Trainer.resume(run_dir, progress=False)
        assert cli.main(["train", "--out", str(run_dir), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "checkpoint.npz is damaged" in err and "Traceback" not in err


def test_evaluation_batches_never_hold_one_point():
    assert [(s.start, s.stop) for s in data.batch_slices(129, 64)] == [(0, 64), (64, 129)]
    assert [(s.start, s.stop) for s in data.batch_slices(130, 64)] == [(0, 64), (64, 128), (128, 130)]
    assert [(s.start, s.stop) for s in data.batch_slices(1, 64)] == [(0, 1)]
    # 129 points in batches of 64 left one point alone: batch norm refuses a batch of one
    res = Trainer(tiny(n_train=129, epochs=1, taylor=True), progress=False).fit()
    assert res["status"] == "done" and "taylor" in res


def test_the_measurement_phase_shows_progress(capsys):
    Trainer(tiny(epochs=1), progress=True).fit()
    err = capsys.readouterr().err
    assert "epoch 0 measurements:" in err and "epoch 1 measurements:" in err  # (tqdm shows the phase when it redraws)


def test_fit_runs_on_the_training_blas_threads():
    """Trainer.fit holds the BLAS at the setting train_threads (default 1) for its steps and measurements, and
    puts the BLAS's own count back afterwards; train_threads=0 leaves the BLAS's count alone."""
    import nablax
    from nablax import fastpath, kernels
    from threadpoolctl import threadpool_limits

    def blas_threads():  # of the BLAS that nablax multiplies with (SciPy's, loaded by scikit-learn's digits, is not)
        pools = fastpath._threadpools(kernels.blas_library()).info()
        return {lib["num_threads"] for lib in pools if lib["user_api"] == "blas"}

    class Seen(TrainingCallback):
        def __init__(self):
            self.threads = set()

        def before_step(self, trainer, step):
            self.threads |= blas_threads()

        def end_epoch(self, trainer):
            self.threads |= blas_threads()
            return {}, {}

    with threadpool_limits(2, user_api="blas"):
        outside = blas_threads()
        for setting, expected in ((None, {1}), (1, {1}), (0, outside)):
            seen = Seen()
            trainer = Trainer(tiny(epochs=1, measure_effective_depth=False), progress=False)
            trainer.callbacks.append(seen)
            with nablax.settings(**({} if setting is None else {"train_threads": setting})):
                trainer.fit()
            assert seen.threads == expected, (setting, seen.threads)
            assert blas_threads() == outside
    with pytest.raises(ValueError, match="train_threads"):
        nablax.settings(train_threads=-1)
