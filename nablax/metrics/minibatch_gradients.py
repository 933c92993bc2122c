"""Per-example gradients of a minibatch and how "white" they are (shattered-gradients spec §7).

For M examples with per-example gradient vectors g_m in R^D (rows of a matrix g, shape (M, D)):

    Gram image        G_mn = <g_m - gbar, g_n - gbar>  (gbar = mean_m g_m),  displayed as |G| / mean_m G_mm
    effective rank    erank(g) = exp(-sum_k p_k log p_k),  p_k = s_k / sum_k s_k,  s_k the singular values of the
                      centred (M, D) matrix (Roy & Vetterli 2007)
    relative erank    erank(g) / erank(an i.i.d. Gaussian matrix of the same shape, centred the same way):
                      about 1 for white noise (default); or erank / M
    norm ratio        ||(1/M) sum_m g_m||^2 / ((1/M) sum_m ||g_m||^2)  in [0, 1]: 1 for identical gradients,
                      about 1/M for independent zero-mean ones (spec §11 item 13)

Which gradient (spec §7 "Implementation", all Open, defaults are project choices):
    target  "first_layer_activations" (default): d l_m / d(output of the first weight layer), the first conv
            "input": d l_m / d x_m;   "first_layer_weights": the per-example d l_m / d(params of layer 1)
    loss    a loss object (``nablax.losses.SoftmaxCrossEntropy()`` in the paper's protocol: l_m = softmax
            cross-entropy with the true label; the caller passes it in);  "logit": l_m = o_m[class]
    bn      "hold" (default): batch norm in training mode with the batch statistics held constant, so each g_m
            depends on example m alone;  "through": g_m is row m of the gradient of sum_m l_m taken through the
            batch statistics (what a minibatch step sees), which couples the rows
"""

from __future__ import annotations

import functools
from typing import Any

import numpy

from ..backend import array_module
from ..layers.base import Mode
from ..network import Network
from . import check_choice
from .jacobian import bottom_position

GRAD_TARGETS = ("first_layer_activations", "input", "first_layer_weights")
BN_MODES = ("hold", "through")
GRAM_NORMS = ("mean_diag", "cosine")
ERANK_REFERENCES = ("gaussian", "M")


def per_example_gradients(net: Network, x: Any, labels: Any = None, *, loss: Any,
                          target: str = "first_layer_activations", logit_class: int = 0, bn: str = "hold"
                          ) -> numpy.ndarray:
    """The (M, D) matrix of per-example gradients g_m (see the module docstring), as a NumPy array.

    Parameters
    ----------
    x : array (M, *in_shape)
        The minibatch, on the network's backend.
    labels : array (M,) of integers, optional
        The true classes (needed with a loss object).
    loss : loss object or "logit"
        A loss with ``grad(out, labels)``, the gradient of the batch mean (row m is d l_m / d o_m / M), such as
        ``nablax.losses.SoftmaxCrossEntropy()``; or "logit" for l_m = o_m[logit_class].
    target, logit_class, bn
        See the module docstring.

    Returns
    -------
    g : numpy.ndarray (M, D)
        Row m is g_m, flattened.
    """
    check_choice("target", target, GRAD_TARGETS)
    if isinstance(loss, str) and loss != "logit":
        raise ValueError(f"loss must be a loss object or 'logit', got {loss!r}")
    check_choice("bn", bn, BN_MODES)
    tr = net.forward(x, train=True, hold_stats=(bn == "hold"))
    xp, out = tr.xp, tr.output
    m = out.shape[0]
    if isinstance(loss, str):  # "logit"
        dout = xp.zeros_like(out)
        dout[:, logit_class] = 1.0
    else:
        if labels is None:
            raise ValueError("a loss needs the labels")
        dout = m * loss.grad(out, xp.asarray(labels))  # d l_m / d o_m: cross-entropy's softmax(o_m) - onehot(y_m)
    first = bottom_position(net, "linear1")  # just after the first weight layer (the first conv or dense layer)
    g = tr.pullback(dout, src=0 if target == "input" else first)
    if target == "first_layer_weights":
        g = _per_example_param_grads(net.layers[first - 1], tr.values[first - 1], g)
    return net.backend.asnumpy(g.reshape(m, -1))


def _per_example_param_grads(layer: Any, x: Any, dy: Any) -> Any:
    """``layer``'s parameter gradients for each example alone, flattened and concatenated: (M, n_params)."""
    xp = array_module(x)
    if layer.couples_batch:
        raise ValueError("first_layer_weights needs a first weight layer that acts on each example alone")
    rows = []
    for i in range(x.shape[0]):
        _, cache = layer.forward(x[i:i + 1], Mode(train=False))
        grads = layer.param_grads(cache, dy[i:i + 1])
        rows.append(xp.concatenate([grads[k].reshape(-1) for k in sorted(grads)]))
    return xp.stack(rows)


def _centred(g: numpy.ndarray, centred: bool = True) -> numpy.ndarray:
    """g as float, less its mean row when ``centred``."""
    g = numpy.asarray(g, dtype=float)
    return g - g.mean(axis=0, keepdims=True) if centred else g


def gram_image(g: numpy.ndarray, *, centred: bool = True, normalise: str = "mean_diag") -> numpy.ndarray:
    """|G| / mean(diag G) (default) or |G_mn| / sqrt(G_mm G_nn) ("cosine"), G = the (centred) Gram matrix.

    Parameters
    ----------
    g : array (M, D)
        Per-example gradients (``per_example_gradients``).
    centred, normalise : bool, str
        Subtract the mean row first (default); "mean_diag" (default) or "cosine".

    Returns
    -------
    numpy.ndarray (M, M)
    """
    check_choice("normalise", normalise, GRAM_NORMS)
    g = _centred(g, centred)
    gram = g @ g.T
    diag = numpy.diag(gram).copy()
    if normalise == "mean_diag":
        return numpy.abs(gram) / diag.mean()
    s = numpy.sqrt(numpy.where(diag > 0, diag, 1.0))
    return numpy.abs(gram) / numpy.outer(s, s)


def singular_values(g: numpy.ndarray) -> numpy.ndarray:
    """The singular values (min(M, D),), descending, of an (M, D) matrix from the eigenvalues of the smaller Gram
    matrix (g g^T or g^T g): the same numbers as an SVD up to rounding (eigenvalues below rounding are clipped to 0),
    much faster when D >> M."""
    gram = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g
    return numpy.sqrt(numpy.clip(numpy.linalg.eigvalsh(gram), 0.0, None))[::-1]


def effective_rank(g: numpy.ndarray, *, centred: bool = True) -> float:
    """exp(entropy of the normalised singular values) of the (centred) matrix g.

    Parameters
    ----------
    g : array (M, D)
    centred : bool
        Subtract the mean row first (default).

    Returns
    -------
    float
        Between 1 and min(M, D).
    """
    s = singular_values(_centred(g, centred))
    p = s / s.sum()
    p = p[p > 0]
    return float(numpy.exp(-(p * numpy.log(p)).sum()))


@functools.lru_cache(maxsize=16)
def _gaussian_erank(shape: tuple[int, int], seed: int, centred: bool) -> float:
    return effective_rank(numpy.random.default_rng(seed).standard_normal(shape), centred=centred)


def relative_effective_rank(g: numpy.ndarray, *, reference: str = "gaussian", centred: bool = True,
                            seed: int = 0) -> float:
    """erank(g) / erank(i.i.d. N(0, 1) matrix of g's shape, centred alike) (about 1 for white noise), or erank / M.

    Parameters
    ----------
    g : array (M, D)
    reference, seed : str, int
        "gaussian" (default) or "M"; the seed of the Gaussian reference, one draw (its erank concentrates tightly
        around its mean).

    Returns
    -------
    float
    """
    check_choice("reference", reference, ERANK_REFERENCES)
    er = effective_rank(g, centred=centred)
    if reference == "M":
        return er / g.shape[0]
    return er / _gaussian_erank(tuple(numpy.shape(g)), int(seed), centred)


def gradient_norm_ratio(g: numpy.ndarray) -> float:
    """||mean_m g_m||^2 / mean_m ||g_m||^2 (uncentred).

    Parameters
    ----------
    g : array (M, D)

    Returns
    -------
    float
        In [0, 1].
    """
    g = numpy.asarray(g, dtype=float)
    mean = g.mean(axis=0)
    return float(mean @ mean / (g * g).sum(axis=1).mean())


def kmeans_order(g: numpy.ndarray, k: int = 10, seed: int = 0, *, centred: bool = True) -> numpy.ndarray:
    """A permutation (M,) of the rows of g (M, D): k-means (``k`` clusters, fixed ``seed``) on the (``centred``)
    rows, sorted by cluster label and, within a cluster, by distance to its centroid (spec §7 "Ordering")."""
    from sklearn.cluster import KMeans

    g = _centred(g, centred)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(g)
    dist = numpy.linalg.norm(g - km.cluster_centers_[km.labels_], axis=1)
    return numpy.lexsort((dist, km.labels_))
