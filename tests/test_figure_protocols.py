"""The training figures' protocols (paper_figures/gradients_explode/_protocol.py and the scripts that use it) at a
tiny size: every scale runs the same code, the figures resume and only redraw, the backend flag reaches the
network, and no figure script imports another."""

import ast
import json
import sys

import pytest

from nablax import backend, cli, data
from nablax.backend import BackendUnavailable
from nablax.figures import FigureRecord
from figure_scripts import ROOT, load

TINY = {"depth": 2, "resnet_depth": 2, "width": 8, "epochs": 2, "n_train": 200, "batch_size": 50, "eval_batch": 100,
        "lr_grid": [0.01, 0.1], "search_epochs": 1, "seeds": 2}


def ge(module):
    return load("gradients_explode", module)


def test_figure_scripts_do_not_import_each_other():
    for folder in ROOT.iterdir():
        if not folder.is_dir():
            continue
        scripts = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
        for path in folder.glob("*.py"):
            tree = ast.parse(path.read_text())
            imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            assert not imported & scripts, f"{path} imports the figure script(s) {imported & scripts}"


def test_protocol_scales_share_the_code_and_refuse_unknown_ones():
    proto = ge("_protocol")
    assert set(proto.PROTOCOLS) == {"quick", "digits", "cifar"}
    paper = proto.protocol("digits")
    assert (paper["depth"], paper["resnet_depth"], paper["width"], paper["data"]) == (50, 25, 100, "digits")
    assert paper["seeds"] == 3  # RESULTS.md's spread of three seeds is what the default command gives
    assert proto.protocol("cifar")["data"] == "cifar10" and proto.protocol("quick")["depth"] < 50
    with pytest.raises(ValueError, match="scale"):
        proto.protocol("huge")


def test_fig2_end_to_end_at_the_digits_scale_with_seeds_and_resume(tmp_path):
    fig2 = ge("fig2")
    assert fig2.main(["--out", str(tmp_path)], overrides=TINY) == 0
    rec = json.loads((tmp_path / "fig2.json").read_text())
    assert (tmp_path / "fig2.png").exists() and set(rec["panels"]) == set("ABCDEF")
    assert rec["settings"]["scale"] == "digits" and rec["settings"]["seeds"] == [0, 1]
    assert rec["settings"]["options (spec §13)"]["gsc.aggregation"] == "per_example_geomean"
    for key, panel in rec["panels"].items():
        assert list(panel["series"]) == fig2.NAMES, key
    b = rec["panels"]["B"]["series"]["SeLU"]
    assert len(b["per_seed"]) == 2 and all(lo <= y <= hi for lo, y, hi in zip(b["lo"], b["y"], b["hi"]))
    assert len(rec["panels"]["A"]["series"]["SeLU"]["x"]) == 3  # 2 blocks + output layer
    assert rec["panels"]["F"]["series"]["SeLU"]["x"] == [0, 1]
    assert rec["settings"]["lr_search"]["SeLU"]["lr"] in TINY["lr_grid"]
    (where,) = rec["settings"]["run_machines"]  # the runs' own processes: here this one, so one record
    assert where["blas"][0]["architecture"] and where["performance"]["train_threads"] == 1
    stamp = (tmp_path / "fig2_runs" / "runs" / "index.json").stat().st_mtime_ns
    assert fig2.main(["--out", str(tmp_path)], overrides=TINY) == 0  # every run finished: only redraws
    assert json.loads((tmp_path / "fig2.json").read_text()) == rec
    assert (tmp_path / "fig2_runs" / "runs" / "index.json").stat().st_mtime_ns >= stamp


def test_fig2_quick_scale(tmp_path):
    fig2 = ge("fig2")
    assert fig2.main(["--quick", "--out", str(tmp_path)], overrides={**TINY, "seeds": 1}) == 0
    rec = json.loads((tmp_path / "fig2.json").read_text())
    assert rec["settings"]["scale"] == "quick" and rec["settings"]["seeds"] == [0]


def test_cifar_scale_runs_the_same_code_on_a_cifar_format_archive(tmp_path, capsys):
    fig2 = ge("fig2")
    with pytest.raises(SystemExit, match="CIFAR-10 is not usable"):
        fig2.main(["--cifar", str(tmp_path / "none"), "--out", str(tmp_path)])
    md5 = data.write_cifar_like_archive(tmp_path / data.CIFAR10_ARCHIVE, n_per_batch=20)
    over = {**TINY, "n_train": None, "cifar_md5": md5, "eval_batch": 50, "seeds": 1}
    runs, settings = ge("_protocol").figure_runs({"SeLU": {"arch": "SeLU"}}, tmp_path / "f", "cifar",
                                                 cifar=str(tmp_path), overrides=over, progress=False)
    assert settings["protocol"].startswith("CIFAR-10") and settings["config"]["data"] == "cifar10"
    run = runs["SeLU"][0]
    assert run["result"]["status"] == "done" and len(settings["lr_search"]["SeLU"]["table"]) == 2
    assert run["result"]["config"]["depth"] == 2 and len(run["history"]) == 3


def test_resnet_training_panel_draws_every_resnet(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proto = ge("_protocol")
    rec = FigureRecord("test", {})
    fig, ax = plt.subplots()
    archs = ["layer-tanh (ResNet)", "batch-ReLU (ResNet)"]
    runs, settings = proto.figure_runs({a: {"arch": a} for a in archs}, tmp_path, "digits",
                                       overrides={**TINY, "lr_grid": None}, progress=False)
    proto.resnet_training_panel(rec, runs, "D", ax)
    series = rec.panels["D"]["series"]
    assert list(series) == archs and settings["config"]["depth"] == 2
    for s in series.values():
        assert s["x"] == [0, 1, 2] and s["y"][0] == 1 and all(1 <= d <= 5 for d in s["y"])
        assert len(s["eps_sweep"]["0.1"]) == 2  # per seed
    assert [t.get_text() for t in ax.get_legend().get_texts()] == archs  # every ResNet has a legend entry
    plt.close(fig)


def test_orthogonal_training_figure(tmp_path):
    mod = ge("orthogonal_training")
    assert mod.main(["--out", str(tmp_path)], overrides={**TINY, "width": 8}) == 0
    rec = json.loads((tmp_path / "orthogonal_training.json").read_text())
    assert set(rec["panels"]) == set("ABC")
    for panel in rec["panels"].values():
        assert list(panel["series"]) == list(mod.VARIANTS)
    assert rec["settings"]["init.scheme"]["ReLU (orthogonal initial state)"]["init"] == "looks_linear"
    assert rec["panels"]["C"]["series"]["ReLU (Gaussian)"]["y"][0] == 1


def _no_cupy(monkeypatch):
    """Make CuPy look missing, whatever this machine has: the backend must then refuse with its message."""
    backend._cupy_backend.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", None)


@pytest.mark.parametrize("module", ["fig2", "orthogonal_training", "fig1"])
def test_backend_flag_reaches_the_network(module, tmp_path, monkeypatch):
    _no_cupy(monkeypatch)
    with pytest.raises(BackendUnavailable, match="cupy"):
        ge(module).main(["--quick", "--backend", "cupy", "--out", str(tmp_path)], overrides=TINY if module != "fig1"
                        else {"depth": 2, "width": 4, "in_dim": 4, "eval_batch": 8, "n_seeds": 1})
    backend._cupy_backend.cache_clear()


def test_train_command_takes_the_backend(tmp_path, monkeypatch, capsys):
    _no_cupy(monkeypatch)
    code = cli.main(["train", "--backend", "cupy", "--depth", "2", "--width", "4", "--epochs", "1",
                     "--out", str(tmp_path / "r")])
    assert code != 0 and "cupy" in capsys.readouterr().err.lower()
    backend._cupy_backend.cache_clear()


def test_figures_command_knows_which_scripts_read_data():
    """``nablax figures --cifar`` passes the path on to exactly the scripts whose command line takes it."""
    for path in cli.find_figure_scripts(ROOT):
        name = f"{path.parent.name}/{path.stem}"
        assert ("data=True" in path.read_text()) == (name in cli.DATA_FIGURES), name


def test_figures_command_checks_cifar_once(tmp_path, capsys):
    assert cli.main(["figures", "--cifar", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("CIFAR-10 is not usable") == 1 and "Traceback" not in err
    assert err.startswith("nablax: error: CIFAR-10 is not usable")


def test_figures_command_errors_are_one_prefixed_line(tmp_path, capsys):
    for argv in (["figures", "--only", "no-such-figure"], ["figures", "--quick", "--cifar", str(tmp_path)]):
        assert cli.main([*argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nablax: error: ") and err.count("\n") == 1, err


def test_seeds_option_adds_seeds_and_reuses_finished_ones(tmp_path):
    fig2, tiny = ge("fig2"), {k: v for k, v in TINY.items() if k != "seeds"}
    assert fig2.main(["--out", str(tmp_path), "--seeds", "1"], overrides=tiny) == 0
    first = json.loads((tmp_path / "fig2.json").read_text())
    assert first["settings"]["seeds"] == [0]
    index = tmp_path / "fig2_runs" / "runs" / "index.json"
    keys = set(json.loads(index.read_text()))
    assert fig2.main(["--out", str(tmp_path), "--seeds", "2"], overrides=tiny) == 0
    assert json.loads((tmp_path / "fig2.json").read_text())["settings"]["seeds"] == [0, 1]
    assert keys < set(json.loads(index.read_text()))  # seed 0's runs were kept, seed 1's added


def test_the_fig6_198_layer_checks_change_only_what_they_name():
    """The sweep files behind RESULTS.md's "SG Fig. 6 at 198 layers" checks are fig6.py's digits protocol at depth 198
    for CReLU LL and plain ReLU, with one change each: the epochs, the width or the step size."""
    from nablax.experiments import load_sweep_file

    fig6 = load("shattered_gradients", "fig6")
    protocol = {**fig6.COMMON, **fig6.PROTOCOLS["digits"], "depth": 198}
    for name, changed, runs in (("epochs48", {"epochs"}, 6), ("width8", {"width"}, 6), ("step_sizes", {"lr"}, 12)):
        configs, _ = load_sweep_file(ROOT / "shattered_gradients" / "fig6_198" / f"{name}.json")
        assert len(configs) == runs and {c.seed for c in configs} == {0, 1, 2}
        assert {c.arch for c in configs} == {fig6.MODELS["CReLU LL"], fig6.MODELS["ReLU"]}
        assert all({k for k, v in protocol.items() if getattr(c, k) != v} == changed for c in configs), name
