import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def numpy_cblas():
    """The BLAS library under NumPy (its bundled OpenBLAS, or whatever this NumPy links), as a path that
    ``nablax.kernels.set_blas`` takes: it runs the same CBLAS-through-Numba path as AOCL-BLAS on any machine."""
    from threadpoolctl import threadpool_info

    from nablax.kernels import blas

    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            try:
                blas.check_blas(lib["filepath"])
            except ValueError:
                continue
            return lib["filepath"]
    pytest.skip("NumPy's BLAS exports no CBLAS gemm that nablax can call")
