"""The experiment runner (nablax.experiments): grid expansion, results keyed by configuration (reruns skip finished
work), the local and the Dask executor (a LocalCluster of 2 workers), sweep files and the CLI."""

import json
import sys

import pytest

from nablax import cli, experiments
from nablax.experiments import expand_grid, load_sweep_file, run_sweep

BASE = {"data": "digits", "depth": 2, "width": 8, "epochs": 1, "batch_size": 100, "eval_batch": 100, "n_train": 200,
        "taylor": False}


def test_expand_grid_is_the_product_in_order():
    configs = expand_grid(BASE, {"arch": ["batch-ReLU", "SeLU"], "lr": [0.01, 0.1], "seed": [0]})
    assert [(c.arch, c.lr, c.seed) for c in configs] == [("batch-ReLU", 0.01, 0), ("batch-ReLU", 0.1, 0),
                                                        ("SeLU", 0.01, 0), ("SeLU", 0.1, 0)]
    assert len({c.key() for c in configs}) == 4
    assert configs[0].key() == expand_grid(BASE, {"arch": ["batch-ReLU"], "lr": [0.01]})[0].key()
    with pytest.raises(ValueError, match="unknown training options"):
        expand_grid(BASE, {"learning_rate": [0.1]})


def test_local_sweep_keys_results_and_skips_finished_runs(tmp_path):
    configs = expand_grid(BASE, {"arch": ["layer-tanh", "SeLU"], "seed": [0, 1]})
    first = run_sweep(configs, tmp_path, progress=False)
    assert [r["status"] for r in first] == ["done"] * 4 and not any(r["skipped"] for r in first)
    for c, r in zip(configs, first):
        assert (tmp_path / c.key() / "result.json").exists() and r["key"] == c.key()
    index = json.loads((tmp_path / "index.json").read_text())
    assert set(index) == {c.key() for c in configs}

    class Refuse:  # an executor that must not be asked for anything on a rerun
        def map(self, fn, items, progress=True):
            raise AssertionError(f"finished runs were resubmitted: {items}")

    again = run_sweep(configs, tmp_path, executor=Refuse(), progress=False)
    assert all(r["skipped"] for r in again)
    assert [r["final"] for r in again] == [r["final"] for r in first]
    # a new grid point runs, the others are skipped
    more = run_sweep(configs + expand_grid(BASE, {"arch": ["SeLU"], "seed": [2]}), tmp_path, progress=False)
    assert [r["skipped"] for r in more] == [True] * 4 + [False]


def test_dask_local_cluster_gives_the_local_results(tmp_path):
    pytest.importorskip("distributed")
    configs = expand_grid(BASE, {"arch": ["batch-tanh", "SeLU"], "lr": [0.05]})
    local = run_sweep(configs, tmp_path / "local", progress=False)
    with experiments.DaskExecutor(n_workers=2, processes=False) as ex:
        assert len(ex.client.scheduler_info()["workers"]) == 2
        dask = run_sweep(configs, tmp_path / "dask", executor=ex, progress=False)
        assert all(r["skipped"] for r in run_sweep(configs, tmp_path / "dask", executor=ex, progress=False))
    assert [r["final"] for r in dask] == [r["final"] for r in local]
    assert [r["key"] for r in dask] == [c.key() for c in configs]


def test_missing_dask_gives_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[sweep\]"):
        experiments.make_executor("dask")
    with pytest.raises(ValueError):
        experiments.make_executor("local", scheduler="tcp://x:1")
    with pytest.raises(ValueError):
        experiments.make_executor("slurm")


def test_sweep_files_and_cli(tmp_path, capsys):
    spec = {"out": str(tmp_path / "runs"), "base": BASE, "grid": {"arch": ["SeLU"], "seed": [0, 1]}}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    configs, opts = load_sweep_file(tmp_path / "s.json")
    assert len(configs) == 2 and opts["out"] == spec["out"]
    toml = "\n".join(['out = "x"', "[base]"] + [f"{k} = {json.dumps(v).lower()}" for k, v in BASE.items()]
                     + ["[grid]", 'arch = ["SeLU"]', "seed = [0, 1]"])
    (tmp_path / "s.toml").write_text(toml)
    t_configs, _ = load_sweep_file(tmp_path / "s.toml")
    assert [c.key() for c in t_configs] == [c.key() for c in configs]
    (tmp_path / "bad.json").write_text(json.dumps({"grid": {"arch": "SeLU"}}))
    with pytest.raises(ValueError, match="non-empty list"):
        load_sweep_file(tmp_path / "bad.json")
    assert cli.main(["sweep", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("SeLU") == 2 and "False" in out
    assert cli.main(["sweep", str(tmp_path / "s.json"), "--executor", "dask", "--workers", "2"]) == 0
    assert capsys.readouterr().out.count("True") == 2  # everything was finished already


def test_epoch_watcher_counts_the_epochs_that_runs_elsewhere_have_written(tmp_path):
    from nablax.experiments import _EpochWatcher

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text("{}\n" * 4)  # epoch 0 and three epochs
    watch = _EpochWatcher([(tmp_path / "a", 5), (tmp_path / "b", 5)], every=60)
    assert watch._count() == 3
    watch.stop()
    assert watch.bar.n == 3 and watch.bar.total == 10


def test_the_example_sweep_file_runs(tmp_path, capsys):
    """``examples/sweep.json``, which README's command line section runs, is a valid sweep file and finishes."""
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "sweep.json"
    configs, opts = load_sweep_file(example)
    assert len(configs) == 4 and opts["out"] and {c.data for c in configs} == {"digits"}
    assert all(c.depth == 2 and c.width == 8 and c.epochs == 1 for c in configs)
    assert "examples/sweep.json" in (example.parent.parent / "README.md").read_text()
    assert cli.main(["sweep", str(example), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(" done ") == 4
