"""nablax: hand-written forward, backward, forward-mode and exact Jacobians of deep networks, on NumPy,
Numba and CuPy, and the measurements of "Gradients explode - Deep Networks are shallow" (Philipp et al.)
and "The Shattered Gradients Problem" (Balduzzi et al.)."""

__version__ = "0.1.0"

from .performance import Settings, settings  # noqa: I001 (first: the settings every other module reads)
from .backend import get_backend, gpu_available, tune_allocator
from .architectures import ARCHITECTURES, build
from .network import Network, Trace

__all__ = ["__version__", "build", "ARCHITECTURES", "Network", "Trace", "get_backend", "gpu_available", "settings",
           "Settings"]
