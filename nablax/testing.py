"""Derivative checks for any layer, also one of your own: the dot-product test (PyLops' ``dottest``, HIPS/autograd's
``check_vjp``) against central finite differences, and the Jacobian against stacked vjp and jvp.

A layer follows ``nablax.layers.base.Layer``: ``forward(x, mode) -> (y, cache)``, ``vjp(cache, dy)``,
``jvp(cache, dx)`` (both with any leading probe axes), ``jacobian(cache)`` and, with parameters,
``param_grads(cache, dy)`` and ``param_jvp(cache, dparams)``. For random u and v::

    <v, J u> = <J^T v, u>                          jvp and vjp are adjoint (to rounding)
    J u ~ (f(x + h u) - f(x - h u)) / (2 h)        both agree with central differences

Tolerances. Central differences in float64 with step 1e-6 are accurate to about 1e-9 relative for smooth maps,
so a relative tolerance of 1e-6 catches a wrong sign or a missing factor of 2 (both are O(1) relative errors)
without flaking. The adjoint identity holds to rounding, so it gets 1e-10; signals with leading probe axes must
give the stacked single-signal answers to 1e-12. The checks run on NumPy arrays in float64; keep x away from
kinks (ReLU's 0), where a difference quotient straddles two slopes.

    from nablax.testing import check_jacobian, dottest
    errors = dottest(layer, x)          # raises DerivativeError (an AssertionError) when a check fails
    check_jacobian(layer, x)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .init import as_rng
from .layers.base import Mode

FD_STEP = 1e-6
FD_RTOL = 1e-6
ADJOINT_RTOL = 1e-10
PROBE_RTOL = 1e-12


class DerivativeError(AssertionError):
    """A derivative check failed; ``errors`` holds every error it measured."""

    def __init__(self, message: str, errors: dict[str, Any]) -> None:
        super().__init__(message)
        self.errors = errors


def rel_err(a: Any, b: Any) -> float:
    """||a - b|| / max(||a||, ||b||) (Frobenius norms, in float64)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))


def dot_err(a: float, b: float, scale: float) -> float:
    """|a - b| / scale for two dot products <p, q> whose natural size is scale = ||p|| ||q||. A plain relative
    error of the two scalars would flake when a random <p, q> happens to be near zero (cancellation); a wrong sign
    or a missing factor still gives an O(|<p, q>| / scale) ~ 1 / sqrt(n) error, far above the tolerances here."""
    return float(abs(a - b) / max(scale, 1e-300))


def central_difference(f: Callable[[Any], Any], x: Any, u: Any, h: float = FD_STEP) -> Any:
    """(f(x + h u) - f(x - h u)) / (2 h), the derivative of f at x along u to O(h^2)."""
    return (f(x + h * u) - f(x - h * u)) / (2 * h)


def _verdict(errors: dict[str, float], tolerances: dict[str, float], what: str, raise_error: bool) -> None:
    failed = [f"{k} {errors[k]:.2e} > {tolerances[k]:.0e}" for k in errors if not errors[k] <= tolerances[k]]
    if failed and raise_error:
        raise DerivativeError(f"{what}: " + ", ".join(failed), errors)


def _same_shape(got: Any, want: tuple[int, ...], what: str) -> None:
    if tuple(got.shape) != tuple(want):
        raise DerivativeError(f"{what} has shape {tuple(got.shape)}, expected {tuple(want)}", {})


def dottest(layer: Any, x: Any, mode: Mode = Mode(), *, rng: Any = None, f: Callable[[Any], Any] | None = None,
            n_probe: int = 3, raise_error: bool = True) -> dict[str, float]:
    """The dot-product test of a layer's ``vjp`` and ``jvp`` at x, against central differences and each other,
    with and without leading probe axes.

    Parameters
    ----------
    layer : Layer, anything with ``forward``, ``vjp`` and ``jvp`` (see the module docstring)
    x : numpy.ndarray (B, *in_shape), float64, the point of the check
    mode : Mode, how the forward pass runs (default: training mode, batch statistics)
    rng : numpy.random.Generator or int (a seed), the source of the random u (like x) and v (like the output)
    f : callable, the function to difference (default ``layer.forward(z, mode)[0]``; a layer whose batch
        statistics are held constant is differenced with those statistics frozen)
    n_probe : int, probes per leading axis: signals of shape (2, n_probe, B, ...) must give the stacked answers
    raise_error : bool, raise ``DerivativeError`` when an error exceeds its tolerance (default), or only return

    Returns
    -------
    errors : dict of str to float
        ``jvp_vs_fd``: rel_err(J u, central difference), tolerance ``FD_RTOL``; ``adjoint``: |<v, J u> - <J^T v, u>|
        / scale, ``ADJOINT_RTOL``; ``vjp_vs_fd``: |<J^T v, u> - <v, difference>| / scale, ``FD_RTOL``;
        ``probe_axes``: the largest rel_err of a signal with probe axes against its single answer, ``PROBE_RTOL``.

    Raises
    ------
    DerivativeError : a result of the wrong shape, or (with ``raise_error``) an error above its tolerance
    """
    rng = as_rng(rng)
    y, cache = layer.forward(x, mode)
    u, v = rng.standard_normal(x.shape), rng.standard_normal(y.shape)
    fd = central_difference(f if f is not None else lambda z: layer.forward(z, mode)[0], x, u)
    ju, jtv = layer.jvp(cache, u), layer.vjp(cache, v)
    _same_shape(ju, y.shape, "jvp(u)")
    _same_shape(jtv, x.shape, "vjp(v)")
    scale = np.linalg.norm(v) * np.linalg.norm(ju) + np.linalg.norm(jtv) * np.linalg.norm(u)
    errors = {"jvp_vs_fd": rel_err(ju, fd), "adjoint": dot_err(np.vdot(v, ju), np.vdot(jtv, u), scale),
              "vjp_vs_fd": dot_err(np.vdot(jtv, u), np.vdot(v, fd), scale)}
    U, V = rng.standard_normal((2, n_probe) + x.shape), rng.standard_normal((2, n_probe) + y.shape)
    JU, JTV = layer.jvp(cache, U), layer.vjp(cache, V)
    _same_shape(JU, (2, n_probe) + y.shape, "jvp with probe axes")
    _same_shape(JTV, (2, n_probe) + x.shape, "vjp with probe axes")
    errors["probe_axes"] = max(max(rel_err(JU[i, k], layer.jvp(cache, U[i, k])),
                                   rel_err(JTV[i, k], layer.vjp(cache, V[i, k])))
                               for i in range(2) for k in range(n_probe))
    _verdict(errors, {"jvp_vs_fd": FD_RTOL, "adjoint": ADJOINT_RTOL, "vjp_vs_fd": FD_RTOL, "probe_axes": PROBE_RTOL},
             f"{type(layer).__name__} derivatives", raise_error)
    return errors


def dottest_params(layer: Any, x: Any, mode: Mode = Mode(), *, rng: Any = None,
                   raise_error: bool = True) -> dict[str, dict[str, float]]:
    """The dot-product test of a layer's ``param_grads`` and ``param_jvp`` at x, parameter by parameter: adjoint,
    against central differences in the parameter (changed in place and restored), and with a probe axis.

    Parameters
    ----------
    layer : Layer, anything with ``forward``, ``params``, ``param_grads`` and ``param_jvp``
    x, mode, rng, raise_error : as in ``dottest``

    Returns
    -------
    errors : dict of str to dict of str to float
        For each parameter name: ``adjoint`` (|<v, dy> - <dE/dp, dp>| / scale), ``jvp_vs_fd`` (rel_err of
        param_jvp against the difference) and ``probe_axes``; tolerances as in ``dottest``.

    Raises
    ------
    DerivativeError : gradients for other names than ``layer.params``, a gradient of the wrong shape, or (with
        ``raise_error``) an error above its tolerance
    """
    rng = as_rng(rng)
    y, cache = layer.forward(x, mode)
    v = rng.standard_normal(y.shape)
    grads = layer.param_grads(cache, v)
    if set(grads) != set(layer.params):
        raise DerivativeError(f"param_grads gives {sorted(grads)}, the layer has {sorted(layer.params)}", {})
    errors = {}
    for name, p in layer.params.items():
        dp = rng.standard_normal(p.shape)
        _same_shape(grads[name], p.shape, f"param_grads[{name!r}]")
        tangent = layer.param_jvp(cache, {name: dp})
        scale = np.linalg.norm(v) * np.linalg.norm(tangent) + np.linalg.norm(grads[name]) * np.linalg.norm(dp)
        keep = p.copy()

        def f(q: Any) -> Any:  # the layer's output as a function of this parameter, set in place
            p[...] = q
            return layer.forward(x, mode)[0]

        fd = central_difference(f, keep, dp)
        p[...] = keep
        V = rng.standard_normal((2,) + y.shape)
        errors[name] = {"adjoint": dot_err(np.vdot(v, tangent), np.vdot(grads[name], dp), scale),
                        "jvp_vs_fd": rel_err(tangent, fd),
                        "probe_axes": rel_err(layer.param_grads(cache, V)[name][1],
                                              layer.param_grads(cache, V[1])[name])}
        _verdict(errors[name], {"adjoint": ADJOINT_RTOL, "jvp_vs_fd": FD_RTOL, "probe_axes": PROBE_RTOL},
                 f"{type(layer).__name__} parameter {name!r}", raise_error)
    return errors


def stacked_jacobians(layer: Any, cache: Any, x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                      batch_level: bool) -> tuple[Any, Any]:
    """The Jacobian built twice: from the vjp of identity seeds and from the jvp of identity seeds.

    Parameters
    ----------
    layer, cache : a layer and the cache of its forward pass
    x_shape, y_shape : tuple of int, the shapes (B, *in_shape) of the input and (B, *out_shape) of the output
    batch_level : bool, whether the Jacobian couples samples (``cache.coupled``)

    Returns
    -------
    from_vjp, from_jvp : numpy.ndarray
        Per sample (B, d_out, d_in), or batch-level (B, d_out, B, d_in) (d the entries per sample), the shapes
        of ``layer.jacobian(cache)``.
    """
    b = x_shape[0]
    din, dout = int(np.prod(x_shape[1:])), int(np.prod(y_shape[1:]))
    if batch_level:
        eye_out = np.eye(b * dout).reshape((b * dout,) + tuple(y_shape))
        eye_in = np.eye(b * din).reshape((b * din,) + tuple(x_shape))
        from_vjp = layer.vjp(cache, eye_out).reshape(b, dout, b, din)
        from_jvp = layer.jvp(cache, eye_in).reshape(b, din, b, dout).transpose(2, 3, 0, 1)
        return from_vjp, from_jvp
    eye_out = np.broadcast_to(np.eye(dout)[:, None, :], (dout, b, dout)).reshape((dout,) + tuple(y_shape))
    eye_in = np.broadcast_to(np.eye(din)[:, None, :], (din, b, din)).reshape((din,) + tuple(x_shape))
    from_vjp = layer.vjp(cache, eye_out).reshape(dout, b, din).transpose(1, 0, 2)
    from_jvp = layer.jvp(cache, eye_in).reshape(din, b, dout).transpose(1, 2, 0)
    return from_vjp, from_jvp


def check_jacobian(layer: Any, x: Any, mode: Mode = Mode(), *, rtol: float = 1e-12,
                   raise_error: bool = True) -> dict[str, float]:
    """A layer's ``jacobian`` at x against the stacked vjp and the stacked jvp of identity seeds.

    Parameters
    ----------
    layer : Layer, anything with ``forward``, ``vjp``, ``jvp`` and ``jacobian``
    x, mode, raise_error : as in ``dottest``
    rtol : float, the tolerance of both comparisons (they agree to rounding)

    Returns
    -------
    errors : dict of str to float, ``vs_vjp`` and ``vs_jvp``: rel_err of ``jacobian(cache)`` against each stacked one

    Raises
    ------
    DerivativeError : a Jacobian of the wrong shape, or (with ``raise_error``) an error above ``rtol``
    """
    y, cache = layer.forward(x, mode)
    jac = layer.jacobian(cache)
    from_vjp, from_jvp = stacked_jacobians(layer, cache, x.shape, y.shape, bool(getattr(cache, "coupled", False)))
    _same_shape(jac, from_vjp.shape, "jacobian")
    errors = {"vs_vjp": rel_err(jac, from_vjp), "vs_jvp": rel_err(jac, from_jvp)}
    _verdict(errors, {"vs_vjp": rtol, "vs_jvp": rtol}, f"{type(layer).__name__} jacobian", raise_error)
    return errors


__all__ = ["dottest", "dottest_params", "check_jacobian", "stacked_jacobians", "DerivativeError", "rel_err",
           "dot_err", "central_difference", "FD_STEP", "FD_RTOL", "ADJOINT_RTOL", "PROBE_RTOL"]
