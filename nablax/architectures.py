"""The papers' architectures, built by the papers' names: ``nablax.build("batch-ReLU", depth=50, width=100)``.

Gradients-explode MLPs (spec §8.1): ``depth`` blocks of ``Dense -> [norm] -> nonlinearity`` with
    ReLU, layer-ReLU, batch-ReLU, tanh, layer-tanh, batch-tanh, SeLU, layer-SeLU, batch-SeLU, and "SeLU wide"
    (SeLU at width 400 unless a width is given). Weights N(0, 2/fan_in) for ReLU nets, N(0, 1/fan_in) otherwise;
    zero biases; norms without affine parameters unless ``norm_affine=True``. ``out_dim`` adds an output Dense
    (the CIFAR nets: 50 blocks then 100 -> 10, 51 linear layers); without it the net ends after the last block.
Gradients-explode ResNets (spec §8.2): the same names with " (ResNet)", e.g. "batch-ReLU (ResNet)":
    Dense(in_dim -> width), then ``depth`` blocks  x <- x + W2 phi(N(W1 phi(N(x))))  (two linear layers each),
    then an optional head N -> phi (``head=True``) and an optional output Dense.
Shattered-gradients nets (spec §2.3, §6), scalar input by default (in_dim=1, out_dim=1, width 200):
    "one-layer"          f(x) = sum_k w_k relu(x - b_k), w ~ N(0, 1/N), b ~ N(0, 1) (``bias_std``; the spec's
                         sqrt(1/N) puts every kink in |x| < 0.25, see ONE_LAYER_BIAS_STD)
    "fnn-bn"             Dense -> BN -> ReLU, ``depth`` times (He weights, no biases), linear output N(0, 1/N)
    "fnn-no-bn-bias"     the same without BN, Glorot weights and biases N(0, 1/N) (the ablation)
    "fnn-no-bn"          without BN and without biases (positively homogeneous: two gradient values on the grid)
    "resnet-bn"          Dense -> BN, then depth-1 blocks  h <- h + beta W relu(BN(h)), linear output
    "resnet-no-bn"       Dense, then depth blocks  h <- h + beta W relu(h), linear output
    "crelu-ll"           looks-linear CReLU net: orthogonal Dense, then depth-1 x [CReLU -> LL Dense], CReLU, LL output
    "prelu-ll"           looks-linear PReLU net: depth x [orthogonal Dense -> PReLU(a=1)], orthogonal output
    "resnet-bn-2w"       option: depth-1 blocks with two weight layers  h <- h + beta W2 relu(BN(W1 relu(BN(h))))
    "resnet-bn-post"     option: post-activation, Dense -> BN -> relu, then depth-1 blocks  h <- relu(h + beta BN(W h))
    "highway"            scalar-gated blocks  h <- a h + b W relu(h), b = beta, a = sqrt(1 - beta^2) (no BN); the
                         highway corollary's gate t is beta^2 (t = 1/L: beta = sqrt(1/depth)); the skip is a Dense a*I
Convnets (spec §6.5, §7, §8), image input: ``CONV_NETS``, laid out in the convnet section below (``convnet()``).
``init`` for the gradients-explode nets: "gaussian" (default), "orthogonal" (orthogonal matrices with the same
gain), "looks_linear" (the orthogonal initial state of spec §7; ReLU nets only).
"""

from __future__ import annotations

import difflib
import functools
import math
from typing import Any, Callable

import numpy

from . import init as inits
from .backend import get_backend, resolve_dtype
from .layers import (BatchNorm, Conv2d, CReLU, Dense, GlobalAvgPool, LayerNorm, PReLU, ReLU, Residual, SeLU, Tanh,
                     Unflatten)
from .layers.base import Layer
from .network import Network

NONLINEARITIES: dict[str, Callable[[], Layer]] = {"ReLU": ReLU, "tanh": Tanh, "SeLU": SeLU}
NORMS = {"": None, "layer": "layer", "batch": "batch"}
GE_MLPS = [f"{n + '-' if n else ''}{a}" for n in NORMS for a in NONLINEARITIES] + ["SeLU wide"]
GE_RESNETS = [f"{n}-{a} (ResNet)" for n in ("layer", "batch") for a in NONLINEARITIES]
SG_NETS = ["one-layer", "fnn-bn", "fnn-no-bn-bias", "fnn-no-bn", "resnet-bn", "resnet-no-bn", "crelu-ll", "prelu-ll",
           "resnet-bn-2w", "resnet-bn-post", "highway"]
CONV_NETS = ["conv-fnn", "conv-resnet", "conv-crelu-ll", "conv-crelu-unmirrored", "conv-relu", "conv-resnet-staged"]
ARCHITECTURES = GE_MLPS + GE_RESNETS + SG_NETS + CONV_NETS
SELU_WIDE_WIDTH = 400
# the names that use build()'s beta (they have residual branches to scale) and bias_std (they draw random biases)
TAKES = {"beta": GE_RESNETS + ["resnet-bn", "resnet-no-bn", "resnet-bn-2w", "resnet-bn-post", "highway",
                               "conv-resnet", "conv-resnet-staged"],
         "bias_std": ["one-layer", "resnet-bn", "resnet-no-bn"]}


class _Builder:
    """Holds the random generator, the backend and the dtype while layers are made."""

    def __init__(self, seed: Any, backend: str, dtype: Any, eps: float, norm_affine: bool) -> None:
        self.rng = inits.as_rng(seed)
        self.be = get_backend(backend)
        self.dtype = resolve_dtype(dtype)
        self.eps, self.norm_affine = eps, norm_affine

    def array(self, a: numpy.ndarray) -> Any:
        return self.be.xp.asarray(a, dtype=self.dtype)

    def dense(self, w: numpy.ndarray, bias: bool | numpy.ndarray = True) -> Dense:
        """Dense(w) with zero biases (``bias=True``), none (False), or the biases given."""
        if bias is True:
            bias = numpy.zeros(w.shape[1])
        return Dense(self.array(w), None if bias is False else self.array(bias))

    def he(self, d_in: int, d_out: int, gain: float = 2.0) -> Dense:
        """Dense without biases, weights N(0, gain / d_in) (``init.gaussian``)."""
        return self.dense(inits.gaussian(d_in, d_out, self.rng, gain), bias=False)

    def norm(self, kind: str | None, dim: int) -> list[Layer]:
        """[the norm layer of ``kind``] ("batch" or "layer"), or [] for None."""
        if kind is None:
            return []
        if kind == "batch":
            return [BatchNorm.create(dim, affine=self.norm_affine, eps=self.eps, xp=self.be.xp, dtype=self.dtype)]
        g = self.array(numpy.ones(dim)) if self.norm_affine else None
        return [LayerNorm(g, None if g is None else self.array(numpy.zeros(dim)), eps=self.eps)]


def _parse_ge(name: str) -> tuple[str | None, str, bool]:
    """(norm kind, nonlinearity, is_resnet) for a gradients-explode name; any other name is unknown."""
    resnet = name.endswith(" (ResNet)")
    base = name[: -len(" (ResNet)")] if resnet else name
    if base == "SeLU wide":
        return None, "SeLU", resnet
    norm, _, act = base.rpartition("-")
    if norm not in NORMS or act not in NONLINEARITIES:
        raise unknown_architecture(name)
    return NORMS[norm], act, resnet


def unknown_architecture(name: str) -> ValueError:
    """The error for a name that is not an architecture, with up to three close spellings (case aside)."""
    lower = {a.lower(): a for a in ARCHITECTURES}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), lower, n=3, cutoff=0.6)]
    guess = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return ValueError(f"unknown architecture {name!r}{guess}; known: {', '.join(ARCHITECTURES)}")


def build(name: str, depth: int = 50, width: int | None = None, in_dim: int | None = None, out_dim: int | None = None,
          init: str = "gaussian", seed: int | numpy.random.Generator | None = 0, backend: str = "numpy",
          dtype: Any = "float64", *, beta: float = 1.0, bias_std: float | None = None, norm_affine: bool = False,
          eps: float = 1e-5, head: bool = False, orth_method: str = "qr") -> Network:
    """Build an architecture of either paper by its name (see the module docstring for every name and option)."""
    for what, n in (("depth", depth), ("width", width), ("in_dim", in_dim), ("out_dim", out_dim)):
        sizes = n if what == "in_dim" and isinstance(n, (tuple, list)) else [n]  # in_dim: an image shape too
        if n is not None and not all(isinstance(k, (int, numpy.integer)) and k >= 1 for k in sizes):
            raise ValueError(f"{what} must be a positive integer, got {n!r}")
    for what, v in (("beta", beta), ("bias_std", bias_std)):
        if v is not None and not numpy.isfinite(v):
            raise ValueError(f"{what} must be a finite number, got {v!r}")
    if init not in inits.INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; choose one of {inits.INIT_SCHEMES}")
    if name in CONV_NETS:  # image input: see the convnet section below
        return _build_convnet(name, depth, width, in_dim, out_dim, init, seed, backend, dtype, beta, eps, norm_affine,
                              orth_method)
    b = _Builder(seed, backend, dtype, eps, norm_affine)
    meta = {"arch": name, "depth": int(depth), "init": init, "seed": seed if isinstance(seed, int) else None,
            "beta": beta, "norm_affine": norm_affine, "eps": eps}
    if name in SG_NETS:
        width = 200 if width is None else width
        in_dim = 1 if in_dim is None else in_dim
        out_dim = 1 if out_dim is None else out_dim
        layers = _SG_BUILDERS[name](b, depth, width, in_dim, out_dim, beta, bias_std, orth_method)
    else:
        norm, act, resnet = _parse_ge(name)
        width = (SELU_WIDE_WIDTH if name.startswith("SeLU wide") else 100) if width is None else width
        in_dim = width if in_dim is None else in_dim
        if init == "looks_linear" and act != "ReLU":
            raise ValueError(f"init='looks_linear' (the orthogonal initial state) exists for ReLU nets only, not {name!r}")
        if resnet:
            layers = _ge_resnet(b, norm, act, depth, width, in_dim, out_dim, init, head, orth_method, beta)
        else:
            layers = _ge_mlp(b, norm, act, depth, width, in_dim, out_dim, init, orth_method)
    meta.update(width=width, in_dim=in_dim, out_dim=out_dim)
    return Network(layers, (in_dim,), name=name, meta=meta)


def _ge_weight(b: _Builder, d_in: int, d_out: int, act: str, init: str, method: str) -> numpy.ndarray:
    gain = 2.0 if act == "ReLU" else 1.0
    if init == "orthogonal":
        return inits.orthogonal(d_in, d_out, b.rng, gain, method)
    return inits.gaussian(d_in, d_out, b.rng, gain)


def _ge_mlp(b: _Builder, norm: str | None, act: str, depth: int, width: int, in_dim: int, out_dim: int | None,
            init: str, method: str) -> list[Layer]:
    if init == "looks_linear":
        weights = inits.orthogonal_state(in_dim, width, depth, out_dim, b.rng, method)
    else:
        weights = [_ge_weight(b, d, width, act, init, method) for d in [in_dim] + [width] * (depth - 1)]
        if out_dim is not None:
            weights.append(_ge_weight(b, width, out_dim, "linear", init, method))
    layers: list[Layer] = []
    for w in weights[:depth]:
        layers += [b.dense(w), *b.norm(norm, width), NONLINEARITIES[act]()]
    if out_dim is not None:
        layers.append(b.dense(weights[depth]))
    return layers


def _ge_resnet(b: _Builder, norm: str | None, act: str, depth: int, width: int, in_dim: int, out_dim: int | None,
               init: str, head: bool, method: str, beta: float = 1.0) -> list[Layer]:
    if init == "looks_linear":
        raise ValueError("init='looks_linear' is defined for plain ReLU MLPs; ResNets start near-orthogonal already")
    # the input layer is initialised as the MLPs' layers are (spec §8.2): 2/fan_in for ReLU nets, 1/fan_in otherwise
    layers: list[Layer] = [b.dense(_ge_weight(b, in_dim, width, act, init, method))]
    for _ in range(depth):
        branch: list[Layer] = []
        for _ in range(2):
            w = _ge_weight(b, width, width, act, init, method)
            branch += [*b.norm(norm, width), NONLINEARITIES[act](), b.dense(w)]
        layers.append(Residual(branch, beta=beta))
    if head:
        layers += [*b.norm(norm, width), NONLINEARITIES[act]()]
    if out_dim is not None:
        layers.append(b.dense(_ge_weight(b, width, out_dim, "linear", init, method)))
    return layers


# --- shattered-gradients nets ----------------------------------------------------------------------------


# The one-layer net's bias std (spec §2.3(a), Open). The spec's reconstruction, sqrt(1/N) (0.07 for N = 200), puts
# nearly every kink in |x| < 0.25, so df/dx is a flat step function on most of [-2, 2]. With std 1 the kinks spread
# over the grid and df/dx is the brown noise of the paper's Fig. 1a: over 20 seeds the mean lag-k ACF (k = 1..64)
# differs from brown noise's by 0.011 on average, against 0.167 for sqrt(1/N) (paper_figures/shattered_gradients/
# fig1.py measures this on every run and records it).
ONE_LAYER_BIAS_STD = 1.0


def _sg_one_layer(b, depth, width, in_dim, out_dim, beta, bias_std, method):
    bias_std = ONE_LAYER_BIAS_STD if bias_std is None else bias_std
    v = numpy.ones((in_dim, width))
    kinks = b.rng.standard_normal(width) * bias_std
    return [b.dense(v, -kinks), ReLU(), b.he(width, out_dim, 1.0)]


def _sg_fnn(b, depth, width, in_dim, out_dim, beta, bias_std, method, *, bn: bool, bias: bool):
    layers: list[Layer] = []
    for d in [in_dim] + [width] * (depth - 1):
        if bias:  # the no-BN ablation: Glorot weights, biases N(0, 1/N)
            w = b.rng.standard_normal((d, width)) * numpy.sqrt(2.0 / (d + width))
            layers.append(b.dense(w, b.rng.standard_normal(width) * numpy.sqrt(1.0 / width)))
        else:
            layers.append(b.he(d, width))
        layers += [*b.norm("batch" if bn else None, width), ReLU()]
    layers.append(b.he(width, out_dim, 1.0))
    return layers


def _sg_resnet(b, depth, width, in_dim, out_dim, beta, bias_std, method, *, bn: bool):
    norm = "batch" if bn else None
    layers: list[Layer] = [b.he(in_dim, width, 2.0 if bn else 1.0), *b.norm(norm, width)]
    for _ in range(depth - 1 if bn else depth):
        bias = False if bias_std is None else b.rng.standard_normal(width) * bias_std
        w = b.dense(inits.gaussian(width, width, b.rng, 2.0), bias=bias)
        layers.append(Residual([*b.norm(norm, width), ReLU(), w], beta=beta))
    layers.append(b.he(width, out_dim, 1.0))
    return layers


def _sg_resnet_variant(b, depth, width, in_dim, out_dim, beta, bias_std, method, *, two_weights: bool, post: bool):
    """Options of spec §2.3(c): two weight layers per block, or post-activation blocks (both with BN, He weights)."""
    layers: list[Layer] = [b.he(in_dim, width), *b.norm("batch", width)] + ([ReLU()] if post else [])
    for _ in range(depth - 1):
        if post:
            layers += [Residual([b.he(width, width), *b.norm("batch", width)], beta=beta), ReLU()]
            continue
        branch = []
        for _ in range(2 if two_weights else 1):
            branch += [*b.norm("batch", width), ReLU(), b.he(width, width)]
        layers.append(Residual(branch, beta=beta))
    layers.append(b.he(width, out_dim, 1.0))
    return layers


def _sg_highway(b, depth, width, in_dim, out_dim, beta, bias_std, method):
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"highway gate beta = b must lie in [0, 1] (a = sqrt(1 - b^2)), got {beta}")
    gate = numpy.sqrt(1.0 - beta * beta) * numpy.eye(width)
    layers: list[Layer] = [b.he(in_dim, width, 1.0)]
    for _ in range(depth):
        layers.append(Residual([ReLU(), b.he(width, width)], skip=b.dense(gate, bias=False), beta=beta))
    layers.append(b.he(width, out_dim, 1.0))
    return layers


def _sg_crelu_ll(b, depth, width, in_dim, out_dim, beta, bias_std, method):
    layers: list[Layer] = [b.dense(inits.orthogonal(in_dim, width, b.rng, 1.0, method))]
    for _ in range(depth - 1):
        layers += [CReLU(), b.dense(inits.looks_linear(inits.orthogonal(width, width, b.rng, 1.0, method)))]
    layers += [CReLU(), b.dense(inits.looks_linear(inits.orthogonal(width, out_dim, b.rng, 1.0, method)))]
    return layers


def _sg_prelu_ll(b, depth, width, in_dim, out_dim, beta, bias_std, method):
    layers: list[Layer] = []
    for d in [in_dim] + [width] * (depth - 1):
        layers += [b.dense(inits.orthogonal(d, width, b.rng, 1.0, method)), PReLU(b.array(numpy.ones(width)))]
    layers.append(b.dense(inits.orthogonal(width, out_dim, b.rng, 1.0, method)))
    return layers


# each takes (builder, depth, width, in_dim, out_dim, beta, bias_std, orth_method)
_SG_BUILDERS: dict[str, Callable[..., list[Layer]]] = {
    "one-layer": _sg_one_layer,
    "fnn-bn": functools.partial(_sg_fnn, bn=True, bias=False),
    "fnn-no-bn-bias": functools.partial(_sg_fnn, bn=False, bias=True),
    "fnn-no-bn": functools.partial(_sg_fnn, bn=False, bias=False),
    "resnet-bn": functools.partial(_sg_resnet, bn=True),
    "resnet-no-bn": functools.partial(_sg_resnet, bn=False),
    "crelu-ll": _sg_crelu_ll,
    "prelu-ll": _sg_prelu_ll,
    "resnet-bn-2w": functools.partial(_sg_resnet_variant, two_weights=True, post=False),
    "resnet-bn-post": functools.partial(_sg_resnet_variant, two_weights=False, post=True),
    "highway": _sg_highway,
}


# === convnets (shattered-gradients spec §6.5, §7, §8) =====================================================
#
# Names (image input (C, H, W), default (3, 32, 32), or flat: ``_build_convnet``; ``out_dim`` = classes, default 10):
#   §7, one stage of constant width (default 64), 3x3 convs, stride 1, "same" padding:
#     "conv-fnn"               [conv -> BN -> ReLU] x (depth - 1), global average pool, Dense
#     "conv-resnet"            stem conv, (depth - 2) / 2 pre-activation blocks
#                              x <- x + beta conv(relu(BN(conv(relu(BN(x)))))), then BN -> ReLU -> pool -> Dense
#   §8, three stages of widths C, 2C, 4C (default C = 16), stride-2 3x3 conv at each stage change:
#     "conv-crelu-ll"          [conv -> BN -> CReLU] with looks-linear kernels [K, -K] on orthogonal base kernels,
#                              and a looks-linear Dense head: exactly affine at initialisation (linear without BN)
#     "conv-crelu-unmirrored"  the same with the two kernel halves drawn independently (no mirroring)
#     "conv-relu"              plain [conv -> BN -> ReLU] with He kernels
#     "conv-resnet-staged"     the resnet above in three stages (1x1 stride-2 projection skips at stage changes)
# Depth counts weight layers as He et al. (2016) do: the convs of the main path plus the linear head (so "2" is
# one conv and a Dense, and the §8 depths 14, 26, 50, 98, 198 are 6n + 2 with n blocks per stage); projection
# skips are not counted. This counting and every layout detail are project choices (spec §7 "Open").
# The paper's convnet resnets use beta = 0.1: pass it (build's default beta is 1).

_CONV_KINDS = {"conv-fnn": ("relu", 1), "conv-resnet": ("resnet", 1), "conv-crelu-ll": ("crelu-ll", 3),
               "conv-crelu-unmirrored": ("crelu-unmirrored", 3), "conv-relu": ("relu", 3),
               "conv-resnet-staged": ("resnet", 3)}
CONV_ORTH = ("flat", "delta")


def _conv_kernel(b: _Builder, c_out: int, c_in: int, k: int, scheme: str, conv_orth: str, gain: float,
                 method: str) -> numpy.ndarray:
    """(c_out, c_in, k, k): He Gaussian N(0, gain / (c_in k^2)), or orthogonal (flattened or delta, spec §6.5)."""
    if scheme == "he":
        return inits.gaussian(c_in * k * k, c_out, b.rng, gain).T.reshape(c_out, c_in, k, k)
    if conv_orth == "delta":
        return inits.delta_orthogonal(c_out, c_in, k, b.rng, gain, method)
    return inits.flat_orthogonal(c_out, c_in, k, b.rng, gain, method)


def _stage_plan(n: int, stages: int, c: int) -> list[tuple[int, int, int]]:
    """(c_in, c_out, stride) of n units spread evenly over ``stages`` stages that start at width c; the first unit
    of each later stage doubles the width with stride 2."""
    plan = []
    for s in range(stages):
        for j in range(n // stages + (s < n % stages)):
            down = s > 0 and j == 0
            c_out = 2 * c if down else c
            plan.append((c, c_out, 2 if down else 1))
            c = c_out
    return plan


def convnet(name: str, depth: int, width: int | None = None, in_shape: tuple[int, int, int] | None = None,
            n_classes: int = 10, *, beta: float = 1.0, stages: int | None = None, kernel_init: str = "he",
            conv_orth: str = "flat", bn: bool = True, kernel_size: int = 3, seed: Any = 0, backend: str = "numpy",
            dtype: Any = "float64", eps: float = 1e-5, norm_affine: bool = False, orth_method: str = "qr") -> Network:
    """A convnet of ``CONV_NETS`` (layouts above) with every option exposed.

    kernel_init  "he" (default, spec §7) or "orthogonal" for the ReLU nets and resnets (gain 2); the CReLU nets
                 always use orthogonal base kernels (gain 1)
    conv_orth    orthogonal kernel construction: "flat" (default, spec §6.5 (i)) or "delta" (§6.5 (ii), a modern
                 choice, Xiao et al. 2018)
    stages       1 (constant width, §7 default) or 3 (§8 default); widths double and stride 2 at each change
    bn           False drops every batch norm (for the exact-linearity checks of looks-linear nets)
    """
    if name not in _CONV_KINDS:
        raise ValueError(f"unknown convnet {name!r}; known: {', '.join(CONV_NETS)}")
    kind, default_stages = _CONV_KINDS[name]
    stages = default_stages if stages is None else int(stages)
    width = (64 if default_stages == 1 else 16) if width is None else int(width)
    in_shape = (3, 32, 32) if in_shape is None else tuple(int(s) for s in in_shape)
    if kernel_init not in ("he", "orthogonal"):
        raise ValueError(f"kernel_init must be 'he' or 'orthogonal', got {kernel_init!r}")
    if conv_orth not in CONV_ORTH:
        raise ValueError(f"conv_orth must be one of {CONV_ORTH}, got {conv_orth!r}")
    if not isinstance(depth, (int, numpy.integer)) or depth < 2:
        raise ValueError(f"a convnet needs depth >= 2 (a conv and the linear head), got {depth!r}")
    if kind == "resnet" and depth % 2:
        raise ValueError(f"resnet depth counts the stem, two convs per block and the head: it is even, got {depth}")
    b = _Builder(seed, backend, dtype, eps, norm_affine)
    k = int(kernel_size)
    scheme = "orthogonal" if kind.startswith("crelu") else kernel_init
    gain = 1.0 if kind.startswith("crelu") else 2.0  # orthogonal gain: 1 for the (linear) LL nets, 2 for ReLU nets

    def conv(c_out: int, c_in: int, stride: int = 1, size: int = k, on_crelu: bool = False) -> Conv2d:
        """A conv without bias; ``on_crelu``: its input is CReLU output (2 c_in channels, mirrored in crelu-ll)."""
        drawn = [_conv_kernel(b, c_out, c_in, size, scheme, conv_orth, gain, orth_method)  # unmirrored: two halves
                 for _ in range(2 if on_crelu and kind == "crelu-unmirrored" else 1)]
        kernel = numpy.concatenate(drawn, axis=1)
        if on_crelu and kind == "crelu-ll":
            kernel = inits.looks_linear_kernel(kernel)
        return Conv2d(b.array(kernel), None, stride, size // 2)

    def norm(c: int) -> list[Layer]:
        return [BatchNorm.create(c, conv=True, affine=norm_affine, eps=eps, xp=b.be.xp, dtype=b.dtype)] if bn else []

    crelu = kind.startswith("crelu")
    act = (lambda: CReLU(axis=-3)) if crelu else ReLU
    layers: list[Layer] = [conv(width, in_shape[0])]
    c = width
    if kind == "resnet":
        for c_in, c, stride in _stage_plan((depth - 2) // 2, stages, width):
            branch = norm(c_in) + [ReLU(), conv(c, c_in, stride)] + norm(c) + [ReLU(), conv(c, c)]
            layers.append(Residual(branch, skip=conv(c, c_in, 2, size=1) if stride == 2 else None, beta=beta))
        layers += norm(c) + [ReLU()]
    else:
        layers += norm(c) + [act()]
        for c_in, c, stride in _stage_plan(depth - 2, stages, width):
            layers += [conv(c, c_in, stride, on_crelu=crelu)] + norm(c) + [act()]
    layers.append(GlobalAvgPool())
    if kind == "crelu-ll":
        w = inits.looks_linear(inits.orthogonal(c, n_classes, b.rng, 1.0, orth_method))
    elif kind == "crelu-unmirrored":
        w = inits.orthogonal(2 * c, n_classes, b.rng, 1.0, orth_method)
    else:
        w = inits.gaussian(c, n_classes, b.rng, 1.0)
    layers.append(b.dense(w, bias=False))
    meta = {"arch": name, "depth": int(depth), "width": width, "in_shape": list(in_shape), "out_dim": n_classes,
            "beta": beta, "stages": stages, "kernel_init": scheme, "conv_orth": conv_orth, "bn": bn,
            "kernel_size": k, "seed": seed if isinstance(seed, int) else None, "norm_affine": norm_affine, "eps": eps}
    return Network(layers, in_shape, name=name, meta=meta)


def image_shape(d: int) -> tuple[int, int, int]:
    """The image shape of a flattened input of d features: (3, n, n) when d = 3 n^2, else (1, n, n) when d = n^2
    (the two cannot both hold). CIFAR-10's 3072 -> (3, 32, 32); digits' 64 -> (1, 8, 8)."""
    for c in (3, 1):
        n = int(round(math.sqrt(d / c)))
        if c * n * n == d:
            return (c, n, n)
    raise ValueError(f"{d} features are neither 3 n^2 nor n^2: pass the image shape (C, H, W) as in_dim")


def _build_convnet(name: str, depth: int, width: int | None, in_dim: Any, out_dim: int | None, init: str, seed: Any,
                   backend: str, dtype: Any, beta: float, eps: float, norm_affine: bool, orth_method: str) -> Network:
    """``build()`` for the conv names. ``in_dim`` is the image shape (C, H, W), or a number of features d, and then
    the net takes flattened images (B, d) and starts with an Unflatten to ``image_shape(d)`` (this is how the
    training loop, whose data sets are flat, builds convnets). ``init``: "gaussian" (the name's own scheme),
    "orthogonal" (orthogonal kernels for the ReLU nets) or "looks_linear" (conv-crelu-ll only)."""
    if init == "looks_linear" and name != "conv-crelu-ll":
        raise ValueError(f"init='looks_linear' for convnets is the name 'conv-crelu-ll', not {name!r}")
    flat = isinstance(in_dim, (int, numpy.integer))
    shape = image_shape(int(in_dim)) if flat else in_dim
    if shape is not None and len(shape) != 3:
        raise ValueError(f"convnets take in_dim = the image shape (C, H, W) or a number of features, got {in_dim!r}")
    net = convnet(name, depth, width, shape, 10 if out_dim is None else out_dim, beta=beta,
                  kernel_init="orthogonal" if init == "orthogonal" else "he", seed=seed, backend=backend,
                  dtype=dtype, eps=eps, norm_affine=norm_affine, orth_method=orth_method)
    if not flat:
        return net
    return Network([Unflatten(net.in_shape)] + net.layers, (int(in_dim),), name=net.name,
                   meta={**net.meta, "in_dim": int(in_dim)})


__all__ = ["build", "convnet", "image_shape", "ARCHITECTURES", "GE_MLPS", "GE_RESNETS", "SG_NETS", "CONV_NETS", "TAKES"]
