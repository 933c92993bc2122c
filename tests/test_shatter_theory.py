"""The shattered-gradients closed forms (spec §4.3-4.7) and the path model that matches them in expectation (§4.8)."""

import math

import numpy as np
import pytest

from nablax.metrics import shatter_theory as th

# spec §4.7, computed exactly from the formulas (rounded as printed there)
TABLE = [("fnn", 24, 1.0, 5.960e-8), ("res", 10, 1.0, 0.05631), ("res", 50, 0.1, 0.7803),
         ("res_bn", 24, 1.0, 0.2291), ("res_bn", 50, 0.1, 0.8196), ("highway", 50, 1.0, 0.6050)]


@pytest.mark.parametrize("kind,L,beta,corr", TABLE)
def test_closed_forms_reproduce_the_spec_table(kind, L, beta, corr):
    assert th.closed_form(kind, L, beta).corr == pytest.approx(corr, rel=1e-3)


def test_theorem3_part_a_telescopes_exactly():
    for beta in (1.0, 0.1, 0.37):
        for L in (1, 2, 7, 50, 200):
            m = th.closed_form("res_bn", L, beta)
            assert m.var == pytest.approx(1 + beta**2 * (L - 1), rel=1e-12)
            assert th.theorem3_asymptotic(L, beta).var == pytest.approx(m.var, rel=1e-12)
    # part (b) is asymptotic: C(i,j) / (beta sqrt(L)) -> a constant once beta^2 L >> 1, and sqrt(1+b^2(L-1)) is close
    cov = [th.closed_form("res_bn", L, 1.0).cov for L in (1000, 4000, 16000)]
    ratios = [c / math.sqrt(L) for c, L in zip(cov, (1000, 4000, 16000))]
    assert abs(ratios[2] - ratios[1]) < abs(ratios[1] - ratios[0]) < 0.05 * ratios[0]


def test_highway_correlation_is_depth_independent():
    assert th.closed_form("highway", 10_000).corr == pytest.approx(math.exp(-0.5), rel=1e-4)
    assert th.closed_form("highway", 4, t=0.3).corr == pytest.approx(0.85**4)


CASES = [("fnn", 1.0), ("res", 1.0), ("res", 0.1), ("res_bn", 1.0), ("res_bn", 0.1), ("highway", 1.0)]


@pytest.mark.parametrize("kind,beta", CASES)
def test_path_model_matches_closed_form(kind, beta):
    for L in (1, 2, 4):
        est = th.path_model(kind, L, width=200, beta=beta, trials=4000, rng=100 + L)
        z = est.z_scores(th.closed_form(kind, L, beta))
        assert all(abs(v) < 4.5 for v in z.values()), (kind, beta, L, z)
    # deeper: heavy tails, so a looser bound on the separate moments
    est = th.path_model(kind, 10, width=200, beta=beta, trials=4000, rng=7)
    z = est.z_scores(th.closed_form(kind, 10, beta))
    assert abs(z["var"]) < 5 and abs(z["cov"]) < 5, (kind, beta, z)


@pytest.mark.parametrize("kind,beta", CASES)
def test_dense_path_model_matches_closed_form(kind, beta):
    """The literal simulation (every N x N weight matrix drawn) agrees too, at a small width."""
    for L in (2, 3):
        est = th.path_model(kind, L, width=16, beta=beta, trials=3000, rng=L, method="dense")
        z = est.z_scores(th.closed_form(kind, L, beta))
        assert all(abs(v) < 4.5 for v in z.values()), (kind, beta, L, z)


def test_path_model_detects_a_wrong_formula():
    """The z-test has power: a factor 2 off in the covariance, or the wrong theorem, is rejected."""
    est = th.path_model("fnn", 2, trials=4000, rng=1)
    assert abs(est.z_scores(th.closed_form("fnn", 3)).__getitem__("cov")) > 6
    est = th.path_model("res_bn", 4, beta=1.0, trials=4000, rng=2)
    assert abs(est.z_scores(th.closed_form("res", 4, 1.0))["var"]) > 6


def test_mc_moments_standard_errors(rng):
    a, b = rng.normal(size=(2, 100_000))
    g1, g2 = a, 0.6 * a + 0.8 * b  # correlation 0.6
    m = th.mc_moments(g1 * g1, g2 * g2, g1 * g2)
    assert m.corr == pytest.approx(0.6, abs=4 * m.corr_se) and m.corr_se < 0.01
    assert m.var == pytest.approx(1.0, abs=4 * m.var_se)
    with pytest.raises(ValueError):
        th.mc_moments([1.0], [1.0], [1.0])


def test_degenerate_zero_block_resnet_scores_zero():
    est = th.path_model("res_bn", 1, trials=500, rng=0)  # no blocks: g_i = g_j in every trial
    assert est.corr == pytest.approx(1.0) and est.z_scores(th.closed_form("res_bn", 1))["corr"] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        th.closed_form("cnn", 3)
    with pytest.raises(ValueError):
        th.path_model("fnn", 2, trials=10, method="exact")
    with pytest.raises(ValueError):
        th.closed_form("fnn", 0)
    assert np.isfinite(th.path_model("fnn", 3, trials=64, rng=0, chunk=10).corr)  # chunks that do not divide T
