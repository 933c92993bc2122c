"""The shattered-gradients theorems (spec §4) and the idealised path model that matches them exactly in expectation.

Quantities (expectations over the random initialisation W; g(x) = df/dx, scalar input and output):

    C(i)    = E[g(x_i)^2]            C(i, j) = E[g(x_i) g(x_j)]            R(i, j) = C(i, j) / sqrt(C(i) C(j))

Closed forms (depth L counted as in spec §1.2; He weights sigma^2 = 2/N):

    "fnn"      Theorem 1                         C(i) = 1,              C(i,j) = 2^-L
    "res"      Theorem 2 (no BN), L blocks       C(i) = (1 + b^2)^L,    C(i,j) = (1 + b^2/2)^L          b = beta
    "res_bn"   Theorem 3 (BN, beta), L-1 blocks  C(i) = prod_l (1 + b^2/s_l^2) = 1 + b^2 (L-1)         (telescoping)
                                                 C(i,j) = prod_l (1 + b^2/(2 s_l^2)),   s_l^2 = 1 + b^2 (l-1)
               asymptotic form (paper)           C(i,j) ~ b sqrt(L),    R ~ 1/(b sqrt(L))    (needs b^2 L >> 1)
    "highway"  Corollary 1 (Reconstruction)      C(i) = 1,              C(i,j) = (1 - t/2)^L
               gates a^2 = 1 - t, b^2 = t (scalar-gated blocks a h + b W relu(h))

The path model (spec §4.8) implements the assumptions of §4.2 literally: weights shared by the two inputs, binary
activations drawn as independent Bernoulli(1/2) masks per input (so P(co-active) = 1/4), one backward sweep per
input. ``method="dense"`` draws every N x N weight matrix. ``method="gram"`` (default) samples the same thing in
O(N) per layer: W_l is used once and is independent of the backward signals U = [u_i, u_j] (N, 2) reaching it, so
W_l^T U has i.i.d. rows ~ N(0, sigma^2 U^T U): a 2 x 2 Cholesky factor of the Gram matrix times fresh normals.
This is exact in distribution (Derived), not an approximation; the tests check both methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy

from ..backend import array_module, get_backend
from ..init import as_rng
from . import check_choice

KINDS = ("fnn", "res", "res_bn", "highway")
METHODS = ("gram", "dense")


@dataclass(frozen=True)
class Moments:
    """Gradient variance C(i), covariance C(i, j) and correlation R(i, j)."""

    var: float
    cov: float
    corr: float


def closed_form(kind: str, depth: int, beta: float = 1.0, t: float | None = None) -> Moments:
    """The exact expectations of the path model for ``kind`` at depth L (see the module docstring).

    Parameters
    ----------
    kind, depth : str, int
        One of ``KINDS``, and L >= 1.
    beta, t : float
        The residual-branch scale ("res", "res_bn"), and the highway gate (default 1/L).

    Returns
    -------
    Moments
    """
    check_choice("kind", kind, KINDS)
    L = int(depth)
    if L < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if kind == "fnn":
        var, cov = 1.0, 0.5 ** L
    elif kind == "res":
        var, cov = (1 + beta**2) ** L, (1 + beta**2 / 2) ** L
    elif kind == "res_bn":
        s2 = 1 + beta**2 * numpy.arange(L - 1)  # s_l^2 for blocks l = 1..L-1
        var = float(numpy.prod(1 + beta**2 / s2))
        cov = float(numpy.prod(1 + beta**2 / (2 * s2)))
    else:  # highway
        t = 1.0 / L if t is None else t
        var, cov = 1.0, (1 - t / 2) ** L
    return Moments(var, cov, cov / var)


def theorem3_asymptotic(depth: int, beta: float) -> Moments:
    """Theorem 3 as the paper states it, as ``Moments`` at depth L: C(i) = beta^2 (L-1) + 1 (exact),
    C(i,j) ~ beta sqrt(L), R ~ 1/(beta sqrt(L))."""
    root = beta * math.sqrt(depth)
    return Moments(beta**2 * (depth - 1) + 1, root, 1.0 / root)


# --- Monte-Carlo estimates with standard errors ------------------------------------------------------------
@dataclass
class MCMoments:
    """Monte-Carlo estimates of C(i), C(j), C(i,j), R with standard errors (``*_se``) from ``n`` i.i.d. samples.

    R = mean(c) / sqrt(mean(a) mean(b)); its standard error is the delta method with influence values
    psi = c / sqrt(ab) - R (a / mean(a) + b / mean(b)) / 2 (bars omitted), which stays finite when C(i,j) ~ 0.
    """

    var_i: float
    var_j: float
    cov: float
    corr: float
    var_se: float
    cov_se: float
    corr_se: float
    n: int

    @property
    def var(self) -> float:
        return 0.5 * (self.var_i + self.var_j)

    def z_scores(self, exact: Moments) -> dict[str, float]:
        """(estimate - exact) / standard error for the variance, the covariance and the correlation.

        An estimate equal to the exact value up to rounding (a degenerate case such as a 0-block resnet, where
        g_i = g_j and R = 1 in every trial) scores 0; a different value with a zero standard error scores inf."""

        def z(est: float, ex: float, se: float) -> float:
            if abs(est - ex) <= 1e-9 * max(abs(ex), 1e-300):
                return 0.0
            return (est - ex) / se if se > 0 else math.copysign(math.inf, est - ex)

        return {"var": z(self.var, exact.var, self.var_se), "cov": z(self.cov, exact.cov, self.cov_se),
                "corr": z(self.corr, exact.corr, self.corr_se)}


def mc_moments(a: Any, b: Any, c: Any) -> MCMoments:
    """``MCMoments`` from n >= 2 i.i.d. samples a = g_i^2, b = g_j^2, c = g_i g_j, each an array (n,)."""
    a, b, c = (numpy.asarray(v, dtype=float) for v in (a, b, c))
    n = a.size
    if n < 2:
        raise ValueError("need at least 2 samples for a standard error")
    ma, mb, mc = a.mean(), b.mean(), c.mean()
    root = math.sqrt(ma * mb)
    corr = mc / root
    psi = c / root - 0.5 * corr * (a / ma + b / mb)
    se = lambda v: float(v.std(ddof=1) / math.sqrt(n))  # noqa: E731
    return MCMoments(float(ma), float(mb), float(mc), float(corr), se(0.5 * (a + b)), se(c), se(psi), n)


# --- the path model -------------------------------------------------------------------------------------------
def _gram_project(u: Any, var: float, z: Any) -> Any:
    """Sample W^T U for U = u (T, 2, N) and W (N, N_out) with i.i.d. N(0, var) entries, from normals z (T, 2, N_out).

    Rows of W^T U are i.i.d. N(0, var G), G = U U^T (2 x 2 per trial); G = L L^T by an explicit 2 x 2 Cholesky
    that also covers rank-one G (u_i = u_j, as at the output of a resnet).
    """
    xp = array_module(u)
    g11 = (u[:, 0] * u[:, 0]).sum(-1)
    g12 = (u[:, 0] * u[:, 1]).sum(-1)
    g22 = (u[:, 1] * u[:, 1]).sum(-1)
    l11 = xp.sqrt(g11)
    l21 = xp.where(l11 > 0, g12 / xp.where(l11 > 0, l11, 1.0), 0.0)
    l22 = xp.sqrt(xp.maximum(g22 - l21 * l21, 0.0))
    s = math.sqrt(var)
    zi = s * l11[:, None] * z[:, 0]
    zj = s * (l21[:, None] * z[:, 0] + l22[:, None] * z[:, 1])
    return xp.stack([zi, zj], axis=1)


def _path_chunk(kind: str, L: int, N: int, beta: float, t: float, T: int, rng: numpy.random.Generator,
                method: str, xp: Any) -> tuple[Any, Any]:
    """(g_i, g_j), each (T,), for T independent trials of the path model."""

    def normal(*shape: int) -> Any:
        return xp.asarray(rng.standard_normal(shape))

    def mask() -> Any:  # independent Bernoulli(1/2) masks for the two inputs: (T, 2, N), one random bit each
        bits = numpy.unpackbits(rng.integers(0, 256, size=(T, 2, -(-N // 8)), dtype=numpy.uint8), axis=-1)
        return xp.asarray(bits[..., :N], dtype=float)

    def project(u: Any, var: float) -> Any:  # W^T u for a fresh W (N x N), shared by both inputs
        if method == "dense":
            w = normal(T, N, N) * math.sqrt(var)
            return xp.einsum("trk,tar->tak", w, u)
        return _gram_project(u, var, normal(T, 2, N))

    he = 2.0 / N
    w_out = normal(T, 1, N) * math.sqrt(1.0 / N)
    if kind == "fnn":
        u = mask() * w_out
        for _ in range(L - 1):  # layers L .. 2
            u = mask() * project(u, he)
        var_in = 2.0
    else:  # res, res_bn, highway
        u = xp.broadcast_to(w_out, (T, 2, N))
        n_blocks = L - 1 if kind == "res_bn" else L
        a, b = (math.sqrt(1 - t), math.sqrt(t)) if kind == "highway" else (1.0, beta)
        for l in range(n_blocks, 0, -1):
            scale = b / math.sqrt(1 + beta**2 * (l - 1)) if kind == "res_bn" else b
            u = a * u + scale * mask() * project(u, he)
        var_in = 1.0
    # the input layer: g_a = w_in . u_a, w_in ~ N(0, var_in)^N shared by both inputs (a projection to 1 output)
    if method == "dense":
        g = (normal(T, 1, N) * math.sqrt(var_in) * u).sum(-1)
    else:
        g = _gram_project(u, var_in, normal(T, 2, 1))[..., 0]
    return g[:, 0], g[:, 1]


def path_model(kind: str, depth: int, width: int = 200, beta: float = 1.0, t: float | None = None,
               trials: int = 20_000, rng: Any = 0, method: str = "gram", chunk: int | None = None,
               backend: str = "numpy") -> MCMoments:
    """Monte-Carlo C(i), C(i,j), R of the idealised path model (spec §4.8) with standard errors; compare with
    ``closed_form`` via ``MCMoments.z_scores``.

    Parameters
    ----------
    kind : str
        "fnn" (L rectifier layers), "res" (L blocks, no BN), "res_bn" (L-1 blocks, BN modelled as a division by
        s_l = sqrt(1 + beta^2 (l-1))), "highway" (L blocks, gates a^2 = 1-t, b^2 = t; t = 1/L default).
    depth, width : int
        L, and N neurons per layer.
    beta, t : float
        As in ``closed_form``.
    trials, rng : int, numpy.random.Generator or seed
        Independent draws of the model, and their source.
    method : str
        "gram" (exact in distribution, O(N) per layer; default) or "dense" (draws every N x N matrix).
    chunk : int, optional
        Trials per chunk (default 4096 for "gram", 16 for "dense").
    backend : str
        "numpy" or "cupy".

    Returns
    -------
    MCMoments
    """
    check_choice("kind", kind, KINDS)
    check_choice("method", method, METHODS)
    rng = as_rng(rng)
    t = 1.0 / depth if t is None else t
    be = get_backend(backend)
    chunk = chunk or (4096 if method == "gram" else 16)
    gi, gj = [], []
    for start in range(0, trials, chunk):
        a, b = _path_chunk(kind, int(depth), int(width), float(beta), float(t), min(chunk, trials - start), rng,
                           method, be.xp)
        gi.append(be.asnumpy(a))
        gj.append(be.asnumpy(b))
    gi, gj = numpy.concatenate(gi), numpy.concatenate(gj)
    return mc_moments(gi * gi, gj * gj, gi * gj)
