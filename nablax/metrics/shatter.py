"""Shattered gradients (Balduzzi et al. 2017; spec shattered-gradients §2-3, §6): the input-output derivative of a
scalar network over a 1-D grid, its covariance image and autocorrelation, brown- and white-noise references,
gradient correlations at high-dimensional inputs, and the active / co-active proportions of rectifier layers.
The theorems and the path model live in ``shatter_theory``.

The measured "gradient" is g_i = df/dx(x_i) on the grid x_1..x_M (M = 256 on [-2, 2]): a vector g of shape (M,).
It is computed exactly, with the batch-norm option ``bn_mode`` (spec §2.4; Open, default "constant_stats"):

    "constant_stats"      BN mean and std held constant (forward(..., hold_stats=True)); ONE forward-mode sweep
                          with tangent 1 at every grid point: g_i = df(x_i)/dx_i, the per-example derivative
    "through_stats"       BN differentiated through its batch statistics; ONE reverse sweep seeded with ones:
                          g_i = d(sum_j f(x_j)) / dx_i   (the column sums of the batch Jacobian)
    "through_stats_diag"  the diagonal df(x_i)/dx_i of the batch Jacobian: M forward-mode sweeps, one tangent
                          e_i per grid point, pushed as probe axes in chunks

Without batch norm the three coincide. The figures use "constant_stats".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy

from ..backend import array_module
from ..network import Network, Trace
from . import check_choice

GRIDS = ("linspace", "arange")
BN_MODES = ("constant_stats", "through_stats", "through_stats_diag")
ACF_ESTIMATORS = ("sample", "correlate_same")
GRID_SIZE = 256
WIDTH = 200


class UndefinedACF(ValueError):
    """The autocorrelation of a (numerically) constant vector does not exist; raised instead of returning NaN."""


# --- the grid and the derivative on it -----------------------------------------------------------------------
def grid(m: int = GRID_SIZE, kind: str = "linspace", net: Network | None = None, lo: float = -2.0,
         hi: float = 2.0) -> Any:
    """M = ``m`` 1-D inputs on [lo, hi] as a batch (M, 1) on ``net``'s backend and dtype (default: NumPy, float64).

    Spacing (spec §2.2, Open): ``kind="linspace"`` (default) from lo to hi inclusive;  ``"arange"``: lo,
    lo + (hi-lo)/M, ..., hi - (hi-lo)/M (the public replication's grid; it contains x = 0 exactly).
    """
    check_choice("grid kind", kind, GRIDS)
    xp, dtype = (net.backend.xp, net.dtype) if net is not None else (numpy, numpy.float64)
    if kind == "linspace":
        return xp.linspace(lo, hi, m, dtype=dtype).reshape(m, 1)
    return (lo + (hi - lo) / m * xp.arange(m, dtype=dtype)).reshape(m, 1)


def input_gradients(net: Network, x: Any, bn_mode: str = "constant_stats") -> Any:
    """d f / d x_m for a network with ONE output at every input x_m: one reverse sweep seeded with ones.

    Parameters
    ----------
    net : Network
        One output.
    x : array (M, d)
        The inputs, on the network's backend.
    bn_mode : str
        "constant_stats" (default: row m is the gradient of f(x_m) alone) or "through_stats" (row m is
        d(sum_j f(x_j))/dx_m, batch statistics differentiated).

    Returns
    -------
    array (M, d)
    """
    check_choice("bn_mode", bn_mode, BN_MODES)
    if bn_mode == "through_stats_diag":
        raise ValueError("through_stats_diag is defined for scalar inputs (grid_gradient)")
    if net.shapes[-1] != (1,):
        raise ValueError(f"the network must have one output, it has shape {net.shapes[-1]}")
    tr = net.forward(x, hold_stats=bn_mode == "constant_stats")
    return tr.pullback(array_module(x).ones_like(tr.output))


def grid_gradient(net: Network, x: Any = None, bn_mode: str = "constant_stats", chunk: int = 32) -> Any:
    """The paper's Eq. 1: g_i = df/dx(x_i) for a scalar network on the grid x (M, 1) (default ``grid(net=net)``).

    Parameters
    ----------
    net : Network
        Scalar input, scalar output.
    x : array (M, 1), optional
    bn_mode : str
        See the module docstring.
    chunk : int
        Probe tangents per forward sweep for "through_stats_diag".

    Returns
    -------
    g : array (M,)
        On the network's backend.
    """
    check_choice("bn_mode", bn_mode, BN_MODES)
    if net.in_shape != (1,) or net.shapes[-1] != (1,):
        raise ValueError(f"grid_gradient needs a scalar-in, scalar-out network, got {net.in_shape} -> {net.shapes[-1]}")
    x = grid(net=net) if x is None else x
    xp = array_module(x)
    if bn_mode == "constant_stats":
        tr = net.forward(x, hold_stats=True)
        return tr.pushforward(xp.ones_like(x))[:, 0]
    if bn_mode == "through_stats":
        return input_gradients(net, x, bn_mode)[:, 0]
    tr = net.forward(x)  # batch statistics live: the tangent e_i moves every sample's output
    g = xp.empty(x.shape[0], dtype=x.dtype)
    for rows in tr.probe_chunks(x.shape[0], chunk, 1):  # tangents e_i for the grid points i in rows
        idx = xp.arange(rows.start, rows.stop)
        g[idx] = tr.pushforward(tr.identity_seeds(0, rows, per_sample=False))[idx - rows.start, idx, 0]
    return g


# --- covariance image and autocorrelation ----------------------------------------------------------------------
def covariance_image(g: Any) -> Any:
    """|(g - mean g)(g - mean g)^T| / var(g): the (M, M) image of Fig. 1's bottom row (spec §3.2; Paper).

    Rank one before the absolute value; invariant to scaling and shifting g; one gradient, not an average.
    Raises ``UndefinedACF`` if g is constant.

    Parameters
    ----------
    g : array (M,)

    Returns
    -------
    array (M, M)
    """
    gc = g - g.mean()
    var = float((gc * gc).mean())
    if var == 0:
        raise UndefinedACF("the covariance image of a constant vector is undefined (zero variance)")
    return array_module(g).abs(gc[:, None] * gc[None, :]) / var


def acf(g: Any, max_lag: int | None = None, estimator: str = "sample", rtol: float = 1e-9) -> Any:
    """Autocorrelation of g over the grid, along the last axis (g may be (M,) or a stack (..., M)).

    "sample" (default; spec §3.3, the estimator is Open):
        ACF(k) = sum_{t=1}^{M-k} (g_t - gbar)(g_{t+k} - gbar) / sum_{t=1}^{M} (g_t - gbar)^2,   k = 0..M-1
    "correlate_same": np.correlate(gc, gc, "same") normalised to 1 at lag 0, lags 0..M/2-1 (its right half).
        For k >= 0 this is the same number as "sample" (Derived); it only stops at M/2.
    Raises ``UndefinedACF`` if some row is constant (a looks-linear net): its ACF is not a number.

    Parameters
    ----------
    g : array (M,) or (..., M)
    max_lag : int, optional
        The last lag returned (default: every lag the estimator has).
    estimator : str
        "sample" or "correlate_same".
    rtol : float
        A row whose variance is below ``rtol`` of its magnitude counts as constant.

    Returns
    -------
    array (..., max_lag + 1)
        Lags 0..max_lag; 1 at lag 0.
    """
    check_choice("estimator", estimator, ACF_ESTIMATORS)
    xp = array_module(g)
    m = g.shape[-1]
    gc = g - g.mean(axis=-1, keepdims=True)
    ss = (gc * gc).sum(axis=-1, keepdims=True)
    scale = xp.abs(g).max(axis=-1, keepdims=True)
    if bool((ss <= (rtol * scale) ** 2 * m).any()):
        raise UndefinedACF("the ACF is undefined: the gradient is constant over the grid (zero variance), "
                           "as for a linear or looks-linear network")
    spec = xp.fft.rfft(gc, n=2 * m, axis=-1)
    cov = xp.fft.irfft(spec * spec.conj(), n=2 * m, axis=-1)[..., :m]  # sum_t gc_t gc_{t+k}, k = 0..M-1
    n_lags = m if estimator == "sample" else m - m // 2
    max_lag = n_lags - 1 if max_lag is None else min(int(max_lag), n_lags - 1)
    return (cov / ss)[..., : max_lag + 1]


def lags(n: int, x: Any = None, units: str = "integer") -> Any:
    """The lag axis (n,) for an ACF of n values: 0..n-1 (``units="integer"``, default) or k * dx (``units="x"``,
    dx the spacing of the grid ``x``, (M, 1) or (M,))."""
    k = numpy.arange(n)
    if units == "integer":
        return k
    if units == "x":
        xs = numpy.asarray(x).ravel()
        return k * float(xs[1] - xs[0])
    raise ValueError(f"units must be 'integer' or 'x', got {units!r}")


def brown_noise(rng: numpy.random.Generator, m: int = GRID_SIZE, width: int = WIDTH,
                size: tuple[int, ...] = ()) -> numpy.ndarray:
    """B(t) = sum_{s<=t} W_s, W_s ~ N(0, 1/width), t = 1..m (spec §3.4; Reconstruction): an array (*size, m) of
    independent walks, drawn from ``rng``."""
    return numpy.cumsum(rng.standard_normal(size + (m,)) * math.sqrt(1.0 / width), axis=-1)


def white_noise(rng: numpy.random.Generator, m: int = GRID_SIZE, size: tuple[int, ...] = ()) -> numpy.ndarray:
    """W_k ~ N(0, 1), k = 1..m (spec §3.4): an array (*size, m) drawn from ``rng``."""
    return rng.standard_normal(size + (m,))


# --- gradient correlation at high-dimensional inputs --------------------------------------------------------------
def gradient_moments(grads: Any) -> tuple[float, float]:
    """(mean_m <g_m, g_m>, mean_{m != n} <g_m, g_n>) for gradients G (M, d) of one network at M inputs.

    The off-diagonal mean uses ||sum_m g_m||^2 = sum_m ||g_m||^2 + sum_{m != n} <g_m, g_n>: no M x M matrix.

    Parameters
    ----------
    grads : array (M, ...)
        One gradient per input, M >= 2.

    Returns
    -------
    (float, float)
    """
    m = grads.shape[0]
    flat = grads.reshape(m, -1)
    diag = float((flat * flat).sum())
    total = flat.sum(axis=0)
    return diag / m, (float((total * total).sum()) - diag) / (m * (m - 1))


def gradient_correlation(nets: Iterable[Network], x: Any, bn_mode: str = "constant_stats") -> "MCMoments":
    """Monte-Carlo C(i), C(i, j) and R(i, j) of real networks (spec §4.9): one network per random draw of the
    weights (``nets``), gradients of the scalar output with respect to the input at the M distinct inputs x (M, d).

    Per network s: a_s = mean_m <g_m, g_m>, c_s = mean_{m != n} <g_m, g_n>; across networks
    C(i) = mean a_s, C(i, j) = mean c_s, R = C(i, j) / C(i), with standard errors over networks (delta method).

    Parameters
    ----------
    nets : iterable of Network
        Scalar output; one per draw.
    x : array (M, d)
    bn_mode : str
        As in ``input_gradients``.

    Returns
    -------
    MCMoments
    """
    from .shatter_theory import mc_moments

    a, c = zip(*(gradient_moments(input_gradients(net, x, bn_mode)) for net in nets))
    return mc_moments(a, a, c)


# --- active and co-active proportions ------------------------------------------------------------------------------
@dataclass
class Activity:
    """Per rectifier layer l = 1..L (forward order): ``active`` A_l and ``coactive`` CO_l (spec §3.5)."""

    active: numpy.ndarray
    coactive: numpy.ndarray

    @property
    def layers(self) -> numpy.ndarray:
        return numpy.arange(1, len(self.active) + 1)


def active_coactive(a: Any) -> tuple[float, float]:
    """A = mean of the binary activations; CO = (1/N) sum_k n_k (n_k - 1) / (M (M - 1)), n_k = sum_m a_mk: the
    fraction of ordered distinct input pairs on which a neuron is active on both.

    Parameters
    ----------
    a : array (M, ...) of 0/1
        M inputs; every other entry is a neuron (N of them).

    Returns
    -------
    (float, float)
        (A, CO).
    """
    m = a.shape[0]
    a = a.reshape(m, -1)
    n_k = a.sum(axis=0)
    return float(a.mean()), float((n_k * (n_k - 1)).mean() / (m * (m - 1)))


def activity(trace: Trace) -> Activity:
    """A_l and CO_l of every ReLU layer of a forward pass (inside residual blocks too), from its pre-activation:
    a_mk = 1[z_mk > 0].

    Parameters
    ----------
    trace : Trace
        A forward pass; its batch holds the M inputs.

    Returns
    -------
    Activity
        Arrays (L,), one entry per ReLU layer in forward order.
    """
    be = trace.network.backend
    pairs = [active_coactive(be.asnumpy(x > 0)) for layer, x, _ in trace.leaves() if layer.kind == "relu"]
    if not pairs:
        raise ValueError("the network has no ReLU layer")
    act, co = zip(*pairs)
    return Activity(numpy.array(act), numpy.array(co))


# --- looks-linear checks --------------------------------------------------------------------------------------------
@dataclass
class LooksLinearCheck:
    """What spec §6 / §11.9 ask of a looks-linear net on the grid.

    grad_std         std of df/dx over the grid (0 for an exactly linear net; ~1e-14 in float64)
    grad_mean        mean of df/dx over the grid (the slope of the linear map)
    nonlinearity     max_i |f(x_i) - slope * x_i| / max_i |f(x_i)|
    orth_error       max |J^T J - I| for the Jacobian J between the first and the last hidden position as wide as
                     the first layer's output (the product of the base matrices, measured through the layers)
    norm_ratio       ||h_p|| / ||h_src|| at every such position p (1 for a norm-preserving chain)
    """

    grad_std: float
    grad_mean: float
    nonlinearity: float
    orth_error: float
    norm_ratio: numpy.ndarray


def looks_linear_check(net: Network, x: Any = None) -> LooksLinearCheck:
    """Linearity and orthogonality of a (looks-linear) scalar network on the grid, measured through the engine.

    Parameters
    ----------
    net, x
        As in ``grid_gradient``.

    Returns
    -------
    LooksLinearCheck
    """
    x = grid(net=net) if x is None else x
    be = net.backend
    g = be.asnumpy(grid_gradient(net, x))
    tr = net.forward(x, hold_stats=True)
    f, xs = be.asnumpy(tr.output[:, 0]), be.asnumpy(x[:, 0])
    slope = float(g.mean())
    width = net.shapes[1]  # the first layer's output: the width of the linear chain (CReLU outputs are twice as wide)
    hidden = [p for p, s in enumerate(net.shapes) if 0 < p < len(net.shapes) - 1 and s == width]
    one = net.forward(x[:1], hold_stats=True)
    jac = be.asnumpy(one.jacobian(hidden[0], hidden[-1]))[0]  # (width, width)
    orth = float(numpy.abs(jac.T @ jac - numpy.eye(jac.shape[1])).max())
    norms = numpy.array([float(numpy.linalg.norm(be.asnumpy(tr.values[p]))) for p in hidden])
    return LooksLinearCheck(float(g.std()), slope, float(numpy.abs(f - slope * xs).max() / numpy.abs(f).max()),
                            orth, norms / norms[0])
