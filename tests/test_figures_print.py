"""The figures fit to print (issue 17): layout, legibility and what the figures say, checked on the figure objects
that the scripts' own functions build at tiny sizes, and on their JSON records."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from figure_scripts import load  # noqa: E402


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


def inside(box, pts: np.ndarray) -> np.ndarray:
    return (pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)


def lines_under_legends(fig) -> list[str]:
    """Labels of the plotted lines that pass under a legend box (display coordinates, segments sampled densely)."""
    fig.canvas.draw()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    hits = []
    for leg in legends:
        box = leg.get_window_extent()
        for ax in fig.axes:
            for line in ax.get_lines():
                xy = line.get_transform().transform(np.asarray(line.get_xydata(), float))
                xy = xy[np.isfinite(xy).all(axis=1)]
                t = np.linspace(0, 1, 50)[:, None, None]
                pts = (xy[:-1] * (1 - t) + xy[1:] * t).reshape(-1, 2) if len(xy) > 1 else xy
                if (inside(box, pts) & inside(ax.bbox, pts)).any():
                    hits.append(line.get_label())
    return hits


def image_colorbars(fig) -> list:
    """(image, its colour bar or None) for every image drawn in the figure."""
    return [(im, im.colorbar) for ax in fig.axes for im in ax.images]


# --- shattered fig1.png and fig4.png ----------------------------------------------------------------------------

def test_sg_fig1_covariance_images_have_colour_bars():
    mod = load("shattered_gradients", "fig1")
    from nablax.figures import FigureRecord

    rng = np.random.default_rng(0)
    gs = {name: rng.standard_normal(16).cumsum() for _, name, _, _ in mod.PANELS}
    rec = FigureRecord("fig1", {})
    fig = mod.plot(gs, rec)
    images = image_colorbars(fig)
    assert len(images) == len(mod.PANELS) and all(bar is not None for _, bar in images)
    for im, bar in images:  # each bar shows its own image's scale
        assert bar.mappable is im and im.get_clim()[1] == pytest.approx(im.get_array().max())
    assert list(rec.to_dict()["panels"]) == [key for key, *_ in mod.PANELS]


def test_sg_fig4_gram_colour_bar_legend_off_the_lines_and_mathtext_label():
    mod = load("shattered_gradients", "fig4")
    x, y, source = mod.load_images(None, 24, 0)
    s = {"width": 2, "beta": 0.1, "seed": 0, "dtype": "float64", "grad_target": "first_layer_activations",
         "order": "kmeans", "backend": "numpy"}
    depths = mod.DEPTHS  # the default list: its curves are what a legend inside the axes covered
    results = {f: {d: mod.measure(f, d, x, y, s, d == depths[0]) for d in depths} for f in mod.FAMILIES}
    settings = {"depths": depths, "minibatch": len(y), "grad_target": s["grad_target"], "data": source, "width": 2}
    fig, rec = mod.plot(results, settings)
    images = image_colorbars(fig)
    assert len(images) == 2 * len(depths)
    bars = [bar for _, bar in images if bar is not None]
    assert len(bars) == 1 and bars[0].vmin == 0.0 and bars[0].vmax == 1.0
    assert all(im.get_clim() == (0.0, 1.0) for im, _ in images)  # one bar serves every image
    assert lines_under_legends(fig) == []
    (norm_ax,) = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert norm_ax.get_ylabel() == mod.NORM_RATIO == rec.panels["D"]["ylabel"]
    assert norm_ax.get_ylabel().startswith("$") and "||" not in norm_ax.get_ylabel()
    d = rec.to_dict()["panels"]
    assert sorted(d) == list("ABCD")
    for key in "CD":
        assert list(d[key]["series"]) == [*mod.FAMILIES, "white noise"]
        assert all(s["x"] == depths for s in d[key]["series"].values())


# --- gradients-explode orthogonal_init.png ----------------------------------------------------------------------

def test_orthogonal_init_lines_that_coincide_all_show(tmp_path):
    mod = load("gradients_explode", "orthogonal_init")
    tiny = {"depth": 3, "width": 6, "in_dim": 6, "eval_batch": 12, "n_seeds": 2, "selu_wide_width": 8,
            "exact_max_width": 6, "n_probes": 4}
    fig = mod.main(["--quick", "--out", str(tmp_path)], overrides=tiny)
    rec = json.loads((tmp_path / "orthogonal_init.json").read_text())
    # batch norm fixes the pre-activation std at 1 under both inits: panel B has lines that lie on each other
    assert any({"batch-ReLU", "batch-ReLU" + mod.ORTHO} <= set(g) for g in rec["panels"]["B"]["coinciding"])
    for ax, key in zip(fig.axes, "ABC"):
        ortho = [ln for ln in ax.get_lines() if ln.get_label().endswith(mod.ORTHO)]
        solid = [ln for ln in ax.get_lines() if ln.get_label() in mod.ARCHS]
        assert len(ortho) == len(solid) == 3
        assert min(ln.get_zorder() for ln in ortho) > max(ln.get_zorder() for ln in solid)  # drawn on top
        assert len({ln.get_marker() for ln in ortho}) == 3 and "None" not in {ln.get_marker() for ln in ortho}
        assert len({ln.get_markevery()[0] for ln in ortho}) == 3  # staggered: each of coinciding lines shows
        notes = [t.get_text() for t in ax.texts]
        assert bool(notes) == bool(rec["panels"][key]["coinciding"])
    legend_markers = {h.get_marker() for h in fig.axes[0].get_legend().legend_handles}
    assert set(mod.MARKERS.values()) <= legend_markers  # the legend says which marker is which


# --- shattered looks_linear.png ---------------------------------------------------------------------------------

LL_TINY = {"init_depth": 4, "width": 6, "train_depth": 3, "train_width": 6, "steps": 6, "snapshots": [0, 3]}


@pytest.fixture(scope="module")
def looks_linear(tmp_path_factory):
    out = tmp_path_factory.mktemp("ll")
    mod = load("shattered_gradients", "looks_linear")
    fig = mod.main(["--quick", "--out", str(out)], overrides=LL_TINY)
    return mod, fig, json.loads((out / "looks_linear.json").read_text())


def test_looks_linear_is_a_grid_with_a_notes_panel(looks_linear):
    mod, fig, rec = looks_linear
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    assert len(rows) == 2 and len(fig.axes) == 6
    width, height = fig.get_size_inches()
    assert width / height < 2
    notes = fig.axes[5]
    assert not notes.axison and notes.texts and rec["settings"]["notes"]
    assert sorted(rec["panels"]) == list("ABCDE")
    assert list(rec["panels"]["D"]["series"]) == ["best affine fit"] + [name for name, _, _ in mod.TRAINED]
    assert all(len(s["x"]) == len(s["y"]) == LL_TINY["steps"] + 1 for name, s in rec["panels"]["D"]["series"].items()
               if name != "best affine fit")
    assert rec["panels"]["D"]["series"]["best affine fit"]["y"][0] == rec["settings"]["best_affine_fit_loss"]


def test_looks_linear_panel_a_shows_both_coinciding_lines(looks_linear):
    mod, fig, rec = looks_linear
    crelu, prelu = fig.axes[0].get_lines()
    assert prelu.get_zorder() > crelu.get_zorder() and prelu.get_marker() not in ("None", "", None)
    assert crelu.get_linewidth() > 2 * prelu.get_linewidth()  # the one below shows round the one on top
    a = rec["panels"]["A"]
    ys = [np.array(s["y"]) for s in a["series"].values()]
    assert a["max_abs_difference"] == pytest.approx(np.abs(ys[0] - ys[1]).max())
    assert "coincide" in rec["settings"]["notes"][0]


def test_looks_linear_panel_e_records_where_the_acf_is_undefined(looks_linear):
    mod, fig, rec = looks_linear
    for name, s in rec["panels"]["E"]["series"].items():
        undefined = [t for t, v in zip(s["x"], s["y"]) if v is None]
        assert s["acf_undefined_steps"] == undefined
        if name in [n for n, _, _ in mod.LL]:
            assert undefined[:1] == [0]  # exactly linear at initialisation
    marks = [ln for ln in fig.axes[4].get_lines() if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert len(marks) == sum(bool(s["acf_undefined_steps"]) for s in rec["panels"]["E"]["series"].values())
    assert "acf.undefined" in rec["settings"] and any("undefined" in n for n in rec["settings"]["notes"])


def test_looks_linear_quick_protocol_trains_past_the_linear_plateau():
    """A looks-linear net starts as a linear map, near the best affine fit, and leaves that plateau only after tens
    of steps: the --quick protocol (the paper's steps and step size) must get its CReLU net well below it."""
    mod = load("shattered_gradients", "looks_linear")
    assert (mod.QUICK["steps"], mod.QUICK["lr"]) == (mod.PAPER["steps"], mod.PAPER["lr"])
    s = {**mod.QUICK, "snapshots": []}
    x = np.linspace(-2, 2, 256)[:, None]
    floor = mod.best_affine_loss(x, np.sin(np.pi * x))
    loss = mod.train("crelu-ll", s, 0)["loss"]
    assert loss[0] == pytest.approx(floor, rel=0.05)  # linear at initialisation: on the plateau
    assert loss[-1] < 0.5 * floor


# --- scripts/results_pictures.py --------------------------------------------------------------------------------
def results_pictures_script():
    """scripts/results_pictures.py as a module (the figure scripts' loader, from the folder beside theirs)."""
    return load("../scripts", "results_pictures")


def test_results_pictures_shrinks_pictures_and_keeps_small_records(tmp_path):
    """RESULTS.md's numbers are read from the figures' JSON records: a small one is copied beside its picture as it
    is; one over the limit without its largest series (SG Fig. 4's holds 7 MB of images)."""
    from PIL import Image

    results_pictures = results_pictures_script()
    src = tmp_path / "figs" / "gradients_explode"
    src.mkdir(parents=True)
    small = {"figure": "small", "panels": {"A": {"series": {"s": {"x": [1], "y": [2]}}}}}
    large = {"figure": "large", "panels": {"A": {"series": {"image": {"y": [7] * 2000}, "rank": {"y": [0.5]}}}}}
    for name, record in (("small", small), ("large", large)):
        Image.new("RGB", (2400, 600), "white").save(src / f"{name}.png")
        (src / f"{name}.json").write_text(json.dumps(record))
    out = tmp_path / "results"
    results_pictures.main([str(tmp_path / "figs"), "--out", str(out), "--max-json-kib", "2"])
    assert sorted(p.name for p in out.iterdir()) == ["ge_large.json", "ge_large.png", "ge_small.json", "ge_small.png"]
    assert (out / "ge_small.json").read_text() == (src / "small.json").read_text()
    kept = json.loads((out / "ge_large.json").read_text())["panels"]["A"]["series"]
    assert kept["rank"] == {"y": [0.5]} and "left_out" in kept["image"]
    assert Image.open(out / "ge_small.png").width == 1100
    assert "left_out" in json.dumps(results_pictures.slim(large, 100)) and "left_out" not in json.dumps(large)


def test_results_pictures_keep_the_line_colours_apart(tmp_path):
    """A figure of six panels of lines in matplotlib's first colours keeps each colour when it is shrunk to a
    palette (median cut made the blue and the green lines one teal: 51 and 53 away)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    results_pictures = results_pictures_script()
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5), dpi=110)
    x = np.linspace(0, 10, 200)
    for k, ax in enumerate(axes.flat):
        for i in range(4):
            ax.plot(x, np.sin(x + i) + 0.1 * k, label=f"series {i}")
        ax.set(title=f"panel {k}", xlabel="step", ylabel="value")
        ax.legend()
    fig.savefig(tmp_path / "lines.png")
    plt.close(fig)
    results_pictures.shrink(tmp_path / "lines.png", tmp_path / "small.png", 1100, 48)
    kept = [c for _, c in Image.open(tmp_path / "small.png").convert("RGB").getcolors(1 << 16)]
    for c in [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]:  # tab10's C0..C3
        assert min(sum((a - b) ** 2 for a, b in zip(c, k)) ** 0.5 for k in kept) < 20, c


def test_every_committed_picture_has_its_record():
    """paper_figures/results: each paper-scale picture beside RESULTS.md comes with the JSON record of the run that
    drew it (the figure it names, and where it was computed), so that RESULTS.md's numbers can be read again."""
    from pathlib import Path

    results = Path(__file__).resolve().parent.parent / "paper_figures" / "results"
    pictures = sorted(results.glob("*.png"))
    assert len(pictures) == 12
    for png in pictures:
        record = json.loads(png.with_suffix(".json").read_text())
        paper, _, name = record["figure"].partition("/")
        assert png.stem == {"gradients_explode": "ge", "shattered_gradients": "sg"}[paper] + "_" + name
        assert record["machine"]["blas"], png.name
