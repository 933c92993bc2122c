"""Data sources for training and measurement: CIFAR-10, scikit-learn's digits, Gaussian noise and the 1-D grid.

Every source returns a ``Dataset`` with float inputs ``x (N, d)`` and integer labels ``y (N,)`` (the grid has no
labels). Preprocessing follows the gradients-explode spec §9 (project defaults, not the paper's, which are unknown):
flatten each image and standardise each feature with the TRAINING set's mean and standard deviation,

    x' = (x - mean_train) / std_train          per feature; a feature with std 0 is only centred

and apply the same map to the test set. No augmentation.

CIFAR-10 comes from the official python-pickle archive ``cifar-10-python.tar.gz`` (163 MB; ``load_cifar10``).
Safety, in this order:

1. the archive's MD5 is checked against the published value ``CIFAR10_MD5`` (an extracted folder: each file
   against its published MD5) BEFORE any byte of it is unpickled; a missing, truncated or tampered file stops
   here with a message that says how to supply the right one;
2. members are read from the tar in memory by their exact names (nothing is extracted to disk);
3. each pickle is read by ``RestrictedUnpickler`` (its docstring says what it admits); every refusal is a
   ``DataUnavailable``;
4. the result is validated: ``data`` uint8 of shape (n, 3072), ``labels`` integers in 0..9.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy

from .backend import resolve_dtype

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
# published per-file checksums of the extracted archive (as listed by torchvision's CIFAR10 dataset)
CIFAR10_FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
DATA_SOURCES = ("digits", "cifar10", "gaussian", "grid")


class DataUnavailable(RuntimeError):
    """A data set cannot be used here: missing, not downloadable, failed its checksum, or malformed."""


def how_to_supply() -> str:
    return (f"Download {CIFAR10_URL} (about 163 MB, MD5 {CIFAR10_MD5}) on a machine with network access and pass "
            f"its path (the .tar.gz, a folder holding it, or the extracted {CIFAR10_FOLDER}/ folder): "
            f"`--cifar PATH` on the command line, `load_cifar10(PATH)` in Python, or set NABLAX_DATA to the folder.")


@dataclass
class Dataset:
    """Inputs and labels. ``x_train (N, d)`` float, ``y_train (N,)`` int64 (None for unlabelled sources)."""

    name: str
    x_train: numpy.ndarray
    y_train: numpy.ndarray | None
    x_test: numpy.ndarray | None = None
    y_test: numpy.ndarray | None = None
    n_classes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def subset(self, n: int, seed: int | numpy.random.Generator | None = 0) -> "Dataset":
        """The first ``n`` training points of a random permutation (same test set)."""
        idx = numpy.random.default_rng(seed).permutation(self.n_train)[:n]
        y = None if self.y_train is None else self.y_train[idx]
        return Dataset(self.name, self.x_train[idx], y, self.x_test, self.y_test, self.n_classes,
                       {**self.info, "subset": int(n)})


def standardize_features(x_train: numpy.ndarray, *others: numpy.ndarray | None) -> list[numpy.ndarray | None]:
    """Each feature standardised with the training set's mean and (population) std; returns train and others."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = numpy.where(std > 0, std, 1.0)
    return [None if a is None else (a - mean) / std for a in (x_train, *others)]


def batch_slices(n: int, size: int) -> list[slice]:
    """Evaluation batches of ``size`` over n points in order; a last batch of one point joins the one before it,
    since a batch of one has no batch statistics (``layers.norm.BatchNorm``)."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


# --- small sources ----------------------------------------------------------------------------------------


def load_digits(*, standardize: bool = True, test_fraction: float = 0.0, seed: int = 0, dtype: Any = "float64") -> Dataset:
    """scikit-learn's digits (1797 images of 8x8 = 64 features, 10 classes), embedded in scikit-learn: the offline
    real data set. ``test_fraction`` > 0 holds out a random test split (default: everything is training data)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x, y = d.data.astype(numpy.float64), d.target.astype(numpy.int64)
    x_test = y_test = None
    if test_fraction > 0:
        perm = numpy.random.default_rng(seed).permutation(len(y))
        n_test = int(round(test_fraction * len(y)))
        x, x_test, y, y_test = x[perm[n_test:]], x[perm[:n_test]], y[perm[n_test:]], y[perm[:n_test]]
    if standardize:
        x, x_test = standardize_features(x, x_test)
    dt = resolve_dtype(dtype)
    return Dataset("digits", x.astype(dt), y, None if x_test is None else x_test.astype(dt), y_test, 10,
                   {"source": "sklearn.datasets.load_digits", "standardized": standardize})


def gaussian_noise(n: int = 1000, dim: int = 100, n_classes: int = 10, seed: int | numpy.random.Generator | None = 0,
                   dtype: Any = "float64") -> Dataset:
    """``x ~ N(0, I_dim)``, i.i.d. uniform labels: the random-initialisation measurements' input (spec §8.1)."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(resolve_dtype(dtype))
    y = rng.integers(0, n_classes, n).astype(numpy.int64)
    return Dataset("gaussian", x, y, n_classes=n_classes, info={"n": n, "dim": dim})


def grid_1d(n: int = 256, lo: float = -2.0, hi: float = 2.0, kind: str = "linspace", dtype: Any = "float64") -> Dataset:
    """The shattered-gradients 1-D grid, shape (n, 1): ``linspace(lo, hi, n)`` (default) or ``arange(lo, hi, (hi-lo)/n)``."""
    if kind == "linspace":
        x = numpy.linspace(lo, hi, n)
    elif kind == "arange":
        x = numpy.arange(lo, hi, (hi - lo) / n)[:n]
    else:
        raise ValueError(f"kind must be 'linspace' or 'arange', got {kind!r}")
    return Dataset("grid", x[:, None].astype(resolve_dtype(dtype)), None, info={"kind": kind, "lo": lo, "hi": hi})


# --- CIFAR-10 ---------------------------------------------------------------------------------------------


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class _Dtype:
    """Stands in for ``numpy.dtype`` while a batch is unpickled: only the dtypes the format holds (uint8 data,
    integer labels), in any byte order, without fields or subarrays (an object dtype would read raw bytes as
    pointers)."""

    ADMITTED = ("u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8")

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
        if spec not in self.ADMITTED:
            raise pickle.UnpicklingError(f"refusing dtype {spec!r}: a CIFAR-10 batch holds only uint8 data and "
                                         f"integer labels")
        self.dtype = numpy.dtype(spec)

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byte order, subarray, names, fields, elsize, alignment, flags)
        plain = isinstance(state, tuple) and len(state) == 8 and state[2:] == (None, None, None, -1, -1, 0)
        order = state[1] if plain else None
        order = order.decode("latin1") if isinstance(order, bytes) else order
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("refusing a dtype with fields, a subarray or flags: not in the format")
        self.dtype = self.dtype.newbyteorder(order) if order in "<>" else self.dtype


class _Array:
    """Stands in for an ndarray while a batch is unpickled; its state is checked before any array is made (the
    shape must be 1-D or 2-D and hold exactly the bytes given), and the array is then a view of those bytes."""

    value: numpy.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw bytes), or the same without version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refusing an array state that is not (shape, dtype, order, bytes)")
        shape, dtype, fortran, raw = state[-4:]
        self.value = _array_from(raw, dtype, shape, "F" if fortran else "C")


def _array_from(raw: Any, dtype: Any, shape: Any, order: Any) -> numpy.ndarray:
    if not isinstance(raw, (bytes, bytearray)) or not isinstance(dtype, _Dtype) or order not in ("C", "F"):
        raise pickle.UnpicklingError("refusing an array that is not plain bytes of an admitted dtype")
    if not (isinstance(shape, tuple) and 1 <= len(shape) <= 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"refusing the array shape {shape!r}: the format holds 1-D and 2-D arrays")
    if math.prod(shape) * dtype.dtype.itemsize != len(raw):  # also refuses absurd shapes, before any allocation
        raise pickle.UnpicklingError(f"refusing the array shape {shape}: {len(raw)} bytes of data do not fill it")
    return numpy.frombuffer(raw, dtype.dtype).reshape(shape, order=order)


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _Array:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty array whose state follows (``_Array``)."""
    if subtype is not _Array or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError("refusing an array reconstruction that numpy does not write")
    return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    """numpy's protocol-5 ``_frombuffer(buffer, dtype, shape, order)``."""
    a = _Array()
    a.value = _array_from(bytes(buf) if isinstance(buf, pickle.PickleBuffer) else buf, dtype, shape, order)
    return a


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(text, "latin1")``: how pickle protocols 0-2 write bytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("refusing _codecs.encode other than of text to latin1 bytes")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how pickle protocols 0-2 write b""."""
    if args:
        raise pickle.UnpicklingError("refusing bytes() with arguments")
    return b""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for the CIFAR-10 batches: dicts, lists, bytes/str, ints and arrays, nothing else.

    ``find_class`` resolves only the globals numpy's and pickle's own writers name for these (pickle protocols 0-5,
    NumPy 1 and 2): the array reconstructors, ``numpy.ndarray``, ``numpy.dtype``, and ``_codecs.encode`` and
    ``bytes`` for bytes in protocols 0-2. Each resolves to a stand-in that checks its arguments; no numpy
    constructor sees them. An array is admitted only with an admitted dtype (``_Dtype``: uint8 data, integer
    labels), 1 or 2 dimensions, and exactly the bytes its shape needs; it is built from those bytes after
    ``load``. Any other global (``os.system``, ``builtins.eval``, a class with a custom ``__reduce__``) raises
    ``UnpicklingError``, so no code named by the file runs. Persistent ids are refused too.
    """

    ALLOWED: dict[tuple[str, str], Any] = {  # (find_class sees Python 2 names, and NumPy 1's numpy.core)
        ("numpy", "ndarray"): _Array, ("numpy", "dtype"): _Dtype, ("_codecs", "encode"): _latin1,
        ("builtins", "bytes"): _empty_bytes, ("__builtin__", "bytes"): _empty_bytes,
        **{(f"{core}.multiarray", "_reconstruct"): _reconstruct for core in ("numpy.core", "numpy._core")},
        **{(f"{core}.numeric", "_frombuffer"): _frombuffer for core in ("numpy.core", "numpy._core")}}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a CIFAR-10 batch holds only "
                                         f"arrays, lists, dicts and bytes") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id: not part of the CIFAR-10 format")


def _resolve(obj: Any, seen: set[int]) -> Any:
    """The unpickled object with every stand-in replaced by its array or dtype (in place in dicts and lists)."""
    if isinstance(obj, _Array):
        if obj.value is None:
            raise pickle.UnpicklingError("an array without its data")
        return obj.value
    if isinstance(obj, _Dtype):
        return obj.dtype
    if isinstance(obj, (dict, list)) and id(obj) not in seen:
        seen.add(id(obj))
        for k in (obj if isinstance(obj, dict) else range(len(obj))):
            obj[k] = _resolve(obj[k], seen)
    if isinstance(obj, tuple):
        return tuple(_resolve(v, seen) for v in obj)
    return obj


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler`` (Python 2 strings come back as bytes, as in the archive).
    Every refusal, and any other failure on a malformed pickle, is a ``pickle.UnpicklingError``."""
    try:
        return _resolve(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load(), set())
    except pickle.UnpicklingError:
        raise
    except Exception as err:  # a malformed stream: EOFError, a wrong number of arguments, RecursionError, ...
        raise pickle.UnpicklingError(f"malformed pickle ({type(err).__name__}: {err})") from err


def _load_batch(blob: bytes, where: str) -> tuple[numpy.ndarray, numpy.ndarray]:
    """One batch file's (data uint8 (n, 3072), labels int64 (n,)); anything refused or malformed is DataUnavailable."""
    try:
        obj = restricted_loads(blob)
    except pickle.UnpicklingError as err:
        raise DataUnavailable(f"{where}: not a CIFAR-10 batch ({err}). {how_to_supply()}") from err
    if not isinstance(obj, dict):
        raise DataUnavailable(f"{where}: not a CIFAR-10 batch (a {type(obj).__name__}, expected a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, numpy.ndarray) or data.dtype != numpy.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataUnavailable(f"{where}: 'data' must be a uint8 array of shape (n, 3072)")
    if not isinstance(labels, list) or len(labels) != data.shape[0] or not all(isinstance(v, int) for v in labels):
        raise DataUnavailable(f"{where}: 'labels' must be a list of {data.shape[0]} integers")
    y = numpy.asarray(labels, dtype=numpy.int64)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataUnavailable(f"{where}: labels outside 0..9")
    return data, y


def _checked(path: Path, md5: str, what: str) -> None:
    got = file_md5(path)
    if got != md5.lower():
        raise DataUnavailable(f"{path}: MD5 {got} does not match the expected {md5} for {what}: the file is truncated, "
                              f"damaged or not the official one, and nothing in it was unpickled. {how_to_supply()}")


def _read_archive(path: Path, md5: str) -> dict[str, tuple[numpy.ndarray, numpy.ndarray]]:
    _checked(path, md5, CIFAR10_ARCHIVE)
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in CIFAR10_TRAIN + CIFAR10_TEST:
                member = f"{CIFAR10_FOLDER}/{name}"
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise DataUnavailable(f"{path}: the archive has no member {member}") from None
                if not info.isfile():
                    raise DataUnavailable(f"{path}: {member} is not a regular file")
                out[name] = _load_batch(tar.extractfile(info).read(), f"{path}:{member}")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataUnavailable(f"{path}: cannot read the archive ({type(err).__name__}: {err}). {how_to_supply()}") from err
    return out


def _read_folder(folder: Path, file_md5s: dict[str, str]) -> dict[str, tuple[numpy.ndarray, numpy.ndarray]]:
    for name in CIFAR10_TRAIN + CIFAR10_TEST:  # every file's checksum before any file is unpickled
        if not (folder / name).is_file():
            raise DataUnavailable(f"{folder}: missing {name}. {how_to_supply()}")
        _checked(folder / name, file_md5s[name], f"CIFAR-10 {name}")
    return {name: _load_batch((folder / name).read_bytes(), str(folder / name))
            for name in CIFAR10_TRAIN + CIFAR10_TEST}


def default_cache_dir() -> Path:
    return Path(os.environ.get("NABLAX_DATA", Path.home() / ".cache" / "nablax"))


def download_cifar10(cache_dir: str | Path | None = None, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     timeout: float = 60.0) -> Path:
    """Download the archive into ``cache_dir`` (default ``$NABLAX_DATA`` or ``~/.cache/nablax``) and verify it.

    The file is written under a temporary name and renamed only after its MD5 matched, so a failed or partial
    download never leaves a file that looks complete. Without network access this raises ``DataUnavailable``.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CIFAR10_ARCHIVE
    part = folder / (CIFAR10_ARCHIVE + ".part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as fh:
                shutil.copyfileobj(resp, fh, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DataUnavailable(f"could not download {url} ({type(err).__name__}: {err}). {how_to_supply()}") from err
        _checked(part, md5, CIFAR10_ARCHIVE)
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)  # a failure leaves nothing (a verified download has been renamed)
    return target


def _locate(path: str | Path | None) -> Path | None:
    """The archive file or extracted folder that ``path`` (or the cache folder) points at, or None."""
    p = Path(path) if path is not None else default_cache_dir()
    if p.is_file():
        return p
    for inner in (p / CIFAR10_ARCHIVE, p / CIFAR10_FOLDER, p):
        if inner.is_file() or (inner.is_dir() and (inner / "data_batch_1").exists()):
            return inner
    return None


def load_cifar10(path: str | Path | None = None, *, download: bool = False, cache_dir: str | Path | None = None,
                 md5: str = CIFAR10_MD5, file_md5s: dict[str, str] | None = None, url: str = CIFAR10_URL,
                 standardize: bool = True, n_train: int | None = None, dtype: Any = "float64") -> Dataset:
    """CIFAR-10 as flattened 3072-vectors (channel-major, as stored), standardised per feature on the training set.

    path        the archive, a folder holding it, or the extracted folder (default: the cache folder)
    download    fetch the archive into ``cache_dir`` when it is not found (needs network access)
    md5         the archive's expected MD5 (the published one; tests pass their own archive's)
    file_md5s   expected MD5s of the extracted files (default: the published ones)
    n_train     keep only the first n training images (the test set is kept whole)
    """
    found = _locate(path if path is not None else cache_dir)
    if found is None:
        if not download:
            where = path if path is not None else (cache_dir or default_cache_dir())
            raise DataUnavailable(f"CIFAR-10 not found at {where}. {how_to_supply()}")
        target = cache_dir if cache_dir is not None else path
        if target is not None and str(target).endswith(".tar.gz"):
            target = Path(target).parent
        found = download_cifar10(target, url=url, md5=md5)
    batches = _read_folder(found, file_md5s or CIFAR10_FILE_MD5) if found.is_dir() else _read_archive(found, md5)
    x_train = numpy.concatenate([batches[n][0] for n in CIFAR10_TRAIN]).astype(numpy.float64)
    y_train = numpy.concatenate([batches[n][1] for n in CIFAR10_TRAIN])
    x_test, y_test = batches["test_batch"][0].astype(numpy.float64), batches["test_batch"][1]
    if n_train is not None:
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    if standardize:
        x_train, x_test = standardize_features(x_train, x_test)
    dt = resolve_dtype(dtype)
    return Dataset("cifar10", x_train.astype(dt), y_train, x_test.astype(dt), y_test, 10,
                   {"source": str(found), "standardized": standardize})


def load_dataset(name: str, *, cifar: str | Path | None = None, download: bool = False, n_train: int | None = None,
                 seed: int = 0, dtype: Any = "float64", **kw: Any) -> Dataset:
    """A data source by name: "digits", "cifar10" (``cifar`` = its path), "gaussian" (``n``, ``dim``) or "grid"."""
    if name == "digits":
        ds = load_digits(dtype=dtype, **kw)
    elif name == "cifar10":
        return load_cifar10(cifar, download=download, n_train=n_train, dtype=dtype, **kw)
    elif name == "gaussian":
        return gaussian_noise(n=n_train or kw.pop("n", 1000), seed=seed, dtype=dtype, **kw)
    elif name == "grid":
        return grid_1d(dtype=dtype, **kw)
    else:
        raise ValueError(f"unknown data source {name!r}; choose one of {DATA_SOURCES}")
    return ds if n_train is None or n_train >= ds.n_train else ds.subset(n_train, seed)


def write_cifar_like_archive(path: str | Path, n_per_batch: int = 20, seed: int = 0, protocol: int = 4) -> str:
    """A small archive in the CIFAR-10 python format (5 training batches and a test batch of ``n_per_batch``
    random images each), for tests and demos. Returns its MD5, to pass as ``md5=`` to ``load_cifar10``."""
    rng = numpy.random.default_rng(seed)
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        for name in CIFAR10_TRAIN + CIFAR10_TEST:
            batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
                     b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=numpy.uint8),
                     b"filenames": [f"img_{i}.png".encode() for i in range(n_per_batch)]}
            blob = pickle.dumps(batch, protocol=protocol)
            info = tarfile.TarInfo(f"{CIFAR10_FOLDER}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return file_md5(path)
