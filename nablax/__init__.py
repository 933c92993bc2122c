"""nablax: hand-written forward, backward, forward-mode and exact Jacobians of deep networks, on NumPy,
Numba and CuPy, and the measurements of "Gradients explode - Deep Networks are shallow" (Philipp et al.)
and "The Shattered Gradients Problem" (Balduzzi et al.)."""

__version__ = "0.1.0"

from .backend import get_backend, gpu_available, tune_allocator

tune_allocator()  # see its docstring: measured 1.8x on a training step; NABLAX_MALLOC_TUNING=0 turns it off

from .architectures import ARCHITECTURES, build  # noqa: E402
from .network import Network, Trace  # noqa: E402

__all__ = ["__version__", "build", "ARCHITECTURES", "Network", "Trace", "get_backend", "gpu_available"]
