"""The compositional-depth-reduction experiment (gradients-explode spec §6, Fig. 2F).

The bottom part ``B_k`` of a trained network (input up to and including the output Z_k of linear layer k) is
replaced by its first-order Taylor expansion in the parameters around the expansion point θ(0):

    T_k(x) = B_k(x; θ(0)) + Σ_{i<=k} J_{θ_i} B_k(x; θ(0)) (θ_i(T) - θ_i(0))

and the top part (norm_k, act_k, linear k+1 ... output) keeps its trained parameters. No retraining. The training
error is reported against the reduction ``r = k - 1``: T_1 = B_1 exactly (a linear layer is linear in its
parameters), so r = 0 is the trained network; the output layer is never replaced (r = 0 ... D - 2).

One forward-mode sweep through the initial network gives T_k for EVERY k at once: with the forward values and
caches of θ(0), the tangent

    t_0 = 0,    t_p = J_p t_{p-1} + J_{θ_p} Δθ_p          (``layers.base.param_jvp_chain``, layer by layer)

at the position of Z_k is ``T_k(x) - B_k(x; θ(0))``. For ResNets the cut points are the top-level positions that end
a residual block or a linear layer (a cut never falls inside a block); k counts the linear layers below the cut.

Options (spec §13; the spec's open choices):
    block_end  "linear_output" (default): B_k ends at Z_k;  "after_activation": B_k also holds norm_k and act_k
               (then r = 0 is NOT the trained network; flagged in the settings)
    bn_stats   batch norm inside T_k: "batch_differentiated" (default: the evaluation batch's statistics, and
               the tangent differentiated through them) or "batch_constant" (statistics held constant)
    top_bn     batch norm in the top part: "batch" (default: the evaluation batch's statistics) or "running"
    expansion_point  the parameters to expand around: θ(0) in the papers; any parameter set (an earlier
               checkpoint, say) is allowed
    batch_size evaluation batch size (default: the training batch size, 256 in the project protocol)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy

from ..data import batch_slices
from ..layers.base import Array, Mode, forward_chain, param_jvp_chain
from ..network import Network
from . import check_choice

BLOCK_ENDS = ("linear_output", "after_activation")
BN_STATS = ("batch_differentiated", "batch_constant")
TOP_BN = ("batch", "running")


@dataclass
class TaylorResult:
    """Training error (and loss) with the bottom k linear layers replaced, per cut: ``r = k - 1``."""

    k: numpy.ndarray
    error: numpy.ndarray
    loss: numpy.ndarray
    error_original: float
    loss_original: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def r(self) -> numpy.ndarray:
        return self.k - 1


def cut_positions(net: Network, block_end: str = "linear_output", include_output: bool = False) -> list[int]:
    """Top-level positions where a bottom block B_k ends, ascending (k = ``positions()[p].n_lin``), for ``block_end``:

    "linear_output" (default): after each top-level layer that holds linear layers (a Dense, or a residual block).
    "after_activation": just before the next such layer (so norm and nonlinearity are inside B_k).
    The cut after the output layer is left out unless ``include_output``.
    """
    check_choice("block_end", block_end, BLOCK_ENDS)
    linear = [i for i, layer in enumerate(net.layers) if layer.n_linear > 0]
    cuts = [i + 1 for i in linear] if block_end == "linear_output" else linear[1:] + [len(net.layers)]
    if not include_output:
        pos = net.positions()
        cuts = [p for p in cuts if pos[p].n_lin < net.n_linear]
    return cuts


def _layer_dparams(net: Network, delta: dict[str, Array]) -> list[dict[str, Array]]:
    """Per top-level layer parameter tangents from ``Network.named_params``-named arrays."""
    out: list[dict[str, Array]] = [{} for _ in net.layers]
    for name, v in delta.items():
        i, _, rest = name.partition(".")
        out[int(i)][rest] = v
    return out


def taylor_outputs(net: Network, expansion_point: dict[str, Array], x: Array, cuts: list[int], *,
                   bn_stats: str = "batch_differentiated", top_bn: str = "batch") -> dict[int, Array]:
    """Network outputs on the batch x with the bottom block up to each cut position p replaced by its first-order
    expansion around ``expansion_point`` (the network itself holds θ(T)).

    Parameters
    ----------
    expansion_point : dict of arrays
        θ(0), named as ``Network.named_params``.
    x : array (B, *in_shape)
    cuts : list of int
        Cut positions (``cut_positions``).
    bn_stats, top_bn : str
        See the module docstring.

    Returns
    -------
    dict of int to array (B, d_out)
        The output for each cut position.
    """
    check_choice("bn_stats", bn_stats, BN_STATS)
    check_choice("top_bn", top_bn, TOP_BN)
    if not cuts:
        return {}
    theta = net.copy_params()
    dparams = _layer_dparams(net, {k: theta[k] - expansion_point[k] for k in theta})
    last = max(cuts)
    tangents: dict[int, Array] = {}
    net.set_params(expansion_point)
    try:  # forward and tangent sweep through the initial bottom block, up to the highest cut
        values, caches = forward_chain(net.layers[:last], x, Mode(train=True, hold_stats=bn_stats == "batch_constant"))
        t = None
        for p in range(1, last + 1):
            t = param_jvp_chain(net.layers[p - 1:p], caches[p - 1:p], dparams[p - 1:p], t)
            if p in cuts:
                tangents[p] = t
    finally:
        net.set_params(theta)
    top_mode = Mode(train=top_bn == "batch")
    outs = {}
    for p in cuts:
        z = values[p] if tangents[p] is None else values[p] + tangents[p]
        outs[p] = forward_chain(net.layers[p:], z, top_mode)[0][-1]
    return outs


def taylor_errors(net: Network, expansion_point: dict[str, Array], x: Array, y: Array, *, loss: Any,
                  batch_size: int = 256, block_end: str = "linear_output", bn_stats: str = "batch_differentiated",
                  top_bn: str = "batch", include_output: bool = False) -> TaylorResult:
    """Training error and loss for every reduction r = k - 1, over evaluation batches of ``batch_size`` of (x, y)
    (``data.batch_slices``: a last batch of one point joins the one before it).

    Parameters
    ----------
    net, expansion_point : Network, dict of arrays
        The trained network θ(T), and θ(0) named as ``Network.named_params``.
    x, y : array (N, *in_shape), array (N,) of integers
        The training set and its classes.
    loss : loss object
        Anything with ``value(out, y) -> float``, the mean over a batch (the paper's:
        ``nablax.losses.SoftmaxCrossEntropy()``, which ``nablax.train`` passes).
    batch_size, block_end, bn_stats, top_bn
        See the module docstring.
    include_output : bool
        Also cut after the output layer.

    Returns
    -------
    TaylorResult
        ``k``, ``error`` and ``loss`` per cut (arrays (n_cuts,)), and the original network's error and loss.
    """
    cuts = cut_positions(net, block_end, include_output)
    n = int(x.shape[0])
    wrong, total_loss = numpy.zeros(len(cuts) + 1), numpy.zeros(len(cuts) + 1)  # per cut, then the original net
    for rows in batch_slices(n, batch_size):
        xb, yb = x[rows], y[rows]
        outs = taylor_outputs(net, expansion_point, xb, cuts, bn_stats=bn_stats, top_bn=top_bn)
        for j, out in enumerate([outs[p] for p in cuts] + [net(xb, train=top_bn == "batch")]):
            wrong[j] += float((out.argmax(axis=1) != yb).sum())
            total_loss[j] += loss.value(out, yb) * len(yb)
    pos = net.positions()
    settings = {"block_end": block_end, "bn_stats": bn_stats, "top_bn": top_bn, "batch_size": batch_size,
                "r0_is_original": block_end == "linear_output"}
    return TaylorResult(numpy.array([pos[p].n_lin for p in cuts]), wrong[:-1] / n, total_loss[:-1] / n,
                        float(wrong[-1] / n), float(total_loss[-1] / n), settings)


__all__ = ["TaylorResult", "cut_positions", "taylor_outputs", "taylor_errors", "BLOCK_ENDS", "BN_STATS", "TOP_BN"]
