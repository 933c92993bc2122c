"""Collapsing-domain metrics of the gradients-explode paper (spec §2.7-2.9), at every nonlinearity layer.

Both are measured on the INPUT Z (N, d) of nonlinearity layer j (its pre-activations over N data points; in a
normalised net, the output of the normalisation layer), per neuron u across the data:

    pre-activation std (name: Paper; formula: Reconstruction)
        s_u^2 = var_n Z[n, u]                              population (ddof=0, default) or sample (ddof=1): Open
        "raw" (default)        sqrt( mean_u s_u^2 )
        "normalised" (option)  sqrt( mean_u s_u^2 / mean_u mean_n Z[n, u]^2 )
      Raw is the default because the normalised variant is identically ~1 in a zero-bias tanh net on symmetric
      input, whose curve the paper shows decaying. With batch norm the raw value is 1 by construction.

    sign diversity (formula: Paper; counting per neuron across data: Reconstruction)
        P_u = #{n : Z[n, u] > 0},  N_u = #{n : Z[n, u] < 0}
        sign_div = mean_u min(P_u, N_u) / (P_u + N_u)       in [0, 0.5]
      ``zero_policy`` (project option): "ignore" (default: exact zeros count in neither P_u nor N_u, and neurons
      with P_u + N_u = 0 are skipped), "positive" or "negative" (zeros count on that side).

Operational signals of a collapsing domain (spec §2.9, Reconstruction): the raw pre-activation std decays with
depth (tanh becomes pseudo-linear), or the sign diversity decays (ReLU units become identity or zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy

from ..backend import array_module
from ..layers.base import iter_leaves
from ..network import Trace
from . import check_choice

VARIANTS = ("raw", "normalised")
ZERO_POLICIES = ("ignore", "positive", "negative")


def _neurons(z: Any) -> Any:
    if z.ndim < 2:
        raise ValueError(f"pre-activations must be (N, ...) with a data axis first, got shape {z.shape}")
    return z.reshape(z.shape[0], -1)


def preact_std(z: Any, variant: str = "raw", ddof: int = 0) -> float:
    """Pre-activation standard deviation of Z per neuron across the N points (see the module docstring).

    Parameters
    ----------
    z : array (N, ...)
        Pre-activations of N points; every other entry is a neuron (a conv map's (channel, pixel) entries too).
    variant, ddof : str, int
        "raw" (default) or "normalised"; 0 (population variance, default) or 1 (sample variance).

    Returns
    -------
    float
    """
    check_choice("variant", variant, VARIANTS)
    z = _neurons(z)
    if z.shape[0] - ddof < 1:
        raise ValueError(f"need more than {ddof} data points for ddof={ddof}, got {z.shape[0]}")
    mean_var = float(z.var(axis=0, ddof=ddof).mean())
    if variant == "raw":
        return math.sqrt(mean_var)
    second_moment = float((z * z).mean())
    return math.sqrt(mean_var / second_moment) if second_moment > 0 else math.nan


def sign_diversity(z: Any, zero_policy: str = "ignore") -> float:
    """Mean over neurons of min(P_u, N_u) / (P_u + N_u) (see the module docstring).

    Parameters
    ----------
    z : array (N, ...)
        As in ``preact_std``.
    zero_policy : str
        "ignore" (default), "positive" or "negative".

    Returns
    -------
    float
        In [0, 0.5]; NaN if every neuron is empty under ``zero_policy="ignore"``.
    """
    check_choice("zero_policy", zero_policy, ZERO_POLICIES)
    z = _neurons(z)
    pos, neg = (z > 0).sum(axis=0), (z < 0).sum(axis=0)
    if zero_policy == "positive":
        pos = z.shape[0] - neg
    elif zero_policy == "negative":
        neg = z.shape[0] - pos
    total = pos + neg
    keep = total > 0
    if not bool(keep.any()):
        return math.nan
    smaller = array_module(z).minimum(pos, neg)
    return float((smaller[keep] / total[keep]).mean())


@dataclass
class DomainResult:
    """Collapsing-domain metrics at every nonlinearity layer j = 1..J (forward order, branches included).

    index           j
    position        forward position of the top-level layer holding nonlinearity j (its output; a residual
                    block's position for nonlinearities inside the block)
    kind            the nonlinearity's kind ("relu", "tanh", ...)
    n_lin           linear layers before nonlinearity j (compositional depth at its input)
    block           residual block holding it (0 = outside any block)
    preact_std      pre-activation std of its input
    sign_diversity  sign diversity of its input
    """

    index: numpy.ndarray
    position: numpy.ndarray
    kind: list[str]
    n_lin: numpy.ndarray
    block: numpy.ndarray
    preact_std: numpy.ndarray
    sign_diversity: numpy.ndarray
    settings: dict[str, Any] = field(default_factory=dict)


def domain_metrics(trace: Trace, *, variant: str = "raw", ddof: int = 0, zero_policy: str = "ignore") -> DomainResult:
    """Pre-activation std and sign diversity on the input of every nonlinearity in ``trace``.

    Parameters
    ----------
    trace : Trace
        One forward pass; its batch is the data set, N = ``trace.batch_size``.
    variant, ddof, zero_policy
        As in ``preact_std`` and ``sign_diversity``.

    Returns
    -------
    DomainResult
        Arrays of shape (J,), one entry per nonlinearity j = 1..J in forward order.
    """
    net = trace.network
    positions = net.positions()
    rows: list[tuple[int, str, int, int, float, float]] = []
    for p, (layer, cache) in enumerate(zip(net.layers, trace.caches), start=1):
        n_lin = positions[p - 1].n_lin
        block = positions[p].block if positions[p].kind == "residual" else 0
        for _, leaf, z, _ in iter_leaves([layer], [trace.values[p - 1]], [cache]):
            if leaf.is_nonlinearity:
                rows.append((p, leaf.kind, n_lin, block, preact_std(z, variant, ddof), sign_diversity(z, zero_policy)))
            n_lin += leaf.n_linear
    cols = list(zip(*rows)) if rows else [[]] * 6
    return DomainResult(
        index=numpy.arange(1, len(rows) + 1), position=numpy.array(cols[0], dtype=int), kind=list(cols[1]),
        n_lin=numpy.array(cols[2], dtype=int), block=numpy.array(cols[3], dtype=int),
        preact_std=numpy.array(cols[4], dtype=float), sign_diversity=numpy.array(cols[5], dtype=float),
        settings={"preact_std.variant": variant, "preact_std.ddof": ddof, "sign_div.zero_policy": zero_policy,
                  "n_points": trace.batch_size})
