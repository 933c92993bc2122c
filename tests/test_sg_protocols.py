"""The shattered-gradients figure scripts that read data or train (fig4, fig6) at every scale at a tiny size, the
backend flag reaching their networks, and fig1's choice of the one-layer net's bias std."""

import json
import sys

import pytest

from nablax import backend, data
from nablax.backend import BackendUnavailable
from figure_scripts import load

TINY6 = {"width": 2, "epochs": 1, "n_train": 128, "eval_batch": 64}


def sg(module):
    return load("shattered_gradients", module)


def test_fig1_default_bias_std_is_the_one_whose_gradient_is_brown_noise(tmp_path, capsys):
    sg("fig1").main(["--out", str(tmp_path)])
    rec = json.loads((tmp_path / "fig1.json").read_text())
    study = rec["settings"]["one_layer.bias_std_study"]
    assert rec["settings"]["one_layer.bias_std"] == 1.0 and study["seeds"] == 20
    assert study["used"]["mean_abs_acf_diff"] < 0.05 < study["spec sqrt(1/N)"]["mean_abs_acf_diff"]
    assert "sqrt(1/N)" in capsys.readouterr().out


def test_fig1_keeps_the_spec_bias_std_as_an_option(tmp_path):
    sg("fig1").main(["--out", str(tmp_path), "--bias-std", "0.0707"])
    assert json.loads((tmp_path / "fig1.json").read_text())["settings"]["one_layer.bias_std"] == 0.0707


@pytest.mark.parametrize("scale_args", [["--quick"], []])
def test_fig6_runs_at_each_scale(scale_args, tmp_path):
    sg("fig6").main(scale_args + ["--out", str(tmp_path), "--depths", "6", "8"], overrides=TINY6)
    rec = json.loads((tmp_path / "fig6.json").read_text())
    assert rec["settings"]["scale"] == ("quick" if scale_args else "digits")
    assert rec["settings"]["seeds"] == ([0] if scale_args else [0, 1, 2])  # digits: the spread of three seeds
    assert rec["machine"]["blas"][0]["architecture"]  # which BLAS kernels computed it
    assert [m["blas"][0]["architecture"] for m in rec["settings"]["run_machines"]] == [
        rec["machine"]["blas"][0]["architecture"]]  # the training runs' kernels (here, in this process)
    assert set(rec["panels"]["A"]["series"]) == set(sg("fig6").MODELS)
    assert all(len(s["y"]) == 2 for s in rec["panels"]["A"]["series"].values())


def test_fig6_on_a_cifar_format_archive(tmp_path):
    md5 = data.write_cifar_like_archive(tmp_path / data.CIFAR10_ARCHIVE, n_per_batch=10)
    sg("fig6").main(["--cifar", str(tmp_path), "--out", str(tmp_path), "--depths", "6", "--seeds", "1"],
                    overrides={**TINY6, "n_train": None, "cifar_md5": md5})
    rec = json.loads((tmp_path / "fig6.json").read_text())
    assert rec["settings"]["scale"] == "cifar" and rec["panels"]["A"]["ylabel"] == "test accuracy"


def test_fig4_digits_scale(tmp_path):
    sg("fig4").main(["--out", str(tmp_path), "--depths", "2", "4", "--width", "2", "--batch", "16"])
    rec = json.loads((tmp_path / "fig4.json").read_text())
    assert rec["settings"]["scale"] == "digits" and rec["settings"]["depths"] == [2, 4]


@pytest.mark.parametrize("module, args", [("fig4", ["--depths", "2", "--width", "2", "--batch", "8"]),
                                          ("fig6", ["--depths", "6"]), ("fig1", []), ("fig2", []), ("fig3", []),
                                          ("theory", []), ("looks_linear", [])])
def test_backend_flag_reaches_the_networks(module, args, tmp_path, monkeypatch):
    backend._cupy_backend.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", None)
    kw = {"overrides": TINY6} if module == "fig6" else {}
    with pytest.raises(BackendUnavailable, match="cupy"):
        sg(module).main(["--quick", "--backend", "cupy", "--out", str(tmp_path)] + args, **kw)
    backend._cupy_backend.cache_clear()
