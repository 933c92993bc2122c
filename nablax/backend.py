"""The one place that knows about array libraries and kernel compilers.

Math code never imports numpy, cupy or numba itself. It asks for the array module of the arrays it was
given (``array_module(x)``), so the same formula runs on NumPy arrays on the CPU and CuPy arrays on a GPU.
CuPy and Numba are imported lazily, on first use; a missing one gives a clear message, never an import-time
crash.

    >>> be = get_backend("numpy")
    >>> be.xp.zeros(3).shape
    (3,)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy

from .performance import current

BACKENDS = ("numpy", "cupy")
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # thread counts BLAS reads


class BackendUnavailable(RuntimeError):
    """Raised when an optional backend (CuPy, Numba) is asked for but cannot be used here."""


@dataclass(frozen=True)
class Backend:
    """An array library and the three things the engine needs from it.

    name     "numpy" or "cupy"
    xp       the array module (numpy or cupy)
    asnumpy  moves an array to host memory as a numpy.ndarray
    sync     waits for queued device work (a no-op on the CPU); call it before reading a timer
    """

    name: str
    xp: Any
    asnumpy: Callable[[Any], numpy.ndarray]
    sync: Callable[[], None]

    def __reduce__(self) -> tuple:
        """Pickle (copy.deepcopy, Dask) by name: the backend is looked up again where it is unpickled."""
        return (get_backend, (self.name,))


NUMPY = Backend("numpy", numpy, numpy.asarray, lambda: None)


@functools.lru_cache(maxsize=None)
def _cupy_backend() -> Backend:
    try:
        import cupy  # noqa: PLC0415  (lazy by design)
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise BackendUnavailable(
            "backend='cupy' needs CuPy: install it with `pip install -e .[gpu]` on a machine with a CUDA GPU"
        ) from err
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # pragma: no cover - depends on the machine
        raise BackendUnavailable(f"backend='cupy': CuPy is installed but finds no CUDA device ({err})") from err
    if n < 1:  # pragma: no cover
        raise BackendUnavailable("backend='cupy': CuPy is installed but finds no CUDA device")
    return Backend("cupy", cupy, cupy.asnumpy, lambda: cupy.cuda.Device().synchronize())


def get_backend(name: str | Backend = "numpy") -> Backend:
    """The backend called ``name`` ("numpy" or "cupy"); raises BackendUnavailable if it cannot run here."""
    if isinstance(name, Backend):
        return name
    if name == "numpy":
        return NUMPY
    if name == "cupy":
        return _cupy_backend()
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _cupy_backend()
    except BackendUnavailable:
        return False
    return True


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def backend_of(*arrays: Any) -> Backend:
    """The backend that owns ``arrays``; raises TypeError when they mix NumPy and CuPy arrays."""
    for a in arrays:  # the common case first, cheaply (this runs several hundred times per training step)
        if type(a) is not numpy.ndarray and a is not None:
            break
    else:
        return NUMPY
    kinds = {_is_cupy(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if len(kinds) > 1:
        raise TypeError("arrays from different backends (NumPy and CuPy) were mixed in one call")
    return _cupy_backend() if kinds == {True} else NUMPY


def array_module(*arrays: Any) -> Any:
    """numpy or cupy, whichever owns ``arrays``."""
    return backend_of(*arrays).xp


def resolve_dtype(dtype: Any) -> numpy.dtype:
    """float64 (default) or float32; anything else is refused with a clear message."""
    dt = numpy.dtype(dtype)
    if dt not in (numpy.float64, numpy.float32):
        raise ValueError(f"dtype must be float64 or float32, got {dt}")
    return dt


# --- the C allocator ----------------------------------------------------------------------------------


def tune_allocator(trim_threshold: int = 512 << 20, mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed heap memory in the process instead of handing it back to the OS at once (glibc only).

    A forward pass keeps every layer's activations alive in its Trace and frees them all together when the trace
    goes. With glibc's defaults that memory is returned to the OS (trimmed, or unmapped for blocks over 128 KiB)
    and the next pass page-faults it back in (a training step 1.7x slower: BENCHMARKS.md, "The C allocator").
    The cost: up to ``trim_threshold`` of freed heap stays resident. It changes the whole process, so a library
    must not do it unasked: ``import nablax`` never calls it; the ``nablax`` command and the figure scripts
    (``figures.figure_args``) do, unless the setting ``malloc_tuning`` is off. Returns True if it applied.
    """
    if not current().malloc_tuning or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))


# --- Numba ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def numba_module() -> Any | None:
    """The numba module, or None when it is not installed (kernels then fall back to their NumPy reference)."""
    try:
        import numba  # noqa: PLC0415
    except ImportError:  # pragma: no cover - numba is a core dependency
        return None
    return numba


def numba_available() -> bool:
    return numba_module() is not None
