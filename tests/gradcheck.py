"""The tests' derivative checks: ``nablax.testing`` (the public dot-product test; its docstring gives the
tolerances), under the names the tests use."""

from __future__ import annotations

from nablax.testing import (  # noqa: F401  (re-exported for the tests)
    ADJOINT_RTOL,
    FD_RTOL,
    FD_STEP,
    central_difference,
    dot_err,
    dottest,
    dottest_params,
    rel_err,
)
from nablax.testing import stacked_jacobians as stacked_identity_jacobians  # noqa: F401


def check_layer_derivatives(layer, x, mode, rng, n_probe=3, f=None):
    """``dottest``: vjp and jvp against finite differences and each other, with and without probe axes."""
    dottest(layer, x, mode, rng=rng, f=f, n_probe=n_probe)


def check_param_derivatives(layer, x, mode, rng):
    """``dottest_params``: param_grads against param_jvp (adjoint) and against finite differences."""
    dottest_params(layer, x, mode, rng=rng)
