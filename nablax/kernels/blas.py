"""Dense matrix products through a chosen CBLAS library; NumPy's own ``matmul`` by default.

On some CPUs another BLAS than the OpenBLAS in NumPy's wheel is faster at the shapes of the hot path (AMD's
AOCL-BLAS on AMD Zen 4: BENCHMARKS.md, "The BLAS"). The setting ``blas`` (``nablax.settings(blas=name)``,
``set_blas(name)``, ``use_blas(name)`` or the variable ``NABLAX_BLAS``) sends every product of the dense layers
(forward, pullback, push-forward and weight gradient) to the chosen library:

    "numpy" (default)  numpy.matmul
    "aocl"             AMD's AOCL-BLAS, as bundled in the ``aoclda`` wheel (``pip install "nablax[aocl]"``; AMD's
                       evaluation licence, see README.md)
    a file path        any shared library exporting ``cblas_sgemm`` and ``cblas_dgemm`` with 32-bit integers,
                       or NumPy's bundled OpenBLAS naming (``scipy_cblas_sgemm64_``, 64-bit integers)

``matmul(a, b, out=None) -> a @ b`` takes 2-D float32/float64 NumPy arrays of one dtype. Each operand needs one unit
stride (C- or Fortran-ordered, or a slice of either); ``out`` gets the product in its own memory order. Anything
else (CuPy arrays, other dtypes, other strides, an ``out`` that overlaps an input), and every product under
``nablax.settings(fast=False)``, goes to the array module's ``matmul``: the answer never depends on the setting
beyond rounding.

Threads: the library's own settings (AOCL-BLAS reads ``BLIS_NUM_THREADS``, then ``OMP_NUM_THREADS``). The setting
is per process: worker processes (Dask sweeps) take it from ``NABLAX_BLAS``, not from a ``set_blas`` call.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy

from ..backend import array_module, numba_module
from ..performance import Settings, current, settings

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_NDARRAY = numpy.ndarray


@dataclass(frozen=True)
class Cblas:
    """A loaded CBLAS library: its file name, its gemm routines and, once first used, the compiled product for
    each dtype character ("f", "d")."""

    name: str
    routines: dict
    compiled: dict

    def gemm(self, char: str) -> Any:
        if char not in self.compiled:
            self.compiled[char] = _compile(numba_module(), self.routines[char], char)
        return self.compiled[char]


def _aocl_path() -> str:
    """AOCL-BLAS inside the installed ``aoclda`` wheel (its libraries live in ``aoclda.libs``)."""
    spec = importlib.util.find_spec("aoclda")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError('blas "aocl" needs AMD\'s AOCL-BLAS: pip install "nablax[aocl]" (the aoclda wheel)')
    libs = os.path.join(os.path.dirname(list(spec.submodule_search_locations)[0]), "aoclda.libs")
    found = sorted(glob.glob(os.path.join(libs, "libblis-mt*.so*")))
    if not found:
        raise ValueError(f"no libblis-mt in {libs}; the aoclda wheel's layout has changed")
    for dep in sorted(glob.glob(os.path.join(libs, "libomp*.so*"))):  # the OpenMP runtime it links against
        ctypes.CDLL(dep, mode=ctypes.RTLD_GLOBAL)
    return found[0]


@functools.lru_cache(maxsize=None)  # one load per library and process
def _load(path: str) -> Cblas:
    numba = numba_module()
    if numba is None:  # pragma: no cover - numba is a core dependency
        raise ValueError("set_blas needs numba, which calls the library without Python in between")
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError as err:
        raise ValueError(f"cannot load a BLAS library from {path!r}: {err}") from None
    for prefix, suffix, integer in (("cblas_", "", ctypes.c_int), ("scipy_cblas_", "64_", ctypes.c_int64)):
        names = {char: f"{prefix}{char}gemm{suffix}" for char in "ds"}
        if all(hasattr(lib, name) for name in names.values()):
            routines = {}
            for char, scalar in (("d", ctypes.c_double), ("s", ctypes.c_float)):
                fn = getattr(lib, names[char])
                fn.restype = None
                fn.argtypes = ([ctypes.c_int] * 3 + [integer] * 3 + [scalar, ctypes.c_void_p, integer,
                               ctypes.c_void_p, integer, scalar, ctypes.c_void_p, integer])
                routines["f" if char == "s" else "d"] = fn
            return Cblas(os.path.basename(path), routines, {})
    raise ValueError(f"{path!r} exports neither cblas_dgemm/cblas_sgemm nor scipy_cblas_dgemm64_/sgemm64_")


def _compile(numba: Any, fn: Any, char: str) -> Any:
    """A Numba function ``gemm(a, b, out) -> bool`` for arrays of dtype ``char``: it writes a @ b into out with one
    call of ``fn`` (a row-major CBLAS gemm) and returns True, or returns False, out untouched, when the shapes, the
    strides or an overlap rule it out.

    An operand x (m, n) with strides (s0, s1) in elements is row-major with leading dimension s0 when s1 == 1,
    and the transpose of a row-major (n, m) matrix with leading dimension s1 when s0 == 1 (a length-1 axis
    counts as either). A transposed out is written as out^T = b^T a^T.

    A right operand that BLAS would read transposed (the weight W^T of a Dense pullback) is first copied into
    row-major order when the left operand has at least ``copy_rows`` times as many rows as it has columns: 1 in
    float32, 8 in float64, where the copy measured faster with AOCL-BLAS (BENCHMARKS.md, "The BLAS": in float64
    it loses at 64 and 128 rows and is level from 256 up).

    It is compiled once per dtype, for any strides (layout "A") and read-only or writeable inputs, so that no new
    memory order costs a compilation later (about 0.3 s each)."""

    @numba.njit(nogil=True)
    def operand(x):  # (transpose flag, leading dimension), flag 0 when no unit stride
        m, n = x.shape
        s0, s1 = x.strides[0] // x.itemsize, x.strides[1] // x.itemsize
        if x.strides[0] % x.itemsize or x.strides[1] % x.itemsize:
            return 0, 0
        if (s1 == 1 or n == 1) and (m == 1 or s0 >= n):
            return NO_TRANS, max(s0 if m > 1 else n, 1)
        if (s0 == 1 or m == 1) and (n == 1 or s1 >= m):
            return TRANS, max(s1 if n > 1 else m, 1)
        return 0, 0

    @numba.njit(nogil=True)
    def span(x):  # the byte range [lo, hi) that x touches
        lo = hi = x.ctypes.data
        for axis in range(x.ndim):
            step = (x.shape[axis] - 1) * x.strides[axis]
            lo, hi = (lo + step, hi) if step < 0 else (lo, hi + step)
        return lo, hi + x.itemsize

    @numba.njit(nogil=True)
    def apart(x, y):
        (x0, x1), (y0, y1) = span(x), span(y)
        return x1 <= y0 or y1 <= x0

    copy_rows = 1 if char == "f" else 8
    rw = numba.types.Array(numba.from_dtype(numpy.dtype(char)), 2, "A")
    ro = numba.types.Array(rw.dtype, 2, "A", readonly=True)

    @numba.njit(nogil=True)
    def call(ta, tb, m, n, k, x, lda, y, ldb, out, ldc):  # the arrays stay alive for the call
        fn(ROW_MAJOR, ta, tb, m, n, k, 1.0, x.ctypes.data, lda, y.ctypes.data, ldb, 0.0, out.ctypes.data, ldc)

    @numba.njit([numba.types.boolean(ro, ro, rw)], nogil=True)  # writeable inputs convert to read-only
    def gemm(a, b, out):
        m, k = a.shape
        n = b.shape[1]
        if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n or m * n * k == 0:
            return False
        if not (apart(out, a) and apart(out, b)):
            return False
        tc, ldc = operand(out)
        if tc == TRANS:  # out^T = b^T a^T into the row-major out^T
            x, y, m, n = b.T, a.T, n, m
        else:
            x, y = a, b
        ta, lda = operand(x)
        tb, ldb = operand(y)
        if tc == 0 or ta == 0 or tb == 0:
            return False
        if tb == TRANS and m >= copy_rows * n:  # a transposed right operand, small next to the left: copied
            call(ta, NO_TRANS, m, n, k, x, lda, numpy.ascontiguousarray(y), max(n, 1), out, ldc)
        else:
            call(ta, tb, m, n, k, x, lda, y, ldb, out, ldc)
        return True

    return gemm


@functools.lru_cache(maxsize=None)
def _library(name: str) -> Cblas | None:
    """The library of a setting (None: numpy.matmul), loaded once."""
    return None if name == "numpy" else _load(_aocl_path() if name == "aocl" else name)


def check_blas(name: str) -> None:
    """Load the library that ``set_blas(name)`` would choose, without choosing it: ValueError, with the reason,
    when it cannot be used (e.g. "aocl" without the aoclda wheel)."""
    _library(name)


def set_blas(name: str) -> str:
    """Choose "numpy", "aocl" or a library path for the dense products (the setting ``blas``); returns the
    previous setting."""
    previous = current().blas
    settings(blas=name)
    return previous


def use_blas(name: str) -> Settings:
    """``with use_blas("aocl"): ...`` runs a block with another library (``nablax.settings(blas=name)``)."""
    return settings(blas=name)


def blas_name() -> str:
    """The current setting: "numpy", "aocl" or the path given to ``set_blas``."""
    return current().blas


def blas_library() -> str:
    """The file name of the library in use, or "numpy.matmul"."""
    s = current()
    return "numpy.matmul" if s.blas == "numpy" or not s.fast else _library(s.blas).name


def matmul(a: Any, b: Any, out: Any | None = None) -> Any:
    """a @ b (into ``out`` if given) through the chosen library; see the module docstring."""
    s = current()
    if (s.blas != "numpy" and s.fast and type(a) is _NDARRAY and type(b) is _NDARRAY and a.ndim == 2 and b.ndim == 2
            and a.dtype == b.dtype and a.dtype.char in "fd"
            and (out is None or (type(out) is _NDARRAY and out.dtype == a.dtype and out.ndim == 2
                                 and out.flags.writeable))):
        result = numpy.empty((a.shape[0], b.shape[1]), dtype=a.dtype) if out is None else out
        if _library(s.blas).gemm(a.dtype.char)(a, b, result):
            return result
    xp = array_module(a)
    return xp.matmul(a, b) if out is None else xp.matmul(a, b, out=out)


if current().blas != "numpy":  # NABLAX_BLAS: a library that cannot be used must not break the import
    try:
        check_blas(current().blas)
    except ValueError as err:
        warnings.warn(f"NABLAX_BLAS={current().blas!r} ignored: {err}", RuntimeWarning, stacklevel=1)
        settings(blas="numpy")
