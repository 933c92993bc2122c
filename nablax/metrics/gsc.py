"""The gradient scale coefficient (GSC) of the gradients-explode paper (spec §2.1-2.5).

For the map from position lo to position hi (lo <= hi) with Jacobian J and values F_lo, F_hi:

    ||J||_qm^2   = ||J||_F^2 / d_lo                               quadratic-mean norm: divided by the INPUT dim
    GSC(lo, hi)  = ||J||_qm * ||F_lo|| / ||F_hi||

Aggregation over a batch of B points (an open choice; ``aggregation=``):
    "batch" (default)       the whole batch is one map R^{B d_lo} -> R^{B d_hi}:
                            GSC^2 = ||J_batch||_F^2 / (B d_lo) * ||F_lo||_F^2 / ||F_hi||_F^2
                            (without batch coupling J_batch is block-diagonal and ||J_batch||_F^2 = sum_b ||J_b||_F^2)
    "per_example_mean"      the arithmetic mean of the per-example GSCs
    "per_example_geomean"   their geometric mean
To the error layer (``gsc_to_error``) the default is per example, geometric mean. ``squared=True`` returns GSC^2.

Jacobian norms come from the engine's one identity-seeded sweep (``Trace.jacobian_sq_norms``), which gives
GSC(p -> hi) for EVERY p <= hi at once. For a pass that couples samples (batch norm with batch statistics) the
exact batch-level norm needs B * d_hi seeds; above ``exact_limit`` seeds the Hutchinson estimate is used and
reported with its standard error (``method="auto"``, the default). The result says which method ran.

``hi`` may name a reference position, and ``gsc_bottom_to_error`` takes a bottom one (spec §13, Open; the options
are in ``metrics.jacobian``). ``GSCResult.paper_layers()`` renames positions to the paper's backward-counted layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy

from ..network import Trace
from . import check_choice
from .jacobian import bottom_position, paper_index, reference_position

AGGREGATIONS = ("batch", "per_example_mean", "per_example_geomean")
METHODS = ("auto", "exact", "hutchinson")
DEFAULT_EXACT_LIMIT = 1_000  # seeds (B * d_hi) above which "auto" switches a coupled pass to Hutchinson


@dataclass
class GSCResult:
    """GSC(p -> hi) for the positions p in ``positions``.

    value    GSC (or GSC^2 when squared) per position
    stderr   standard error per position (Hutchinson only; zeros for exact values)
    method   "exact" or "hutchinson" (what actually ran)
    """

    positions: numpy.ndarray
    value: numpy.ndarray
    stderr: numpy.ndarray
    hi: int
    method: str
    aggregation: str
    squared: bool
    n_probes: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    n_layers: int | None = None  # P, for the paper's numbering

    def at(self, p: int) -> float:
        return float(self.value[list(self.positions).index(p)])

    def paper_layers(self) -> tuple[numpy.ndarray, int]:
        """(k for every position, l of ``hi``) in the paper's numbering: value[i] is the paper's GSC(k[i], l)."""
        if self.n_layers is None:
            raise ValueError("this result does not know the network's layer count")
        k = numpy.array([paper_index(int(p), self.n_layers) for p in self.positions])
        return k, paper_index(self.hi, self.n_layers)


def _sq_frobenius(a: Any) -> Any:
    return (a * a).reshape(a.shape[0], -1).sum(axis=1)


def _aggregate(per: numpy.ndarray, aggregation: str, squared: bool) -> numpy.ndarray:
    """Per-example squared GSCs (n_positions, B) -> one value per position: the mean or geometric mean over b of
    GSC_b^2 (``squared``) or of GSC_b. One example with GSC 0 (a zero gradient) makes the geometric mean 0."""
    if aggregation == "per_example_mean":
        return per.mean(axis=1) if squared else numpy.sqrt(per).mean(axis=1)
    with numpy.errstate(divide="ignore"):
        return numpy.exp(numpy.log(per).mean(axis=1) * (1.0 if squared else 0.5))


def gsc_to(trace: Trace, hi: int | str | None = None, lo: int = 0, *, aggregation: str = "batch",
           squared: bool = False, method: str = "auto", n_probes: int = 4, rng: Any = None,
           exact_limit: int = DEFAULT_EXACT_LIMIT) -> GSCResult:
    """GSC(p -> hi) for every position p in lo..hi, from one sweep back from ``hi``.

    Parameters
    ----------
    trace : Trace
        One forward pass (``Network.forward``) of a batch of B points.
    hi : int or str, optional
        The position measured to (default: the output), or a name of ``metrics.jacobian.REFERENCES``.
    lo : int
        The lowest position measured from.
    aggregation, squared, method, exact_limit
        See the module docstring (``exact_limit``: seeds B * d_hi above which "auto" takes Hutchinson).
    n_probes, rng : int, numpy.random.Generator or seed
        Hutchinson probes per sample, and their source.

    Returns
    -------
    GSCResult
        ``value`` and ``stderr`` of shape (hi - lo + 1,), one per position lo..hi, and the method that ran.
    """
    if isinstance(hi, str):
        hi = reference_position(trace.network, hi)
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_choice("method", method, METHODS)
    hi, lo = trace._pos(hi, -1), trace._pos(lo, 0)
    be, b = trace.network.backend, trace.batch_size
    positions = numpy.arange(lo, hi + 1)
    d_lo = numpy.array([trace.values[p][0].size for p in positions], dtype=float)
    f_sq = numpy.stack([be.asnumpy(_sq_frobenius(trace.values[p])) for p in positions])  # (n_pos, B)
    f_hi = be.asnumpy(_sq_frobenius(trace.values[hi]))

    if aggregation != "batch":
        if trace.couples_batch:
            raise ValueError("per-example GSCs need per-example Jacobians, which a batch-coupled pass does not have; "
                             "use aggregation='batch' or forward(..., hold_stats=True)")
        if method == "hutchinson":
            raise ValueError("per-example aggregation is computed exactly; use method='exact' or 'auto'")
        jac = be.asnumpy(trace.jacobian_sq_norms(hi, lo))  # (n_pos, B)
        val = _aggregate(jac / d_lo[:, None] * f_sq / f_hi[None, :], aggregation, squared)
        return GSCResult(positions, val, numpy.zeros_like(val), hi, "exact", aggregation, squared,
                         n_layers=len(trace.network.layers))

    seeds = trace.values[hi].size  # B * d_hi identity seeds for the exact norm of a coupled pass
    use_exact = method == "exact" or (method == "auto" and (not trace.couples_batch or seeds <= exact_limit))
    if use_exact:
        jac = be.asnumpy(trace.batch_jacobian_sq_norms(hi, lo))
        err = numpy.zeros_like(jac)
        used, probes = "exact", None
    else:
        mean, se = trace.hutchinson_sq_norms(hi, lo, n_probes=n_probes, rng=rng)
        jac, err = be.asnumpy(mean), be.asnumpy(se)
        jac[-1], err[-1] = b * d_lo[-1], 0.0  # J(hi <- hi) = I: its norm is known, so GSC(hi, hi) = 1 exactly
        used, probes = "hutchinson", n_probes
    scale = f_sq.sum(axis=1) / (b * d_lo * f_hi.sum())
    sq = jac * scale
    if squared:
        val, stderr = sq, err * scale
    else:
        val = numpy.sqrt(sq)
        stderr = numpy.where(jac > 0, val * err / (2 * numpy.where(jac > 0, jac, 1.0)), 0.0)  # delta method
    return GSCResult(positions, val, stderr, hi, used, aggregation, squared, probes, n_layers=len(trace.network.layers))


def gsc(trace: Trace, lo: int, hi: int | None = None, **kw: Any) -> GSCResult:
    """GSC(lo -> hi) alone; ``**kw`` as in ``gsc_to``.

    Parameters
    ----------
    lo, hi : int
        The positions measured from and to (default hi: the output).

    Returns
    -------
    GSCResult
        One position: ``value`` and ``stderr`` of shape (1,).
    """
    res = gsc_to(trace, hi, lo, **kw)
    res.positions, res.value, res.stderr = res.positions[:1], res.value[:1], res.stderr[:1]
    return res


def gsc_table(trace: Trace, **kw: Any) -> numpy.ndarray:
    """GSC(lo -> hi) for every pair of positions, one sweep per hi; ``**kw`` as in ``gsc_to``.

    Parameters
    ----------
    trace : Trace
        A forward pass with P + 1 positions.

    Returns
    -------
    numpy.ndarray (P + 1, P + 1)
        Entry [lo, hi] is GSC(lo -> hi); NaN where lo > hi.
    """
    n = len(trace.values)
    table = numpy.full((n, n), numpy.nan)
    for hi in range(n):
        table[: hi + 1, hi] = gsc_to(trace, hi, 0, **kw).value
    return table


def gsc_to_error(trace: Trace, dE_dout: Any, errors: Any, *, lo: int = 0, squared: bool = False,
                 aggregation: str = "per_example_geomean") -> GSCResult:
    """GSC(p -> E) for every position p >= lo, from ONE ordinary backward pass of the error (spec §2.3, §2.4).

        per example (default)   GSC_b(p, E) = ||dE_b/df_{p,b}|| ||f_{p,b}|| / (sqrt(d_p) |E_b|), aggregated over b
                                as in ``gsc_to``: the paper's definition, independent of the evaluation batch size
        "batch"                 GSC(p, E) = ||dE/dF_p||_F ||F_p||_F / (sqrt(B d_p) |E|),  E = sum_b E_b (or the
                                scalar given): an option; it shrinks like 1/sqrt(B) at a fixed per-example scale

    Both are invariant to scaling the error and its gradient together. An example whose error is exactly 0 (its
    log-softmax rounds to 0) has no GSC: it is left out, and ``settings["examples_left_out"]`` counts it. A pass
    that couples samples has no per-example gradients: use ``forward(..., hold_stats=True)`` or "batch".

    Parameters
    ----------
    trace : Trace
        A forward pass of B points with P layers.
    dE_dout : array (B, d_out)
        Row b is dE_b/d(out_b): the gradient of the SUM of ``errors`` (``B * loss.grad`` for a mean loss), or of
        the scalar ``errors``.
    errors : array (B,), or float with ``aggregation="batch"``
        Each example's own error E_b (``loss.values``), or the scalar batch error.
    lo, squared, aggregation
        As in ``gsc_to`` (default aggregation: "per_example_geomean").

    Returns
    -------
    GSCResult
        ``value`` of shape (P + 1 - lo,), one per position lo..P; ``hi`` is P + 1, the error layer.
    """
    check_choice("aggregation", aggregation, AGGREGATIONS)
    be, b = trace.network.backend, trace.batch_size
    hi = len(trace.values) - 1
    positions = numpy.arange(lo, hi + 1)
    e = numpy.asarray(be.asnumpy(errors) if hasattr(errors, "shape") else errors, dtype=float)
    settings: dict[str, Any] = {}
    if aggregation == "batch":
        total = float(e.sum())
        if total == 0:
            raise ValueError("the error is exactly 0: GSC to the error layer is undefined")
        sq = numpy.empty(len(positions))
        for p, g in trace.pullbacks(dE_dout, hi, lo):
            f = trace.values[p]
            sq[p - lo] = float(be.asnumpy((g * g).sum())) * float(be.asnumpy((f * f).sum())) / (b * f[0].size * total ** 2)
        val = sq if squared else numpy.sqrt(sq)
    else:
        if e.shape != (b,):
            raise ValueError(f"per-example aggregation needs each example's error, shape ({b},), got {e.shape}")
        if trace.couples_batch:
            raise ValueError("per-example GSCs need per-example gradients, which a batch-coupled pass does not have; "
                             "use aggregation='batch' or forward(..., hold_stats=True)")
        defined = e != 0  # an example fitted to an error of exactly 0 (it underflows) has no GSC: left out
        if not defined.any():
            raise ValueError("every example's error is exactly 0: the GSC to the error layer is undefined")
        per = numpy.empty((len(positions), int(defined.sum())))
        for p, g in trace.pullbacks(dE_dout, hi, lo):
            f = trace.values[p]
            per[p - lo] = be.asnumpy(_sq_frobenius(g) * _sq_frobenius(f))[defined] / (f[0].size * e[defined] ** 2)
        val = _aggregate(per, aggregation, squared)
        settings["examples_left_out"] = int(b - defined.sum())
    return GSCResult(positions, val, numpy.zeros_like(val), hi + 1, "exact", aggregation, squared, n_layers=hi,
                     settings=settings)


def gsc_bottom_to_error(trace: Trace, dE_dout: Any, errors: Any, *, bottom: str = "linear1",
                        squared: bool = False, aggregation: str = "per_example_geomean") -> float:
    """The paper's GSC(L, 0): from the bottom layer to the error layer (spec §1.1, §2.3).

    Parameters
    ----------
    trace, dE_dout, errors, squared, aggregation
        As in ``gsc_to_error``.
    bottom : str
        Open: ``"linear1"`` (default, the output of linear layer 1, the paper's f_L) or ``"input"`` (position 0).

    Returns
    -------
    float
    """
    lo = bottom_position(trace.network, bottom)
    return float(gsc_to_error(trace, dE_dout, errors, lo=lo, squared=squared, aggregation=aggregation).value[0])


def relative_sensitivity_check(trace: Trace, lo: int, hi: int, rng: Any) -> float:
    """The GSC's meaning, measured: ||J u|| / ||F_hi|| for a random u (from ``rng``) with ||u|| = ||F_lo||, the
    relative change of F_hi per relative change of F_lo, to first order (a pushforward from lo to hi). Its
    mean-square over directions is GSC^2; used in tests."""
    xp = trace.xp
    u = xp.asarray(rng.standard_normal(trace.values[lo].shape), dtype=trace.values[lo].dtype)
    u *= math.sqrt(float((trace.values[lo] ** 2).sum()) / float((u * u).sum()))
    ju = trace.pushforward(u, lo, hi)
    return math.sqrt(float((ju * ju).sum()) / float((trace.values[hi] ** 2).sum()))
