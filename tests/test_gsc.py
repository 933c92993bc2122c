"""The gradient scale coefficient (spec §2.1-2.5, §11) on closed-form cases, the paper numbering (§1.2-1.3),
the orthogonal initial state (§7, §11.12), the `nablax gsc` command and the figure JSON of figures 1 and 3."""

import json
import sys

import numpy as np
import pytest

import nablax
from figure_scripts import load
from gradcheck import rel_err
from nablax.init import orthonormal
from nablax.layers import Dense, ReLU, Tanh
from nablax.losses import SoftmaxCrossEntropy
from nablax.metrics.gsc import gsc, gsc_bottom_to_error, gsc_table, gsc_to, gsc_to_error
from nablax.metrics.jacobian import (bottom_position, paper_index, qm_norm, reference_position, select_positions,
                                     x_coordinates)
from nablax.network import Network, forward_chain



def orthogonal_linear_net(rng, d=7, depth=4, gains=(1.0, 3.0, 0.2, 5.0)):
    """Dense layers c_i Q_i with Q_i orthogonal: a scaled orthogonal chain (GSC is scale-free, so exactly 1)."""
    return Network([Dense(g * orthonormal(d, d, rng), rng.standard_normal(d) * 0) for g in gains[:depth]], d)


@pytest.mark.parametrize("aggregation", ["batch", "per_example_mean", "per_example_geomean"])
def test_orthogonal_linear_network_has_gsc_exactly_one(aggregation, rng):
    net = orthogonal_linear_net(rng)
    tr = net.forward(rng.standard_normal((5, 7)))
    table = gsc_table(tr, aggregation=aggregation, method="exact")
    upper = table[np.triu_indices(net.n_positions)]
    assert np.allclose(upper, 1.0, rtol=0, atol=1e-12)
    assert np.isnan(table[np.tril_indices(net.n_positions, -1)]).all()
    sq = gsc_to(tr, aggregation=aggregation, squared=True).value
    assert np.allclose(sq, 1.0, atol=1e-12)


def test_gaussian_layer_gsc_tends_to_one_only_with_input_dim_divisor(rng):
    """Spec §11.2: a Gaussian m x n layer of any variance has GSC -> 1 as the width grows (qm norm / n)."""
    for d_in, d_out, var in [(60, 240, 7.0), (240, 60, 0.01)]:
        W = rng.standard_normal((d_in, d_out)) * np.sqrt(var)
        tr = Network([Dense(W)], d_in).forward(rng.standard_normal((50, d_in)))
        assert abs(gsc(tr, 0, 1).value[0] - 1.0) < 0.05  # fluctuations ~ 1/sqrt(2 B min(d_in, d_out)) ~ 0.01
        # dividing by min(m, n) instead would give sqrt(d_in / min) != 1 here for the wide-output layer
        assert qm_norm(W.T) == pytest.approx(np.sqrt((W ** 2).sum() / d_in))


def test_gsc_matches_explicit_jacobians_and_definition(rng):
    """GSC(lo, hi) = ||J||_qm ||f_lo|| / ||f_hi|| from explicit per-sample Jacobians, batch and per example."""
    net = nablax.build("SeLU", depth=3, width=6, in_dim=4, seed=2)
    x = rng.standard_normal((5, 4))
    tr = net.forward(x)
    res = gsc_to(tr, 5, 1, method="exact")
    per = gsc_to(tr, 5, 1, aggregation="per_example_mean")
    for i, p in enumerate(range(1, 6)):
        J = tr.jacobian(p, 5)  # (B, d_5, d_p)
        batch = qm_norm(J) * np.linalg.norm(tr.values[p]) / np.linalg.norm(tr.values[5])
        assert rel_err(res.value[i], batch) < 1e-12
        each = [qm_norm(J[b]) * np.linalg.norm(tr.values[p][b]) / np.linalg.norm(tr.values[5][b]) for b in range(5)]
        assert rel_err(per.value[i], np.mean(each)) < 1e-12
    assert res.method == "exact" and res.stderr.max() == 0


def test_gsc_is_the_relative_sensitivity(rng):
    """Spec §2.2: the mean-square relative output change per relative random input perturbation is GSC^2."""
    from nablax.metrics.gsc import relative_sensitivity_check

    net = nablax.build("tanh", depth=2, width=5, in_dim=5, seed=3)
    tr = net.forward(rng.standard_normal((1, 5)))
    samples = [relative_sensitivity_check(tr, 0, 4, rng) ** 2 for _ in range(3000)]
    assert abs(np.mean(samples) / gsc(tr, 0, 4).value[0] ** 2 - 1) < 0.05


def test_gsc_invariant_to_rescaling_a_layer_output(rng):
    """Spec §11.1: multiplying f_lo or f_hi by c != 0 leaves GSC(lo, hi) exactly unchanged (here via a Dense c*I
    inserted after a layer, and its inverse folded into the next weight), also through batch norm."""
    for name in ["tanh", "batch-tanh"]:
        net = nablax.build(name, depth=3, width=5, in_dim=4, seed=4)
        x = rng.standard_normal((6, 4))
        base = gsc_to(net.forward(x), method="exact").value
        c = -3.7
        layers = list(net.layers)
        k = 2 if name == "tanh" else 3  # after the first nonlinearity
        nxt = layers[k]
        scaled = Network(layers[:k] + [Dense(c * np.eye(5)), Dense(nxt.W / c, nxt.b)] + layers[k + 1:], 4)
        tr = scaled.forward(x)
        got = gsc_to(tr, method="exact").value
        assert abs(got[k + 1] - base[k]) < 1e-12 * base[k]  # GSC from the rescaled f_k (position k + 1 now)
        assert np.allclose(np.delete(got, [k + 1, k + 2]), np.delete(base, [k + 1]), rtol=1e-12)
        top = Network(list(net.layers) + [Dense(c * np.eye(5))], 4).forward(x)  # rescale the output
        assert np.allclose(gsc_to(top, method="exact").value[:-1], base, rtol=1e-12)


def test_relu_and_tanh_layer_closed_forms(rng):
    """Spec §11.3-11.4 (batch-level): ReLU GSC^2 = active fraction * ||z||^2 / ||relu z||^2; tanh
    GSC^2 = mean(tanh'^2) mean(z^2) / mean(tanh^2), >= 1 and -> 1 as the scale -> 0."""
    z = rng.standard_normal((50, 40))
    relu = gsc(Network([ReLU()], 40).forward(z), 0, 1).value[0] ** 2
    active = (z > 0).mean()
    assert rel_err(relu, active * (z ** 2).sum() / (np.maximum(z, 0) ** 2).sum()) < 1e-12
    prev = np.inf
    for scale in [3.0, 1.0, 0.1, 0.001]:
        zs = scale * z
        g2 = gsc(Network([Tanh()], 40).forward(zs), 0, 1).value[0] ** 2
        t = np.tanh(zs)
        assert rel_err(g2, ((1 - t ** 2) ** 2).mean() * (zs ** 2).mean() / (t ** 2).mean()) < 1e-12
        assert 1.0 <= g2 <= prev
        prev = g2
    assert prev - 1 < 1e-5


def test_hutchinson_agrees_with_exact_within_reported_error(rng):
    net = nablax.build("batch-ReLU", depth=3, width=6, in_dim=5, seed=5)
    tr = net.forward(rng.standard_normal((8, 5)))
    exact = gsc_to(tr, method="exact")
    auto = gsc_to(tr)  # 48 seeds <= exact_limit: auto is exact here
    assert auto.method == "exact" and np.allclose(auto.value, exact.value, rtol=1e-12)
    est = gsc_to(tr, method="hutchinson", n_probes=300, rng=1)
    assert est.method == "hutchinson" and est.n_probes == 300
    assert np.all(est.stderr[:-1] > 0)
    z = np.abs(est.value - exact.value) / np.where(est.stderr > 0, est.stderr, 1)
    assert np.all(z < 5), z
    assert gsc_to(tr, exact_limit=10).method == "hutchinson"  # a coupled pass above the limit switches


def test_error_layer_gsc_sum_and_mean_and_bottom(rng):
    """Spec §11.5: the batch-level GSC(k, 0) does not depend on sum vs mean loss; gsc.bottom picks linear 1 or the
    input."""
    net = nablax.build("layer-tanh", depth=3, width=6, in_dim=5, out_dim=3, seed=6)
    x, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    tr = net.forward(x)
    loss = SoftmaxCrossEntropy()
    E, g = loss.value(tr.output, y), loss.grad(tr.output, y)
    mean = gsc_to_error(tr, g, E, aggregation="batch")
    total = gsc_to_error(tr, 7 * g, 7 * E, aggregation="batch")
    per_example_sum = gsc_to_error(tr, 7 * g, loss.values(tr.output, y), aggregation="batch")
    assert np.allclose(mean.value, total.value, rtol=1e-12) and np.allclose(mean.value, per_example_sum.value, rtol=1e-12)
    # from position p: ||dE/dF_p|| ||F_p|| / (sqrt(B d_p) |E|), checked by an explicit pullback at p = 2
    gp = tr.pullback(g, None, 2)
    assert rel_err(mean.at(2), np.linalg.norm(gp) * np.linalg.norm(tr.values[2]) / (np.sqrt(7 * 6) * E)) < 1e-12
    assert gsc_bottom_to_error(tr, g, E, aggregation="batch") == pytest.approx(mean.at(1), rel=1e-12)
    assert gsc_bottom_to_error(tr, g, E, bottom="input", aggregation="batch") == pytest.approx(mean.at(0), rel=1e-12)
    k, l0 = mean.paper_layers()
    assert l0 == 0 and k[0] == len(net.layers) + 1


def _per_example_gsc_by_finite_differences(tr, loss, y, p, eps=1e-6):
    """GSC_b(p, E) = ||dE_b/df_{p,b}|| ||f_{p,b}|| / (sqrt(d_p) |E_b|), the gradient by central differences of
    example b's own error in each coordinate of its own activation at position p (the rest of the net re-run)."""
    f = tr.values[p]
    out = []
    for b in range(f.shape[0]):
        grad = np.empty(f.shape[1])
        for j in range(f.shape[1]):
            h = np.zeros_like(f)
            h[b, j] = eps
            up, down = (forward_chain(tr.network.layers[p:], f + s * h, tr.mode)[0][-1] for s in (1, -1))
            grad[j] = (loss.values(up, y)[b] - loss.values(down, y)[b]) / (2 * eps)
        out.append(np.linalg.norm(grad) * np.linalg.norm(f[b]) / (np.sqrt(f.shape[1]) * loss.values(tr.output, y)[b]))
    return np.array(out)


@pytest.mark.parametrize("name, train", [("layer-tanh", True), ("batch-ReLU", False), ("SeLU", True)])
def test_per_example_error_gsc_against_finite_differences(name, train, rng):
    """The default GSC to the error layer is per example: each example's own error against its own activations,
    aggregated by the geometric or arithmetic mean (batch norm here with its running statistics, so that a
    finite difference of one example moves nothing else)."""
    net = nablax.build(name, depth=3, width=5, in_dim=4, out_dim=3, seed=2)
    for k, v in net.named_state().items():
        v[...] = rng.uniform(0.5, 2.0, v.shape) if "var" in k else rng.standard_normal(v.shape)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    tr = net.forward(x, train=train)
    loss = SoftmaxCrossEntropy()
    errors, g_sum = loss.values(tr.output, y), 6 * loss.grad(tr.output, y)
    geo = gsc_to_error(tr, g_sum, errors)
    arith = gsc_to_error(tr, g_sum, errors, aggregation="per_example_mean")
    assert geo.aggregation == "per_example_geomean"
    for p in (0, 2, 5):
        fd = _per_example_gsc_by_finite_differences(tr, loss, y, p)
        assert rel_err(geo.at(p), np.exp(np.log(fd).mean())) < 1e-7
        assert rel_err(arith.at(p), fd.mean()) < 1e-7
    squared = gsc_to_error(tr, g_sum, errors, squared=True)
    assert np.allclose(squared.value, geo.value ** 2, rtol=1e-12)


def test_per_example_error_gsc_does_not_shrink_with_the_batch(rng):
    """The batch-level form falls like 1/sqrt(B) at a fixed per-example scale; the per-example form does not:
    B copies of one example give B times the batch error, sqrt(B) times its gradient norm and activation norm."""
    net = nablax.build("SeLU", depth=4, width=6, in_dim=3, out_dim=2, seed=1)
    x, y = rng.standard_normal((1, 3)), np.array([1])
    loss = SoftmaxCrossEntropy()
    values = {}
    for B in (1, 16):
        tr = net.forward(np.repeat(x, B, axis=0))
        yy = np.repeat(y, B)
        g_sum, errors = B * loss.grad(tr.output, yy), loss.values(tr.output, yy)
        values[B] = (gsc_to_error(tr, g_sum, errors).at(1), gsc_to_error(tr, g_sum, errors, aggregation="batch").at(1))
    assert values[16][0] == pytest.approx(values[1][0], rel=1e-12)
    assert values[16][1] == pytest.approx(values[1][1] / 4, rel=1e-12)


@pytest.mark.filterwarnings("error")  # no division by the left-out zeros
def test_per_example_error_gsc_leaves_out_examples_with_zero_error(rng):
    """A fitted example whose error rounds to exactly 0 has no GSC (0/0): the aggregate is over the others, and
    the result says how many were left out."""
    net = nablax.build("layer-tanh", depth=3, width=5, in_dim=4, out_dim=3, seed=2)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    tr = net.forward(x)
    loss = SoftmaxCrossEntropy()
    errors, g_sum = loss.values(tr.output, y), 6 * loss.grad(tr.output, y)
    zeroed = errors.copy()
    zeroed[[1, 4]] = 0.0
    keep = [0, 2, 3, 5]
    got = gsc_to_error(tr, g_sum, zeroed)
    sub = net.forward(x[keep])
    want = gsc_to_error(sub, 4 * loss.grad(sub.output, y[keep]), loss.values(sub.output, y[keep]))
    assert np.allclose(got.value, want.value, rtol=1e-12) and got.settings["examples_left_out"] == 2
    with pytest.raises(ValueError, match="every example's error is exactly 0"):
        gsc_to_error(tr, g_sum, np.zeros(6))


def test_per_example_error_gsc_refuses_coupled_passes_and_scalar_errors(rng):
    net = nablax.build("batch-ReLU", depth=2, width=4, in_dim=3, out_dim=2)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    tr = net.forward(x)
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="hold_stats"):
        gsc_to_error(tr, 5 * loss.grad(tr.output, y), loss.values(tr.output, y))
    with pytest.raises(ValueError, match="each example's error"):
        gsc_to_error(net.forward(x, hold_stats=True), loss.grad(tr.output, y), loss.value(tr.output, y))


def test_paper_numbering_and_x_coordinates():
    net = nablax.build("batch-ReLU", depth=2, width=3)  # dense bn relu dense bn relu: P = 6
    assert [paper_index(p, 6) for p in range(8)] == [7, 6, 5, 4, 3, 2, 1, 0]
    assert all(paper_index(paper_index(p, 6), 6) == p for p in range(8))  # its own inverse
    with pytest.raises(IndexError):
        paper_index(8, 6)
    assert list(x_coordinates(net, range(7))) == [0, 1, 1, 1, 2, 2, 2]
    assert list(x_coordinates(net, [0, 6], "paper")) == [7, 1]
    assert select_positions(net, "block_ends") == [0, 3, 6]
    assert select_positions(net, "after_linear") == [0, 1, 4]
    assert select_positions(net, "stream") == list(range(7))
    assert reference_position(net) == 6 and reference_position(net, "last_linear") == 4
    assert bottom_position(net) == 1 and bottom_position(net, "input") == 0
    res = nablax.build("layer-ReLU (ResNet)", depth=2, width=3, out_dim=2)  # dense, block, block, dense
    assert select_positions(res, "stream") == [0, 1, 2, 3]
    assert reference_position(res) == 3 and reference_position(res, "output") == 4
    assert reference_position(res, "last_linear") == 4
    tr = net.forward(np.random.default_rng(0).standard_normal((4, 3)))
    r = gsc_to(tr, "last_linear", method="exact")
    k, l_hi = r.paper_layers()
    assert r.hi == 4 and l_hi == 3 and list(k) == [7, 6, 5, 4, 3]


def test_orthogonal_initial_state_has_gsc_one_between_hidden_positions(rng):
    """Spec §7 / §11.12: the looks-linear ReLU net is the linear map A U_D ... U_2 V at initialisation, and every
    pair of hidden positions has GSC exactly 1, batch-level and per example."""
    net = nablax.build("ReLU", depth=5, width=8, in_dim=3, out_dim=2, init="looks_linear", seed=7)
    x = rng.standard_normal((6, 3))
    tr = net.forward(x)
    J = tr.jacobian()
    assert np.allclose(J, J[0], atol=1e-12)  # one linear map for every sample
    assert np.allclose(tr.output, x @ J[0].T, atol=1e-12)
    hidden = slice(1, net.n_positions - 1)  # from linear 1's output to the last ReLU's output
    for aggregation in ["batch", "per_example_mean"]:
        table = gsc_table(tr, aggregation=aggregation, method="exact")[hidden, hidden]
        assert np.allclose(table[np.triu_indices(table.shape[0])], 1.0, atol=1e-12)
    gaussian = gsc_table(nablax.build("ReLU", depth=5, width=8, in_dim=3, seed=7).forward(x))[1:, 1:]
    assert np.abs(gaussian[np.triu_indices(gaussian.shape[0])] - 1).max() > 1e-3  # the check can fail


def test_nablax_gsc_command_prints_a_row_per_position(capsys, tmp_path):
    from nablax.cli import main

    png = tmp_path / "g.png"
    assert main(["gsc", "--arch", "batch-ReLU", "--depth", "3", "--width", "6", "--in-dim", "4", "--batch", "20",
                 "--method", "hutchinson", "--probes", "4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == list(range(10))  # input + 3 x (dense, batchnorm, relu)
    assert [r[2] for r in rows[1:4]] == ["dense", "batchnorm", "relu"]
    assert rows[-1][4] == "1" and "hutchinson" in out
    assert len(rows[3]) == 9  # a relu row: ... GSC +- se, preact std, sign div
    assert png.exists()


# --- figure JSON: every legend name and panel, at a tiny size -----------------------------------------------

TINY = {"depth": 3, "width": 6, "in_dim": 6, "eval_batch": 12, "n_seeds": 2, "selu_wide_width": 8,
        "exact_max_width": 6, "n_probes": 4}


def run_figure(module: str, tmp_path, overrides=TINY):
    mod = load("gradients_explode", module)
    mod.main(["--quick", "--out", str(tmp_path)], overrides=overrides)
    return mod, json.loads((tmp_path / f"{module}.json").read_text())


@pytest.mark.parametrize("module, panels", [("fig1", "ABC"), ("fig3", "ABD"), ("orthogonal_init", "ABC")])
def test_figure_json_has_every_legend_name_and_panel(module, panels, tmp_path):
    training = {"depth": 2, "width": 8, "epochs": 2, "lr_grid": None, "lr": 0.1}
    mod, rec = run_figure(module, tmp_path, {**TINY, "training": training} if module == "fig3" else TINY)
    assert (tmp_path / f"{module}.png").exists()
    names = mod.NAMES if hasattr(mod, "NAMES") else mod.ARCHS + [a + mod.ORTHO for a in mod.ARCHS]
    assert sorted(rec["panels"]) == list(panels)
    for key, panel in rec["panels"].items():
        assert list(panel["series"]) == names
        if key == "D":
            continue  # training curves: one run per architecture, no band
        for s in panel["series"].values():
            assert len(s["x"]) == len(s["y"]) == len(s["lo"]) == len(s["hi"]) > 0
            assert all(lo <= y * (1 + 1e-12) and y <= hi * (1 + 1e-12) for lo, y, hi in zip(s["lo"], s["y"], s["hi"]))
    gsc_panel = rec["panels"]["A"]["series"]
    for s in gsc_panel.values():
        assert s["y"][-1] == pytest.approx(1.0)  # GSC of the reference position to itself
    for key in ("gsc.jacobian", "gsc.reference", "eval_batch", "seeds", "gsc_at_input", "bn.stats_mode"):
        assert key in rec["settings"]
    if module == "fig1":
        assert rec["settings"]["gsc.jacobian"]["batch-ReLU"]["method"] == "hutchinson"
        assert rec["settings"]["gsc.jacobian"]["ReLU"]["method"] == "exact"
        assert len(rec["panels"]["B"]["series"]["ReLU"]["x"]) == TINY["depth"]
    if module == "fig3":  # panel D: effective depth during training, starting at 1 at initialisation
        assert all(s["y"][0] == 1 and s["y"][-1] >= 1 for s in rec["panels"]["D"]["series"].values())
        assert len(rec["panels"]["B"]["series"]["layer-ReLU (ResNet)"]["x"]) == 2 * TINY["depth"]
        assert len(gsc_panel["batch-ReLU (ResNet)"]["dilution_seed0"]["k"]) == TINY["depth"]
        assert "panel C is unknown" in rec["settings"]["panels_note"]  # the figure says why C is missing
    if module == "orthogonal_init":  # exact GSC 1 from every hidden position of the plain ReLU net
        assert np.allclose(gsc_panel["ReLU (orthogonal initial state)"]["y"][1:], 1.0, atol=1e-10)


@pytest.mark.parametrize("extra, says", [(["--no-training"], "(A, B at initialisation)"),
                                         ([], "(A, B at initialisation); D: 1 seed trained on")])
def test_fig3_title_says_how_many_seeds_each_panel_has(extra, says, tmp_path, monkeypatch):
    """A and B average the figure's seeds at initialisation; D trains the protocol's own number of seeds."""
    mod = load("gradients_explode", "fig3")
    random_init, titles = sys.modules["_random_init"], []
    save = random_init.save_figure
    monkeypatch.setattr(random_init, "save_figure",
                        lambda fig, *a: (titles.append(fig._suptitle.get_text()), save(fig, *a)))
    training = {"depth": 2, "width": 8, "epochs": 1, "lr_grid": None, "lr": 0.1}
    mod.main(["--quick", "--out", str(tmp_path)] + extra, overrides={**TINY, "training": training})
    assert titles[0].endswith(says + (" digits, quick protocol" if not extra else ""))


def test_nablax_gsc_names_positions_the_way_the_paper_does(capsys, tmp_path, monkeypatch):
    import matplotlib.figure

    from nablax.cli import main

    titles = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: titles.append(fig.axes[0].get_title()))
    assert main(["gsc", "--arch", "batch-ReLU", "--depth", "3", "--width", "6", "--in-dim", "4", "--batch", "20",
                 "--plot", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    # P = 9 layers, reference last_block = position 9 = the paper's layer 1
    assert "paper l: the paper's layer index, numbered from the output (l = 10 - pos; l = 1 is the output" in out
    assert "GSC(p->ref) is the paper's GSC(l, 1)" in out
    assert titles == ["batch-ReLU: GSC(l, 1) to the paper's layer 1 (position 9)"]
