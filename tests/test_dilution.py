"""k-dilution, block GSCs and the Pythagorean formula (spec §4, §11.8-11.9)."""

import math

import numpy as np
import pytest

import nablax
from nablax.layers import Dense, Residual, Tanh
from nablax.metrics.dilution import block_dilution, dilution, pythagorean_gsc, telescoped_gsc
from nablax.metrics.gsc import gsc
from nablax.network import Network


def orthogonal_block_net(rng, m=5, skip_scale=None):
    """A block whose two Pythagorean conditions hold exactly: the data lives in the first m coordinates, the
    branch maps them into the last m (S _|_ R), and the skip and branch Jacobians occupy disjoint blocks
    (<J_s, J_rho>_F = 0)."""
    d = 2 * m
    W = np.zeros((d, d))
    W[:m, m:] = rng.standard_normal((m, m))
    skip = None
    if skip_scale is not None:
        A = np.zeros((d, d))
        A[:m, :m] = rng.standard_normal((m, m)) * skip_scale
        A[m:, m:] = rng.standard_normal((m, m))
        skip = Dense(A)
    x = np.zeros((7, d))
    x[:, :m] = rng.standard_normal((7, m))
    return Network([Residual([Dense(W)], skip=skip, beta=0.6)], d), x


@pytest.mark.parametrize("skip_scale", [None, 2.5])
def test_pythagorean_formula_holds_when_its_conditions_do(skip_scale, rng):
    net, x = orthogonal_block_net(rng, skip_scale=skip_scale)
    tr = net.forward(x)
    b = block_dilution(tr, 1, method="exact")
    assert abs(b.cos_values) < 1e-12 and abs(b.cos_jacobians) < 1e-12
    assert b.gsc_block == pytest.approx(b.predicted, rel=1e-12)
    assert b.gsc_block == pytest.approx(gsc(tr, 0, 1, method="exact").value[0], rel=1e-12)
    s = x if skip_scale is None else x @ net.layers[0].skip.W
    rho = 0.6 * (x @ net.layers[0].branch[0].W)
    assert b.k == pytest.approx(np.linalg.norm(s) / np.linalg.norm(rho), rel=1e-12)
    if skip_scale is None:
        assert abs(b.gsc_skip - 1) < 1e-12
        assert b.predicted == pytest.approx(math.sqrt((b.k ** 2 + b.gsc_branch ** 2) / (b.k ** 2 + 1)), rel=1e-12)
    else:
        assert abs(b.gsc_skip - 1) > 1e-3  # a non-isometric skip: the general formula is exercised


def test_exact_relation_with_both_cross_terms_on_a_random_block(rng):
    """Without the conditions: GSC_f^2 = (k^2 g_s^2 + r^2 + 2 k g_s r c_J) / (k^2 + 1 + 2 k c_v), exactly."""
    net = Network([Dense(rng.standard_normal((4, 4))),
                   Residual([Tanh(), Dense(rng.standard_normal((4, 4)) + 2 * np.eye(4))], beta=1.3)], 4)
    tr = net.forward(rng.standard_normal((6, 4)) + 1.0)
    b = block_dilution(tr, 2)
    assert b.method == "exact" and abs(b.cos_values) > 0.05 and abs(b.cos_jacobians) > 0.05
    k, gs, r = b.k, b.gsc_skip, b.gsc_branch
    rhs = (k * k * gs * gs + r * r + 2 * k * gs * r * b.cos_jacobians) / (k * k + 1 + 2 * k * b.cos_values)
    assert b.gsc_block ** 2 == pytest.approx(rhs, rel=1e-12)
    assert abs(b.gsc_block - b.predicted) > 1e-3  # the formula alone is off here: the test can fail
    assert b.gsc_block == pytest.approx(gsc(tr, 1, 2, method="exact").value[0], rel=1e-12)
    with pytest.raises(ValueError, match="not of a residual block"):
        block_dilution(tr, 1)


def test_random_resnet_blocks_nearly_satisfy_the_formula(rng):
    """Spec §11.9: at random initialisation and large width the conditions hold approximately."""
    net = nablax.build("layer-tanh (ResNet)", depth=4, width=200, in_dim=50, seed=5)
    d = dilution(net.forward(rng.standard_normal((20, 50))))
    assert len(d.blocks) == 4 and [b.block for b in d.blocks] == [1, 2, 3, 4]
    for b in d.blocks:
        assert abs(b.cos_values) < 0.1 and abs(b.cos_jacobians) < 0.1
        assert b.gsc_block == pytest.approx(b.predicted, rel=0.02)
    assert np.all(np.diff(d.column("k")) > 0)  # dilution grows with depth
    assert d.product_measured == pytest.approx(d.end_to_end, rel=0.05)  # approximate multiplicativity (§11.8)


def test_hutchinson_block_gscs_agree_with_exact(rng):
    net = nablax.build("batch-ReLU (ResNet)", depth=2, width=5, in_dim=4, seed=6)
    tr = net.forward(rng.standard_normal((6, 4)))
    for p in (2, 3):
        ex = block_dilution(tr, p, method="exact")
        est = block_dilution(tr, p, method="hutchinson", n_probes=400, rng=p)
        assert est.method == "hutchinson" and ex.method == "exact"
        assert ex.gsc_block == pytest.approx(gsc(tr, p - 1, p, method="exact").value[0], rel=1e-12)
        for name, se in zip(("gsc_skip", "gsc_branch", "gsc_block"), est.stderr):
            assert abs(getattr(est, name) - getattr(ex, name)) <= 5 * se + 1e-12, name
        assert est.stderr[0] == 0.0 and est.gsc_skip == pytest.approx(1.0)  # the identity's norm is known
    assert block_dilution(tr, 2, exact_limit=5).method == "hutchinson"  # auto, coupled, above the limit


def test_telescoped_product_and_prediction():
    """Spec §4: with r^2 = 2 and k_b^2 = b the product telescopes to sqrt((B + 2) / 2)."""
    for n in (1, 5, 40):
        assert telescoped_gsc([math.sqrt(2)] * n) == pytest.approx(math.sqrt((n + 2) / 2), rel=1e-12)
    assert pythagorean_gsc(1e6, 7.0) == pytest.approx(1 + (49 - 1) / (2 * 1e12), rel=1e-12)
    assert pythagorean_gsc(0.0, 7.0) == 7.0
