"""Positions in the gradients-explode paper's numbering, and the x-coordinates its figures plot against.

The code numbers positions FORWARD (spec §1.2): position 0 is the network input x, position p >= 1 the output
of layer p (residual blocks count as one layer), P = len(network.layers) the network output, and the error
layer's scalar sits at P + 1. The paper numbers layers BACKWARD from the error layer f_0:

    paper layer  l = P + 1 - p          (f_0 = the error at p = P + 1, f_1 = the top layer at p = P,
                                         the input x at l = P + 1)
    paper GSC(k, l), k >= l   ==   code gsc(lo, hi) with lo = P + 1 - k <= hi = P + 1 - l

``paper_index`` is the one function that translates; the map is its own inverse.

x-coordinates (spec §1.3; ``Network.positions()`` holds them per position):
    n_lin(p)   linear layers among layers 1..p   (compositional depth; GSC panels plot gsc(p, output) at n_lin(p))
    n_act(p)   nonlinearity layers among 1..p    (the index j of the last nonlinearity reached)
Positions that share n_lin stack at the same x (after a linear layer, after its norm, after its nonlinearity),
which is the staircase of the paper's Fig. 1A batch-ReLU curve (Reconstruction).

Reference and bottom positions (spec §13, both Open):
    gsc.reference   "last_block" (default): output of the last block, i.e. after the last nonlinearity
                    "last_linear": output of the last linear layer;  "output": the network output
    gsc.bottom      "linear1" (default, the paper's f_L): output of linear layer 1;  "input": position 0
"""

from __future__ import annotations

import math
from typing import Any

import numpy

from ..network import Network, Position
from . import check_choice

SELECTIONS = ("all", "block_ends", "after_linear", "stream")
REFERENCES = ("last_block", "last_linear", "output")
BOTTOMS = ("linear1", "input")


def paper_index(p: int, n_layers: int) -> int:
    """Forward position p in 0..P + 1  <->  paper layer index l = P + 1 - p, with P = ``n_layers`` the network's
    top-level layer count; the map is its own inverse (p may be a paper index l)."""
    if not 0 <= p <= n_layers + 1:
        raise IndexError(f"position {p} is outside 0..{n_layers + 1} (P + 1 is the error layer)")
    return n_layers + 1 - p


def _grew(positions: list[Position], attr: str) -> list[int]:
    """Positions p >= 1 at which ``attr`` (n_lin or n_act) increased."""
    return [q.index for prev, q in zip(positions, positions[1:]) if getattr(q, attr) > getattr(prev, attr)]


def select_positions(network: Network, which: str = "all") -> list[int]:
    """Forward positions to plot (spec §1.3), ascending, always including the input (position 0):

    "all"           every position (default)
    "block_ends"    after each nonlinearity (MLP blocks; for ResNets the blocks, which contain them)
    "after_linear"  right after each layer that contains a linear layer
    "stream"        the residual stream: the input, each block's input and each block's output
                    (a network without residual blocks: every position)
    """
    check_choice("which", which, SELECTIONS)
    pos = network.positions()
    if which == "all":
        return [q.index for q in pos]
    if which == "block_ends":
        return [0] + _grew(pos, "n_act")
    if which == "after_linear":
        return [0] + _grew(pos, "n_lin")
    blocks = [q.index for q in pos if q.kind == "residual"]  # "stream"
    return sorted({0} | set(blocks) | {p - 1 for p in blocks}) if blocks else [q.index for q in pos]


def reference_position(network: Network, reference: str = "last_block") -> int:
    """The forward position GSCs are measured to in the random-initialisation figures (option ``gsc.reference``:
    one of ``REFERENCES``, module docstring)."""
    check_choice("reference", reference, REFERENCES)
    pos = network.positions()
    if reference == "output":
        return len(pos) - 1
    grew = _grew(pos, "n_act" if reference == "last_block" else "n_lin")
    if not grew:
        what = "nonlinearity" if reference == "last_block" else "linear layer"
        raise ValueError(f"{network.name or 'this network'} has no {what}")
    return grew[-1]


def bottom_position(network: Network, bottom: str = "linear1") -> int:
    """The forward position of the lower end of GSC(L, 0) (option ``gsc.bottom``): the output of linear layer 1
    (``"linear1"``, default) or the input (``"input"``, 0)."""
    check_choice("bottom", bottom, BOTTOMS)
    if bottom == "input":
        return 0
    grew = _grew(network.positions(), "n_lin")
    if not grew:
        raise ValueError("the network has no linear layer")
    return grew[0]


def x_coordinates(network: Network, positions: Any, axis: str = "n_lin") -> numpy.ndarray:
    """The x-coordinate of each of the n forward ``positions``, an int array (n,): ``axis`` "n_lin" (compositional
    depth, default), "n_act", or "paper" (the backward-counted index l = P + 1 - p)."""
    pos = network.positions()
    if axis == "paper":
        return numpy.array([paper_index(int(p), len(network.layers)) for p in positions])
    if axis not in ("n_lin", "n_act"):
        raise ValueError(f"axis must be 'n_lin', 'n_act' or 'paper', got {axis!r}")
    return numpy.array([getattr(pos[int(p)], axis) for p in positions])


def qm_norm(a: Any) -> float:
    """Quadratic-mean norm of an explicit matrix A (m, n) mapping R^n -> R^m (spec §2.1):

        ||A||_qm = sqrt( ||A||_F^2 / n )       n = the INPUT dimension (number of columns)

    A batch of per-sample Jacobians (B, m, n) counts as the block-diagonal batch map: ||.||_F^2 / (B n).

    Parameters
    ----------
    a : array (m, n) or (B, m, n)

    Returns
    -------
    float
    """
    if a.ndim == 2:
        return math.sqrt(float((a * a).sum()) / a.shape[1])
    if a.ndim == 3:
        return math.sqrt(float((a * a).sum()) / (a.shape[0] * a.shape[2]))
    raise ValueError(f"qm_norm takes a matrix (m, n) or per-sample Jacobians (B, m, n), got shape {a.shape}")
