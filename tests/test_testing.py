"""nablax.testing, the public dot-product test: it passes a correct layer of a user's own and catches the
mistakes a hand-written derivative makes (a wrong sign, a missing factor of 2), in vjp, jvp, jacobian and the
parameter gradients, with the measured errors."""

import numpy as np
import pytest

from nablax.layers import Cache, Layer, Mode
from nablax.testing import DerivativeError, check_jacobian, dottest, dottest_params


class Scaled(Layer):
    """y = a x^2 entrywise, with a parameter a (d,): dx = 2 a x dy, dy = 2 a x dx, da = sum_b x^2 dy. ``mistake``
    breaks one formula on purpose."""

    def __init__(self, a, mistake=""):
        self.a, self.mistake = a, mistake

    @property
    def params(self):
        return {"a": self.a}

    def forward(self, x, mode=Mode()):
        return self.a * x * x, Cache(x=x)

    def vjp(self, cache, dy):
        factor = {"vjp sign": -2, "vjp factor": 1, "both factor": 1}.get(self.mistake, 2)
        return factor * self.a * cache.x * dy

    def jvp(self, cache, dx):
        factor = {"jvp factor": 1, "both factor": 1}.get(self.mistake, 2)
        return factor * self.a * cache.x * dx

    def jacobian(self, cache):
        factor = -2 if self.mistake == "jacobian sign" else 2
        return factor * (self.a * cache.x)[:, :, None] * np.eye(cache.x.shape[1])

    def param_grads(self, cache, dy):
        sign = -1 if self.mistake == "param sign" else 1
        return {"a": sign * (cache.x * cache.x * dy).sum(axis=-2)}

    def param_jvp(self, cache, dparams):
        return dparams["a"] * cache.x * cache.x


@pytest.fixture
def x():
    return np.random.default_rng(1).standard_normal((5, 4)) + 3.0  # away from 0, where 2 a x vanishes


def layer(mistake=""):
    return Scaled(np.random.default_rng(2).uniform(0.5, 1.5, 4), mistake)


def test_a_correct_layer_passes_and_reports_its_errors(x):
    errors = dottest(layer(), x, rng=0)
    assert set(errors) == {"jvp_vs_fd", "adjoint", "vjp_vs_fd", "probe_axes"}
    assert errors["adjoint"] < 1e-14 and errors["jvp_vs_fd"] < 1e-8
    assert check_jacobian(layer(), x)["vs_vjp"] < 1e-14
    assert dottest_params(layer(), x, rng=0)["a"]["adjoint"] < 1e-14


@pytest.mark.parametrize("mistake, caught", [
    ("vjp sign", {"adjoint", "vjp_vs_fd"}),  # vjp is no longer jvp's adjoint
    ("vjp factor", {"adjoint", "vjp_vs_fd"}),
    ("jvp factor", {"jvp_vs_fd", "adjoint"}),
    ("both factor", {"jvp_vs_fd", "vjp_vs_fd"}),  # adjoint to each other, and both wrong: only the differences see it
])
def test_a_wrong_derivative_is_caught(x, mistake, caught):
    with pytest.raises(DerivativeError) as err:
        dottest(layer(mistake), x, rng=0)
    errors = dottest(layer(mistake), x, rng=0, raise_error=False)
    assert err.value.errors == errors
    assert {k for k, e in errors.items() if e > 1e-3} == caught  # O(1) errors, far above every tolerance
    assert all(k in str(err.value) for k in caught)


def test_a_wrong_jacobian_or_parameter_gradient_is_caught(x):
    with pytest.raises(DerivativeError, match="vs_vjp"):
        check_jacobian(layer("jacobian sign"), x)
    with pytest.raises(DerivativeError, match="parameter 'a': adjoint"):
        dottest_params(layer("param sign"), x, rng=0)


def test_a_result_of_the_wrong_shape_is_refused(x):
    bad = layer()
    bad.vjp = lambda cache, dy: dy.sum(axis=-1)
    with pytest.raises(DerivativeError, match=r"vjp\(v\) has shape \(5,\), expected \(5, 4\)"):
        dottest(bad, x)
