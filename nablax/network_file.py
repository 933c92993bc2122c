"""The ``.npz`` network file: ``Network.save`` and ``Network.load`` (no pickles; ``describe_file_format``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy

from .backend import Backend, get_backend
from .layers.base import LAYER_KINDS, Layer
from .layers.residual import Residual

FILE_FORMAT = "nablax-network"
FILE_VERSION = 1


class NetworkFileError(ValueError):
    """A ``.npz`` file that is not a valid nablax network file."""


def save(net: Any, path: str | Path) -> Path:
    """``Network.save``."""
    path = Path(path)
    arrays: dict[str, numpy.ndarray] = {}
    specs = [_layer_spec(layer, f"layers.{i}", arrays, net.backend) for i, layer in enumerate(net.layers)]
    header = {"name": net.name, "in_shape": list(net.in_shape), "dtype": str(net.dtype),
              "meta": net.meta, "layers": specs}
    with open(path, "wb") as fh:
        numpy.savez(fh, **arrays, __format__=numpy.array(FILE_FORMAT), __version__=numpy.array(FILE_VERSION),
                    __network__=numpy.array(json.dumps(header)))
    return path


def load(cls: type, path: str | Path, backend: str = "numpy") -> Any:
    """``Network.load``: the network of class ``cls`` in the file at ``path``."""
    be = get_backend(backend)
    path = Path(path)
    try:
        npz = numpy.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise NetworkFileError(f"{path}: not a readable .npz file ({err})") from err
    with npz:
        keys = set(npz.files)
        for k in ("__format__", "__version__", "__network__"):
            if k not in keys:
                raise NetworkFileError(f"{path}: not a nablax network file (missing {k!r})")
        try:
            fmt, version = str(npz["__format__"]), int(npz["__version__"])
            header = json.loads(str(npz["__network__"]))
        except Exception as err:
            raise NetworkFileError(f"{path}: corrupt header ({err})") from err
        if fmt != FILE_FORMAT:
            raise NetworkFileError(f"{path}: format {fmt!r} is not {FILE_FORMAT!r}")
        if version != FILE_VERSION:
            raise NetworkFileError(f"{path}: format version {version} is not supported (this nablax reads {FILE_VERSION})")
        try:
            arrays = {k: npz[k] for k in keys if not k.startswith("__")}
        except Exception as err:
            raise NetworkFileError(f"{path}: corrupt array data ({err})") from err
    try:
        dtype = numpy.dtype(header["dtype"])
        used: set[str] = set()
        layers = [_layer_from_spec(spec, f"layers.{i}", arrays, used, dtype, be)
                  for i, spec in enumerate(header["layers"])]
        extra = set(arrays) - used
        if extra:
            raise NetworkFileError(f"arrays not described by the header: {sorted(extra)[:5]}")
        net = cls(layers, tuple(header["in_shape"]), name=header.get("name", ""), meta=header.get("meta", {}))
        try:  # the layers must fit together: run one tiny batch through them
            net.forward(be.xp.zeros((2,) + net.in_shape, dtype=net.dtype), train=False)
        except Exception as err:
            raise NetworkFileError(f"the layers do not fit together ({type(err).__name__}: {err})") from err
    except NetworkFileError as err:
        raise NetworkFileError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise NetworkFileError(f"{path}: invalid network description ({type(err).__name__}: {err})") from err
    return net


def _layer_spec(layer: Layer, prefix: str, arrays: dict[str, numpy.ndarray], be: Backend) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": layer.kind, "config": layer.config()}
    inner = {name: child for name, child, _, _ in layer.children()}
    if inner:  # a residual block: its branch ("branch.<j>"), then its projection ("skip") or null
        spec["branch"] = [_layer_spec(c, f"{prefix}.{name}", arrays, be) for name, c in inner.items() if name != "skip"]
        spec["skip"] = _layer_spec(inner["skip"], f"{prefix}.skip", arrays, be) if "skip" in inner else None
        return spec
    own = {**layer.params, **layer.state}
    spec["arrays"] = sorted(own)
    for k, v in own.items():
        arrays[f"{prefix}.{k}"] = be.asnumpy(v)
    return spec


def _layer_from_spec(spec: dict[str, Any], prefix: str, arrays: dict[str, numpy.ndarray], used: set[str],
                     dtype: numpy.dtype, be: Backend) -> Layer:
    kind = spec.get("kind")
    if kind not in LAYER_KINDS:
        raise NetworkFileError(f"{prefix}: unknown layer kind {kind!r} (known: {sorted(LAYER_KINDS)})")
    cls = LAYER_KINDS[kind]
    config = dict(spec.get("config", {}))
    if cls is Residual:
        branch = [_layer_from_spec(s, f"{prefix}.branch.{j}", arrays, used, dtype, be) for j, s in enumerate(spec["branch"])]
        skip = None if spec.get("skip") is None else _layer_from_spec(spec["skip"], f"{prefix}.skip", arrays, used, dtype, be)
        return Residual(branch, skip, **config)
    kwargs = {}
    for name in spec.get("arrays", []):
        key = f"{prefix}.{name}"
        if key not in arrays:
            raise NetworkFileError(f"missing array {key!r}")
        a = arrays[key]
        if a.dtype != dtype:
            raise NetworkFileError(f"array {key!r} has dtype {a.dtype}, the header says {dtype}")
        if not numpy.isfinite(a).all():
            raise NetworkFileError(f"array {key!r} contains NaN or inf")
        kwargs[name] = be.xp.asarray(a)
        used.add(key)
    try:
        return cls(**config, **kwargs)
    except (TypeError, ValueError) as err:
        raise NetworkFileError(f"{prefix}: {kind} cannot be built from {sorted(config) + sorted(kwargs)} ({err})") from err


def describe_file_format() -> str:
    """The ``.npz`` schema, for people who want to write weights trained elsewhere and audit them here."""
    kinds = ", ".join(sorted(LAYER_KINDS))
    return f"""nablax network file, format {FILE_FORMAT!r} version {FILE_VERSION}: a NumPy .npz (no pickles) with
  __format__   0-d string array '{FILE_FORMAT}'
  __version__  0-d integer array {FILE_VERSION}
  __network__  0-d string array holding JSON:
               {{"name": str, "in_shape": [int, ...], "dtype": "float64" | "float32", "meta": {{...}},
                 "layers": [LAYER, ...]}}
  LAYER        {{"kind": one of {kinds},
                 "config": {{hyperparameters, e.g. "eps", "momentum", "beta", "axis"}},
                 "arrays": [names of this layer's arrays]}}
               a residual block instead has "branch": [LAYER, ...] and "skip": LAYER or null
  layers.<i>.<name>                 each array, e.g. layers.0.W (d_in, d_out), layers.0.b (d_out,)
  layers.<i>.branch.<j>.<name>      arrays inside residual block i
Layers in forward order; dense weights in row convention (y = x W + b). Array names per kind: dense W [b];
batchnorm running_mean running_var [gamma beta]; layernorm [gamma beta]; prelu a;
conv2d K (c_out, c_in, kh, kw) [b] (config: stride, padding). Image data is (B, C, H, W)."""
