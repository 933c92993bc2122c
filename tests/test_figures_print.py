"""The figures fit to print (issue 17): layout, legibility and what the figures say, checked on the figure objects
that the scripts' own functions build at tiny sizes, and on their JSON records."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "paper_figures"


def load(paper: str, module: str):
    """A figure script as a module of its own name (both papers have a fig1.py), its folder importable."""
    folder = str(ROOT / paper)
    spec = importlib.util.spec_from_file_location(f"{paper}_{module}", ROOT / paper / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(folder)
    return mod


def legend_sizes(fig) -> list[float]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_fontsize() for leg in legends for t in leg.get_texts()]


# --- theory.png -------------------------------------------------------------------------------------------------

def test_theory_legends_are_legible_and_log_panels_are_cut_to_the_data(tmp_path):
    mod = load("shattered_gradients", "theory")
    fig = mod.main(["--quick", "--out", str(tmp_path)],
                   overrides={"depths": [1, 2, 4], "trials": 200, "n_nets": 2, "n_inputs": 8, "width": 8})
    rec = json.loads((tmp_path / "theory.json").read_text())
    assert sorted(rec["panels"]) == list("ABCD") and rec["settings"]["ylim (log panels)"] == mod.LOG_FLOOR
    sizes = legend_sizes(fig)
    assert sizes and min(sizes) >= 9
    log_axes = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert len(log_axes) == 2
    for ax, key in zip(log_axes, "AB"):
        estimates = [v for name, s in rec["panels"][key]["series"].items() if "closed form" not in name
                     for v in s["y"] if v is not None and v > 0]
        lo, hi = ax.get_ylim()
        assert 1e-8 < lo <= min(estimates) and hi >= 1.0
