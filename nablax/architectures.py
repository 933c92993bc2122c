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
    "one-layer"          f(x) = sum_k w_k relu(x - b_k), w, b ~ N(0, 1/N) (``bias_std`` overrides b's std)
    "fnn-bn"             Dense -> BN -> ReLU, ``depth`` times (He weights, no biases), linear output N(0, 1/N)
    "fnn-no-bn-bias"     the same without BN, Glorot weights and biases N(0, 1/N) (the ablation)
    "fnn-no-bn"          without BN and without biases (positively homogeneous: two gradient values on the grid)
    "resnet-bn"          Dense -> BN, then depth-1 blocks  h <- h + beta W relu(BN(h)), linear output
    "resnet-no-bn"       Dense, then depth blocks  h <- h + beta W relu(h), linear output
    "crelu-ll"           looks-linear CReLU net: orthogonal Dense, then depth-1 x [CReLU -> LL Dense], CReLU, LL output
    "prelu-ll"           looks-linear PReLU net: depth x [orthogonal Dense -> PReLU(a=1)], orthogonal output
``init`` for the gradients-explode nets: "gaussian" (default), "orthogonal" (orthogonal matrices with the same
gain), "looks_linear" (the orthogonal initial state of spec §7; ReLU nets only).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy

from . import init as inits
from .backend import get_backend, resolve_dtype
from .layers import BatchNorm, CReLU, Dense, LayerNorm, PReLU, ReLU, Residual, SeLU, Tanh
from .layers.base import Layer
from .network import Network

NONLINEARITIES: dict[str, Callable[[], Layer]] = {"ReLU": ReLU, "tanh": Tanh, "SeLU": SeLU}
NORMS = {"": None, "layer": "layer", "batch": "batch"}
GE_MLPS = [f"{n + '-' if n else ''}{a}" for n in NORMS for a in NONLINEARITIES] + ["SeLU wide"]
GE_RESNETS = [f"{n}-{a} (ResNet)" for n in ("layer", "batch") for a in NONLINEARITIES]
SG_NETS = ["one-layer", "fnn-bn", "fnn-no-bn-bias", "fnn-no-bn", "resnet-bn", "resnet-no-bn", "crelu-ll", "prelu-ll"]
ARCHITECTURES = GE_MLPS + GE_RESNETS + SG_NETS
SELU_WIDE_WIDTH = 400


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
        if isinstance(bias, numpy.ndarray):
            b = self.array(bias)
        else:
            b = self.array(numpy.zeros(w.shape[1])) if bias else None
        return Dense(self.array(w), b)

    def norm(self, kind: str | None, dim: int) -> Layer | None:
        if kind is None:
            return None
        if kind == "batch":
            return BatchNorm.create(dim, affine=self.norm_affine, eps=self.eps, xp=self.be.xp, dtype=self.dtype)
        g = self.array(numpy.ones(dim)) if self.norm_affine else None
        return LayerNorm(g, None if g is None else self.array(numpy.zeros(dim)), eps=self.eps)


def _parse_ge(name: str) -> tuple[str | None, str, bool]:
    """(norm kind, nonlinearity, is_resnet) for a gradients-explode name."""
    resnet = name.endswith(" (ResNet)")
    base = name[: -len(" (ResNet)")] if resnet else name
    if base == "SeLU wide":
        return None, "SeLU", resnet
    norm, _, act = base.rpartition("-")
    if norm not in NORMS or act not in NONLINEARITIES:
        raise KeyError(name)
    return NORMS[norm], act, resnet


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")


def build(name: str, depth: int = 50, width: int | None = None, in_dim: int | None = None, out_dim: int | None = None,
          init: str = "gaussian", seed: int | numpy.random.Generator | None = 0, backend: str = "numpy",
          dtype: Any = "float64", *, beta: float = 1.0, bias_std: float | None = None, norm_affine: bool = False,
          eps: float = 1e-5, head: bool = False, orth_method: str = "qr") -> Network:
    """Build an architecture of either paper by its name (see the module docstring for every name and option)."""
    if not isinstance(depth, (int, numpy.integer)) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if init not in inits.INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; choose one of {inits.INIT_SCHEMES}")
    b = _Builder(seed, backend, dtype, eps, norm_affine)
    meta = {"arch": name, "depth": int(depth), "init": init, "seed": seed if isinstance(seed, int) else None,
            "beta": beta, "norm_affine": norm_affine, "eps": eps}
    if name in SG_NETS:
        width = 200 if width is None else width
        in_dim = 1 if in_dim is None else in_dim
        out_dim = 1 if out_dim is None else out_dim
        layers = _SG_BUILDERS[name](b, depth, width, in_dim, out_dim, beta, bias_std, orth_method)
    else:
        try:
            norm, act, resnet = _parse_ge(name)
        except KeyError:
            raise _unknown(name) from None
        width = (SELU_WIDE_WIDTH if name.startswith("SeLU wide") else 100) if width is None else width
        in_dim = width if in_dim is None else in_dim
        if init == "looks_linear" and act != "ReLU":
            raise ValueError(f"init='looks_linear' (the orthogonal initial state) exists for ReLU nets only, not {name!r}")
        if resnet:
            layers = _ge_resnet(b, norm, act, depth, width, in_dim, out_dim, init, head, orth_method)
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
        dims = [in_dim] + [width] * depth
        weights = [_ge_weight(b, dims[i], dims[i + 1], act, init, method) for i in range(depth)]
        if out_dim is not None:
            weights.append(_ge_weight(b, width, out_dim, "linear", init, method))
    layers: list[Layer] = []
    for w in weights[:depth]:
        layers.append(b.dense(w))
        n = b.norm(norm, width)
        if n is not None:
            layers.append(n)
        layers.append(NONLINEARITIES[act]())
    if out_dim is not None:
        layers.append(b.dense(weights[depth]))
    return layers


def _ge_resnet(b: _Builder, norm: str | None, act: str, depth: int, width: int, in_dim: int, out_dim: int | None,
               init: str, head: bool, method: str) -> list[Layer]:
    if init == "looks_linear":
        raise ValueError("init='looks_linear' is defined for plain ReLU MLPs; ResNets start near-orthogonal already")
    layers: list[Layer] = [b.dense(_ge_weight(b, in_dim, width, "linear", init, method))]
    for _ in range(depth):
        branch: list[Layer] = []
        for _ in range(2):
            n = b.norm(norm, width)
            branch += ([n] if n is not None else []) + [NONLINEARITIES[act]()]
            branch.append(b.dense(_ge_weight(b, width, width, act, init, method)))
        layers.append(Residual(branch))
    if head:
        n = b.norm(norm, width)
        layers += ([n] if n is not None else []) + [NONLINEARITIES[act]()]
    if out_dim is not None:
        layers.append(b.dense(_ge_weight(b, width, out_dim, "linear", init, method)))
    return layers


# --- shattered-gradients nets ----------------------------------------------------------------------------


def _sg_one_layer(b, depth, width, in_dim, out_dim, beta, bias_std, method):
    bias_std = numpy.sqrt(1.0 / width) if bias_std is None else bias_std
    v = numpy.ones((in_dim, width))
    kinks = b.rng.standard_normal(width) * bias_std
    w = b.rng.standard_normal((width, out_dim)) * numpy.sqrt(1.0 / width)
    return [b.dense(v, -kinks), ReLU(), b.dense(w, bias=False)]


def _sg_fnn(b, depth, width, in_dim, out_dim, bn: bool, bias: bool):
    layers: list[Layer] = []
    d = in_dim
    for _ in range(depth):
        if bias:  # the no-BN ablation: Glorot weights, biases N(0, 1/N)
            w = b.rng.standard_normal((d, width)) * numpy.sqrt(2.0 / (d + width))
            layers.append(b.dense(w, b.rng.standard_normal(width) * numpy.sqrt(1.0 / width)))
        else:
            layers.append(b.dense(inits.gaussian(d, width, b.rng, 2.0), bias=False))
        if bn:
            layers.append(b.norm("batch", width))
        layers.append(ReLU())
        d = width
    layers.append(b.dense(inits.gaussian(width, out_dim, b.rng, 1.0), bias=False))
    return layers


def _sg_resnet(b, depth, width, in_dim, out_dim, beta, bn: bool, bias_std):
    layers: list[Layer] = [b.dense(inits.gaussian(in_dim, width, b.rng, 2.0 if bn else 1.0), bias=False)]
    if bn:
        layers.append(b.norm("batch", width))
    n_blocks = depth - 1 if bn else depth
    for _ in range(n_blocks):
        bias = False if bias_std is None else b.rng.standard_normal(width) * bias_std
        w = b.dense(inits.gaussian(width, width, b.rng, 2.0), bias=bias)
        branch = ([b.norm("batch", width)] if bn else []) + [ReLU(), w]
        layers.append(Residual(branch, beta=beta))
    layers.append(b.dense(inits.gaussian(width, out_dim, b.rng, 1.0), bias=False))
    return layers


def _sg_crelu_ll(b, depth, width, in_dim, out_dim, beta, bias_std, method):
    layers: list[Layer] = [b.dense(inits.orthogonal(in_dim, width, b.rng, 1.0, method))]
    for _ in range(depth - 1):
        layers += [CReLU(), b.dense(inits.looks_linear(inits.orthogonal(width, width, b.rng, 1.0, method)))]
    layers += [CReLU(), b.dense(inits.looks_linear(inits.orthogonal(width, out_dim, b.rng, 1.0, method)))]
    return layers


def _sg_prelu_ll(b, depth, width, in_dim, out_dim, beta, bias_std, method):
    layers: list[Layer] = []
    d = in_dim
    for _ in range(depth):
        layers += [b.dense(inits.orthogonal(d, width, b.rng, 1.0, method)), PReLU(b.array(numpy.ones(width)))]
        d = width
    layers.append(b.dense(inits.orthogonal(width, out_dim, b.rng, 1.0, method)))
    return layers


_SG_BUILDERS: dict[str, Callable[..., list[Layer]]] = {
    "one-layer": _sg_one_layer,
    "fnn-bn": lambda b, L, w, i, o, beta, bs, m: _sg_fnn(b, L, w, i, o, bn=True, bias=False),
    "fnn-no-bn-bias": lambda b, L, w, i, o, beta, bs, m: _sg_fnn(b, L, w, i, o, bn=False, bias=True),
    "fnn-no-bn": lambda b, L, w, i, o, beta, bs, m: _sg_fnn(b, L, w, i, o, bn=False, bias=False),
    "resnet-bn": lambda b, L, w, i, o, beta, bs, m: _sg_resnet(b, L, w, i, o, beta, bn=True, bias_std=bs),
    "resnet-no-bn": lambda b, L, w, i, o, beta, bs, m: _sg_resnet(b, L, w, i, o, beta, bn=False, bias_std=bs),
    "crelu-ll": _sg_crelu_ll,
    "prelu-ll": _sg_prelu_ll,
}

__all__ = ["build", "ARCHITECTURES", "GE_MLPS", "GE_RESNETS", "SG_NETS"]
