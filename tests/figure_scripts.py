"""Load a paper figure script as a module by its path, under a name of its own (``shattered_gradients.fig1`` and
``gradients_explode.fig1`` are different scripts with the same file name), with its folder on sys.path while it
loads (the scripts import the shared ``_protocol`` and ``_random_init`` beside them)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "paper_figures"


def load(paper: str, name: str):
    key = f"{paper}.{name}"
    if key in sys.modules:
        return sys.modules[key]
    folder = ROOT / paper
    spec = importlib.util.spec_from_file_location(key, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    sys.modules[key] = module
    return module
