"""The performance settings (``nablax.settings``, ``nablax.performance``): one object, read from the environment
once, changed for good or for a block; and an ``import nablax`` that changes nothing in the process."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import nablax
from nablax import kernels, performance
from nablax.performance import Settings

REPO = str(Path(__file__).resolve().parent.parent)


def test_settings_change_for_a_block_or_for_good():
    before = nablax.settings()
    assert isinstance(before, Settings) and before == performance.current()
    with nablax.settings(kernels="numpy", sweep_threads=3) as s:
        assert s.kernels == "numpy" and s.sweep_threads == 3 and nablax.settings() == s
        assert kernels.cpu_kernels() == "numpy"  # the old entry points read the same object
        with kernels.use_cpu_kernels("numba"):
            assert nablax.settings().kernels == "numba" and nablax.settings().sweep_threads == 3
        assert nablax.settings().kernels == "numpy"
    assert nablax.settings() == before
    try:
        assert kernels.set_cpu_kernels("numpy") == before.kernels and nablax.settings().kernels == "numpy"
    finally:
        nablax.settings(kernels=before.kernels)
    assert nablax.settings() == before


@pytest.mark.parametrize("bad", [dict(kernels="fortran"), dict(sweep_threads=-1), dict(sweep_threads=True),
                                 dict(fast="no"), dict(feature_major="F"), dict(blas="/no/such/libblas.so")])
def test_bad_values_are_refused_and_change_nothing(bad):
    before = nablax.settings()
    with pytest.raises(ValueError):
        nablax.settings(**bad)
    with pytest.raises(TypeError):
        nablax.settings(threads=2)
    assert nablax.settings() == before


def test_the_environment_gives_the_initial_values():
    env = {"NABLAX_FAST": "0", "NABLAX_KERNELS": "numpy", "NABLAX_SWEEP_THREADS": "2", "NABLAX_NUMBA_PARALLEL": "1",
           "NABLAX_MALLOC_TUNING": "0", "NABLAX_BLAS": "aocl"}
    s = Settings.from_env(env)
    assert (s.fast, s.kernels, s.sweep_threads, s.numba_parallel, s.malloc_tuning, s.blas) == (
        False, "numpy", 2, True, False, "aocl")  # (the library is loaded by nablax.kernels.blas, not here)
    assert Settings.from_env({}) == Settings()
    assert set(performance.ENVIRONMENT) <= {f for f in Settings.__dataclass_fields__}
    with pytest.warns(RuntimeWarning, match="NABLAX_SWEEP_THREADS='two' ignored"):
        assert Settings.from_env({"NABLAX_SWEEP_THREADS": "two"}).sweep_threads == 0
    with pytest.warns(RuntimeWarning, match="NABLAX_KERNELS"):
        assert Settings.from_env({"NABLAX_KERNELS": "fortran"}).kernels == "auto"


def test_the_readme_lists_every_setting_with_its_variable_and_default():
    import re

    readme = (Path(REPO) / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `?(\w*)`? ?\| (\w+) \|", readme, re.M)
    variables = {name: var for name, var, _ in rows if var}
    defaults = {name: default for name, _, default in rows}
    assert variables == performance.ENVIRONMENT
    want = {f.name: f.default for f in Settings.__dataclass_fields__.values() if f.init}
    assert defaults.keys() == want.keys()
    for name, default in want.items():
        assert defaults[name] == (str(int(default)) if isinstance(default, bool) else str(default)), name


def test_the_environment_is_read_in_a_fresh_process():
    code = "import nablax; s = nablax.settings(); print(s.kernels, s.sweep_threads, s.fast)"
    env = {**os.environ, "NABLAX_KERNELS": "numpy", "NABLAX_SWEEP_THREADS": "3", "NABLAX_FAST": "0",
           "PYTHONPATH": REPO}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["numpy", "3", "False"]


# --- the C allocator: opt-in ---------------------------------------------------------------------------------

# Where glibc puts a fresh block of 28 MiB: with its defaults (mmap threshold 128 KiB, raised by frees up to the
# size freed) in its own mapping; after tune_allocator (mmap threshold 32 MiB) on the heap. /proc/self/maps says.
PROBE = r"""
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
def on_heap(n=28 << 20):
    p = libc.malloc(n)
    heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
    libc.free(ctypes.c_void_p(p))
    return any(int(lo, 16) <= p < int(hi, 16) for lo, hi in (h.split("-") for h in heap))
"""
needs_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                 reason="glibc's malloc")


def _probe(code, **env):
    full = {k: v for k, v in os.environ.items() if k != "NABLAX_MALLOC_TUNING"}
    full.update(PYTHONPATH=REPO, **env)
    run = subprocess.run([sys.executable, "-c", PROBE + code], env=full, capture_output=True, text=True, check=True)
    return run.stdout.split()


@needs_glibc
def test_importing_nablax_leaves_the_allocator_alone():
    """``import nablax`` (and a sweep) leave glibc's thresholds at their defaults; ``tune_allocator()`` changes them
    (the probe sees both; each process probes once, since a free raises glibc's threshold), and does nothing when
    the setting is off."""
    assert _probe("import nablax, numpy\n"
                  "nablax.build('tanh', depth=2, width=4, in_dim=3).forward(numpy.ones((2, 3))).jacobian_sq_norms()\n"
                  "print(on_heap())") == ["False"]
    assert _probe("import nablax\nprint(nablax.tune_allocator())\nprint(on_heap())") == ["True", "True"]
    assert _probe("import nablax\nprint(nablax.tune_allocator())\nprint(on_heap())",
                  NABLAX_MALLOC_TUNING="0") == ["False", "False"]


@needs_glibc
def test_the_command_line_and_the_figure_scripts_tune_the_allocator():
    assert _probe("from nablax.figures import figure_args\nfigure_args('a figure', [])\nprint(on_heap())") == ["True"]
    assert _probe("import contextlib, io\nfrom nablax.cli import main\n"
                  "with contextlib.redirect_stdout(io.StringIO()):\n    main(['info'])\nprint(on_heap())") == ["True"]
    assert _probe("from nablax.figures import figure_args\nfigure_args('a figure', [])\nprint(on_heap())",
                  NABLAX_MALLOC_TUNING="0") == ["False"]
