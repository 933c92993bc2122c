"""What a new user meets on the command line: every error they can act on is one line on stderr with exit status 2
and no traceback (``cli.USER_ERRORS``, handled in ``cli.main``); ``--debug`` or ``NABLAX_DEBUG=1`` shows the
traceback instead."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nablax import cli

REPO = Path(__file__).resolve().parent.parent
TINY_TRAIN = ["--data", "digits", "--depth", "2", "--width", "8", "--epochs", "1"]


def _one_line_error(capsys, argv):
    """Run the command; return its stderr's one error line (after asserting status 2 and a single line)."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("nablax: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, says", [
    (["gsc", "--arch", "resnet-50"], "unknown architecture 'resnet-50'"),
    (["gsc", "--arch", "layer-relu-resnet"], "did you mean 'layer-ReLU (ResNet)' or"),
    (["train", "--arch", "batch_relu", "--out", "unused"], "did you mean 'batch-ReLU' or"),
    (["gsc", "--depth", "0"], "depth must be a positive integer"),
    (["gsc", "--depth", "2", "--width", "0"], "width must be a positive integer"),
    (["gsc", "--depth", "2", "--in-dim", "0"], "in_dim must be a positive integer"),
    (["gsc", "--depth", "2", "--width", "4", "--batch", "1"], "a batch of one has no batch statistics"),
    (["shatter", "--lags", "-1"], "--lags -1: a lag lies in 0..255"),
    (["shatter", "--lags", "1", "256", "999"], "--lags 256 999"),
    (["shatter", "--arch", "resnet-bn", "--depth", "3", "--beta", "nan"], "beta must be a finite number"),
    (["shatter", "--arch", "fnn-bn", "--depth", "3", "--beta", "0.5"], "--beta: fnn-bn does not take it"),
    (["shatter", "--arch", "fnn-bn", "--depth", "3", "--bias-std", "0.5"], "--bias-std: fnn-bn does not take it"),
    (["train", "--arch", "resnet-50", "--out", "x"], "unknown architecture 'resnet-50'"),
    (["train", *TINY_TRAIN, "--depth", "0", "--out", "x"], "depth must be positive"),
    (["train", *TINY_TRAIN, "--n-train", "0", "--out", "x"], "n_train must be at least 2"),
    (["train", *TINY_TRAIN, "--set", "epochs=abc", "--out", "x"], "epochs must be an integer, got 'abc'"),
    (["train", *TINY_TRAIN, "--set", "taylor=maybe", "--out", "x"], "taylor must be true or false"),
    (["train", *TINY_TRAIN, "--set", "learning_rate=1", "--out", "x"], "--set takes KEY=VALUE"),
])
def test_bad_arguments_are_one_line(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert says in _one_line_error(capsys, argv)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_missing_data_and_files_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NABLAX_DATA", str(tmp_path / "none"))
    line = _one_line_error(capsys, ["train", "--data", "cifar10", "--depth", "2", "--out", str(tmp_path / "c")])
    assert "CIFAR-10 not found" in line and "--cifar PATH" in line
    assert "No such file" in _one_line_error(capsys, ["sweep", str(tmp_path / "missing.json")])


@pytest.mark.parametrize("text, says", [
    ('{"base": {"data": "digits"},\n "grid": {"arch": ["SeLU"],}\n}', "s.json, line 2: not valid JSON"),
    ("[1, 2]", "holds a list, not an object"),
    ('{"grid": {"arch": "SeLU"}}', "grid axis 'arch' must be a non-empty list"),
    ('{"base": [1], "grid": {}}', "'base' is not an object"),
    ('{"base": {"depth": "x"}, "grid": {"arch": ["SeLU"]}}', "s.json: depth must be an integer"),
])
def test_malformed_sweep_files_name_the_file_the_line_and_the_shape(text, says, capsys, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(text)
    line = _one_line_error(capsys, ["sweep", str(path)])
    assert says in line and str(path) in line
    if "line" in says or "object" in says or "list" in says:
        assert '"grid": {OPTION: [VALUE, ...], ...}' in line  # the expected shape


def test_missing_dask_is_one_line(capsys, tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"base": {"data": "digits", "depth": 2, "width": 8, "epochs": 1}, "grid": {"seed": [0]}}))
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert "pip install -e .[sweep]" in _one_line_error(capsys, ["sweep", str(path), "--executor", "dask",
                                                                "--out", str(tmp_path / "r")])


def test_debug_flag_and_variable_show_the_traceback(monkeypatch):
    for argv in (["--debug", "gsc", "--depth", "0"], ["gsc", "--depth", "0", "--debug"]):
        with pytest.raises(ValueError, match="depth must be a positive integer"):
            cli.main(argv)
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        cli.main(["gsc", "--depth", "0"])


def test_the_command_in_a_new_process_prints_no_traceback():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop(cli.DEBUG_ENV, None)
    cmd = [sys.executable, "-m", "nablax.cli", "gsc", "--depth", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr == "nablax: error: depth must be a positive integer, got 0\n"
    res = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "Traceback" in res.stderr
