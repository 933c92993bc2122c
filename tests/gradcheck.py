"""Shared derivative checks: the dot-product test against central finite differences (HIPS/autograd's
``check_vjp`` idea), and Jacobians against stacked vjp/jvp of the identity.

Tolerances: finite differences in float64 with step 1e-6 are accurate to about 1e-9 relative for smooth maps,
so a relative tolerance of 1e-6 catches a wrong sign or a missing factor of 2 (both are O(1) relative errors)
without flaking. Adjoint identities <v, J u> = <J^T v, u> hold to rounding, so they get 1e-10.
"""

from __future__ import annotations

import numpy as np

FD_STEP = 1e-6
FD_RTOL = 1e-6
ADJOINT_RTOL = 1e-10


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))


def dot_err(a, b, scale) -> float:
    """|a - b| / scale for two dot products <p, q> whose natural size is scale = ||p|| ||q||. A plain relative
    error of the two scalars would flake when a random <p, q> happens to be near zero (cancellation); a wrong sign
    or a missing factor still gives an O(|<p, q>| / scale) ~ 1 / sqrt(n) error, far above the tolerances here."""
    return float(abs(a - b) / max(scale, 1e-300))


def central_difference(f, x, u, h=FD_STEP):
    return (f(x + h * u) - f(x - h * u)) / (2 * h)


def check_layer_derivatives(layer, x, mode, rng, n_probe=3, f=None):
    """vjp and jvp of ``layer`` at ``x`` against finite differences and each other, with and without probe axes.

    ``f`` is the function to difference (default: the layer's forward in ``mode``); a layer whose statistics
    are held constant is differenced with those statistics frozen.
    """
    y, cache = layer.forward(x, mode)
    u = rng.standard_normal(x.shape)
    v = rng.standard_normal(y.shape)
    if f is None:
        def f(z):
            return layer.forward(z, mode)[0]

    fd = central_difference(f, x, u)
    ju = layer.jvp(cache, u)
    jtv = layer.vjp(cache, v)
    assert ju.shape == y.shape and jtv.shape == x.shape
    assert rel_err(ju, fd) < FD_RTOL, f"jvp vs finite differences: {rel_err(ju, fd):.2e}"
    scale = np.linalg.norm(v) * np.linalg.norm(ju) + np.linalg.norm(jtv) * np.linalg.norm(u)
    assert dot_err(np.vdot(v, ju), np.vdot(jtv, u), scale) < ADJOINT_RTOL, "vjp is not the adjoint of jvp"
    assert dot_err(np.vdot(jtv, u), np.vdot(v, fd), scale) < FD_RTOL, "vjp vs finite differences"

    # leading probe axes: (2, n_probe, B, ...) signals give the stacked single-signal answers
    U = rng.standard_normal((2, n_probe) + x.shape)
    V = rng.standard_normal((2, n_probe) + y.shape)
    JU, JTV = layer.jvp(cache, U), layer.vjp(cache, V)
    assert JU.shape == (2, n_probe) + y.shape and JTV.shape == (2, n_probe) + x.shape
    for i in range(2):
        for k in range(n_probe):
            assert rel_err(JU[i, k], layer.jvp(cache, U[i, k])) < 1e-12
            assert rel_err(JTV[i, k], layer.vjp(cache, V[i, k])) < 1e-12
    return y, cache


def stacked_identity_jacobians(layer, cache, x_shape, y_shape, batch_level):
    """The Jacobian built from vjp of identity seeds and from jvp of identity seeds."""
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


def check_param_derivatives(layer, x, mode, rng):
    """param_grads against param_jvp (adjoint) and against finite differences in each parameter."""
    y, cache = layer.forward(x, mode)
    v = rng.standard_normal(y.shape)
    grads = layer.param_grads(cache, v)
    assert set(grads) == set(layer.params), (set(grads), set(layer.params))
    for name, p in layer.params.items():
        dp = rng.standard_normal(p.shape)
        assert grads[name].shape == p.shape
        tangent = layer.param_jvp(cache, {name: dp})
        scale = np.linalg.norm(v) * np.linalg.norm(tangent) + np.linalg.norm(grads[name]) * np.linalg.norm(dp)
        assert dot_err(np.vdot(v, tangent), np.vdot(grads[name], dp), scale) < ADJOINT_RTOL, f"param adjoint {name}"
        keep = p.copy()
        p += FD_STEP * dp
        y_plus = layer.forward(x, mode)[0]
        p[...] = keep - FD_STEP * dp
        y_minus = layer.forward(x, mode)[0]
        p[...] = keep
        fd = (y_plus - y_minus) / (2 * FD_STEP)
        assert rel_err(tangent, fd) < FD_RTOL, f"param_jvp vs finite differences for {name}: {rel_err(tangent, fd):.2e}"
        # gradients with probe axes
        V = rng.standard_normal((2,) + y.shape)
        G = layer.param_grads(cache, V)[name]
        assert rel_err(G[1], layer.param_grads(cache, V[1])[name]) < 1e-12
