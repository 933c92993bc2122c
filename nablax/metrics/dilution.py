"""Dilution of residual blocks and the Pythagorean formula (gradients-explode spec §4; definitions
Reconstruction, algebra Derived).

A residual block ``f(x) = s(x) + rho(x)`` (skip s: the identity or a Dense projection; residual function
rho = beta * branch). On a batch X (B, d) with S = s(X), R = rho(X), F = f(X) and the batch-level Jacobians
J_s, J_rho, J_f = J_s + J_rho from the block input:

    k-dilution      k = ||S||_F / ||R||_F
    GSCs            GSC_s, r = GSC_rho, GSC_f: each from the block input X to S, R, F (batch-level, spec §2.4)
    Pythagorean     GSC_f^2 = ( k^2 GSC_s^2 + r^2 ) / ( k^2 + 1 )          when S _|_ R and <J_s, J_rho>_F = 0
    identity skip   GSC_f = sqrt( (k^2 + r^2) / (k^2 + 1) )                (GSC_s = 1)

Without the two orthogonality conditions the exact relation (Derived) is

    GSC_f^2 = ( k^2 GSC_s^2 + r^2 + 2 k GSC_s r c_J ) / ( k^2 + 1 + 2 k c_v )
    c_v = <S, R> / (||S|| ||R||),      c_J = <J_s, J_rho>_F / (||J_s||_F ||J_rho||_F)

so each block records c_v and c_J beside the prediction: the formula is exact when both vanish.

Across a ResNet (Reconstruction): if the stream energy grows linearly, k_b^2 ~ b and the end-to-end GSC is about
prod_b sqrt( (b + r_b^2) / (b + 1) ), polynomial in depth (``DilutionResult.telescoped``).

All three Jacobian norms and the cross term come from ONE set of cotangent seeds pulled back through the skip
and the branch separately: identity seeds (exact) or Gaussian probes (Hutchinson, with standard errors), chosen as
in ``gsc.gsc_to``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy

from ..backend import backend_of
from ..network import DEFAULT_MAX_ELEMENTS, Trace
from . import check_choice
from .gsc import DEFAULT_EXACT_LIMIT, METHODS, gsc_to


def pythagorean_gsc(k: float, r: float, gsc_skip: float = 1.0) -> float:
    """sqrt( (k^2 GSC_s^2 + r^2) / (k^2 + 1) ): the block GSC the Pythagorean conditions predict, from the block's
    k-dilution k = ||S||_F / ||R||_F, r = GSC_rho and GSC_s = ``gsc_skip`` (1 for an identity skip)."""
    return math.sqrt((k * k * gsc_skip * gsc_skip + r * r) / (k * k + 1.0))


def telescoped_gsc(r: Any) -> float:
    """prod_b sqrt( (b + r_b^2) / (b + 1) ), b = 1..B: the end-to-end GSC of B blocks with k_b^2 = b (spec §4), from
    r (B,), GSC_rho of each block in forward order."""
    r = numpy.asarray(r, dtype=float)
    b = numpy.arange(1, len(r) + 1)
    return float(numpy.prod(numpy.sqrt((b + r * r) / (b + 1.0))))


@dataclass
class BlockDilution:
    """One residual block. ``position`` is its output position (its input sits at position - 1).
    ``stderr`` holds standard errors of gsc_skip, gsc_branch, gsc_block (zeros when exact)."""

    block: int
    position: int
    k: float
    gsc_skip: float
    gsc_branch: float
    gsc_block: float
    predicted: float
    cos_values: float
    cos_jacobians: float
    method: str
    stderr: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class DilutionResult:
    """Every residual block, plus the end-to-end checks of spec §4 and §11.8.

    end_to_end           GSC from the first block's input to the last block's output (``gsc.gsc_to``)
    product_measured     prod_b GSC_block (approximate multiplicativity, §2.2): compare with end_to_end
    product_predicted    prod_b of the Pythagorean predictions
    telescoped           prod_b sqrt((b + r_b^2)/(b + 1)), the k_b^2 = b idealisation
    """

    blocks: list[BlockDilution]
    end_to_end: float
    product_measured: float
    product_predicted: float
    telescoped: float
    settings: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> numpy.ndarray:
        return numpy.array([getattr(b, name) for b in self.blocks])


def _dots(a: Any, b: Any) -> numpy.ndarray:
    """<a_i, b_i> for every index i of the leading probe axis, on the host."""
    return backend_of(a).asnumpy((a * b).reshape(a.shape[0], -1).sum(axis=1))


def _seed_chunks(trace: Trace, p: int, exact: bool, coupled: bool, n_probes: int, rng: numpy.random.Generator):
    """Cotangent seeds at position p: identity seeds in chunks (exact) or one batch of Gaussian probes."""
    if not exact:
        v = rng.standard_normal((n_probes,) + tuple(trace.values[p].shape))
        yield trace.xp.asarray(v, dtype=trace.values[p].dtype)
        return
    n = trace.values[p].size if coupled else trace.values[p][0].size
    for rows in trace.probe_chunks(n, DEFAULT_MAX_ELEMENTS, int(trace.values[p].size)):
        yield trace.identity_seeds(p, rows, per_sample=not coupled)


def block_dilution(trace: Trace, p: int, *, method: str = "auto", n_probes: int = 16, rng: Any = None,
                   exact_limit: int = DEFAULT_EXACT_LIMIT) -> BlockDilution:
    """k-dilution, GSC_s, r, GSC_f and the Pythagorean prediction of the residual block at forward position p.

    Parameters
    ----------
    trace : Trace
        A forward pass of a batch X (B, d).
    p : int
        The forward position of the block's output (its input is p - 1).
    method, rng, exact_limit
        As in ``gsc.gsc_to`` ("auto": exact unless the block couples samples and B * d > exact_limit).
    n_probes : int
        Gaussian probes for "hutchinson".

    Returns
    -------
    BlockDilution
    """
    check_choice("method", method, METHODS)
    layer = trace.network.layers[p - 1]
    if not hasattr(layer, "vjp_parts"):
        raise ValueError(f"position {p} is the output of a {layer.kind} layer, not of a residual block")
    cache = trace.caches[p - 1]
    x, f = trace.values[p - 1], trace.values[p]
    rho = layer.branch_output(cache)
    s = f - rho
    coupled = bool(cache.coupled)
    exact = method == "exact" or (method == "auto" and (not coupled or int(f.size) <= exact_limit))
    rng = numpy.random.default_rng(rng)
    samples = []  # per chunk or probe: (||J_s^T v||^2, ||J_rho^T v||^2, <J_s^T v, J_rho^T v>)
    for seeds in _seed_chunks(trace, p, exact, coupled, n_probes, rng):
        a, b = layer.vjp_parts(cache, seeds)
        samples.append(numpy.stack([_dots(a, a), _dots(b, b), _dots(a, b)]))
    samples = numpy.concatenate(samples, axis=1)  # (3, seeds or probes)
    if layer.skip is None and not exact:
        samples[0] = x.size  # ||I||_F^2 is known: a control variate that makes GSC_s exactly 1 and steadies GSC_f
    jss, jrr, jsr = samples.sum(axis=1) if exact else samples.mean(axis=1)
    xx, ss, rr, ff = (float((a * a).sum()) for a in (x, s, rho, f))
    sr = float((s * rho).sum())
    denom = x.size  # B * d_in
    gsc_s = math.sqrt(jss / denom * xx / ss)
    r = math.sqrt(jrr / denom * xx / rr)
    gsc_f = math.sqrt((jss + jrr + 2 * jsr) / denom * xx / ff)
    k = math.sqrt(ss / rr)
    stderr = (0.0, 0.0, 0.0)
    if not exact:  # delta method on sqrt of each mean
        sq = [samples[0], samples[1], samples[0] + samples[1] + 2 * samples[2]]
        se = [float(q.std(ddof=1) / math.sqrt(q.size)) for q in sq]
        stderr = tuple(g * e / (2 * float(q.mean())) for g, e, q in zip((gsc_s, r, gsc_f), se, sq))
    return BlockDilution(
        block=trace.network.positions()[p].block, position=p, k=k, gsc_skip=gsc_s, gsc_branch=r, gsc_block=gsc_f,
        predicted=pythagorean_gsc(k, r, gsc_s), cos_values=sr / math.sqrt(ss * rr),
        cos_jacobians=jsr / math.sqrt(jss * jrr), method="exact" if exact else "hutchinson", stderr=stderr)


def dilution(trace: Trace, **kw: Any) -> DilutionResult:
    """``block_dilution`` for every residual block of the network, in forward order, and the end-to-end checks;
    ``**kw`` as in ``block_dilution`` (the method's keywords also reach the end-to-end ``gsc.gsc_to``).

    Parameters
    ----------
    trace : Trace
        A forward pass through a network with residual blocks.

    Returns
    -------
    DilutionResult
        One ``BlockDilution`` per block.
    """
    ps = [q.index for q in trace.network.positions() if q.kind == "residual"]
    if not ps:
        raise ValueError(f"{trace.network.name or 'this network'} has no residual blocks")
    blocks = [block_dilution(trace, p, **kw) for p in ps]
    kw_gsc = {k: v for k, v in kw.items() if k in ("method", "n_probes", "rng", "exact_limit")}
    end_to_end = gsc_to(trace, ps[-1], ps[0] - 1, **kw_gsc).value[0]
    return DilutionResult(
        blocks=blocks, end_to_end=float(end_to_end), product_measured=float(numpy.prod([b.gsc_block for b in blocks])),
        product_predicted=float(numpy.prod([b.predicted for b in blocks])),
        telescoped=telescoped_gsc([b.gsc_branch for b in blocks]),
        settings={k: v for k, v in kw.items() if k != "rng"})


__all__ = ["block_dilution", "dilution", "pythagorean_gsc", "telescoped_gsc", "BlockDilution", "DilutionResult"]
