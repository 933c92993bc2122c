"""Collapsing-domain metrics (spec §2.7-2.9): pre-activation std and sign diversity, closed forms and where
they are measured (the input of every nonlinearity, inside residual branches too)."""

import math

import numpy as np
import pytest

import nablax
from nablax.metrics.domain import domain_metrics, preact_std, sign_diversity


def test_preact_std_closed_forms(rng):
    stds, means = np.array([0.5, 1.0, 2.0, 4.0]), np.array([0.0, 3.0, -1.0, 0.0])
    z = rng.standard_normal((2000, 4))
    z = (z - z.mean(0)) / z.std(0) * stds + means  # population std exactly ``stds`` per neuron
    assert preact_std(z) == pytest.approx(math.sqrt((stds ** 2).mean()), rel=1e-12)
    second = (stds ** 2 + means ** 2).mean()
    assert preact_std(z, "normalised") == pytest.approx(math.sqrt((stds ** 2).mean() / second), rel=1e-12)
    assert preact_std(z, ddof=1) == pytest.approx(math.sqrt((stds ** 2).mean() * 2000 / 1999), rel=1e-12)
    centred = z - z.mean(0)
    assert preact_std(centred, "normalised") == pytest.approx(1.0, rel=1e-12)  # why raw is the default
    assert preact_std(np.ones((5, 3)) * 7.0) == 0.0
    with pytest.raises(ValueError, match="variant"):
        preact_std(z, "relative")


def test_sign_diversity_counts_per_neuron_across_data():
    z = np.array([[1.0, -1.0, 0.0, 2.0],
                  [2.0, -3.0, 0.0, 0.0],
                  [-1.0, -2.0, 0.0, -5.0],
                  [3.0, -1.0, 0.0, 0.0]])
    # neuron 0: 3+/1- -> 1/4; neuron 1: 0+/4- -> 0; neuron 2: all zero (skipped); neuron 3: 1+/1- (2 zeros) -> 1/2
    assert sign_diversity(z) == pytest.approx((0.25 + 0.0 + 0.5) / 3)
    # zeros counted as positive: neuron 2 -> 4+/0- = 0, neuron 3 -> 3+/1- = 1/4
    assert sign_diversity(z, "positive") == pytest.approx((0.25 + 0.0 + 0.0 + 0.25) / 4)
    # zeros counted as negative: neuron 2 -> 0, neuron 3 -> 1+/3- = 1/4
    assert sign_diversity(z, "negative") == pytest.approx((0.25 + 0.0 + 0.0 + 0.25) / 4)
    assert math.isnan(sign_diversity(np.zeros((3, 2))))
    assert sign_diversity(z.reshape(4, 2, 2)) == sign_diversity(z)  # conv-shaped data: every entry a neuron
    with pytest.raises(ValueError, match="zero_policy"):
        sign_diversity(z, "drop")


def test_domain_metrics_sit_on_the_input_of_every_nonlinearity(rng):
    net = nablax.build("batch-ReLU", depth=4, width=6, in_dim=5, seed=1)
    tr = net.forward(rng.standard_normal((30, 5)))
    d = domain_metrics(tr)
    assert list(d.index) == [1, 2, 3, 4] and d.kind == ["relu"] * 4
    assert list(d.position) == [3, 6, 9, 12] and list(d.n_lin) == [1, 2, 3, 4] and list(d.block) == [0] * 4
    for j, p in enumerate(d.position):
        z = tr.values[p - 1]  # the batch-norm output feeding relu j
        assert d.preact_std[j] == pytest.approx(preact_std(z)) and d.sign_diversity[j] == sign_diversity(z)
    assert np.allclose(d.preact_std, 1.0, atol=1e-4)  # batch norm: 1 by construction, up to eps


def test_domain_metrics_inside_residual_branches(rng):
    net = nablax.build("layer-tanh (ResNet)", depth=3, width=6, in_dim=5, seed=2)
    tr = net.forward(rng.standard_normal((20, 5)))
    d = domain_metrics(tr, zero_policy="positive", variant="normalised")
    assert len(d.index) == 6 and list(d.block) == [1, 1, 2, 2, 3, 3] and list(d.position) == [2, 2, 3, 3, 4, 4]
    assert list(d.n_lin) == [1, 2, 3, 4, 5, 6]
    assert d.settings["sign_div.zero_policy"] == "positive"
    block = tr.caches[2]  # block 2: branch = layernorm, tanh, dense, layernorm, tanh, dense
    for j, inner in [(2, 1), (3, 4)]:
        z = block.values[inner]
        assert d.preact_std[j] == pytest.approx(preact_std(z, "normalised"))
        assert d.sign_diversity[j] == sign_diversity(z, "positive")


def test_odd_zero_bias_nets_on_symmetric_data_have_sign_diversity_one_half(rng):
    """Spec §2.8 (Derived): zero-bias tanh nets are odd, so on data {x, -x} every neuron is half positive."""
    x = rng.standard_normal((25, 6))
    tr = nablax.build("tanh", depth=6, width=8, in_dim=6, seed=3).forward(np.concatenate([x, -x]))
    assert np.allclose(domain_metrics(tr).sign_diversity, 0.5, atol=1e-15)


def test_orthogonal_initial_state_has_no_domain_collapse(rng):
    """Spec §7: the looks-linear ReLU net keeps the raw pre-activation std exactly (its quadratic mean over
    neurons is invariant under the orthogonal U_i) and, on symmetric data, sign diversity exactly 1/2;
    the Gaussian-initialised ReLU net collapses."""
    x = rng.standard_normal((200, 10))
    x = np.concatenate([x, -x])
    ll = domain_metrics(nablax.build("ReLU", depth=12, width=10, in_dim=10, init="looks_linear", seed=4).forward(x))
    assert np.allclose(ll.preact_std, ll.preact_std[0], rtol=1e-12)
    assert np.allclose(ll.sign_diversity, 0.5)
    g = domain_metrics(nablax.build("ReLU", depth=12, width=10, in_dim=10, seed=4).forward(x))
    assert g.sign_diversity[-1] < 0.4 and g.sign_diversity[0] > 0.45
