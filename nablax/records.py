"""The JSON form of results and configurations, shared by training runs (``nablax.train``) and figure scripts
(``nablax.figures``): ``jsonable`` converts, ``config_key`` names a configuration by a short stable hash."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy


def jsonable(v: Any) -> Any:
    """JSON-able copy: arrays to lists, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return jsonable(v.tolist())
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (numpy.floating,)):
        return jsonable(float(v))
    if isinstance(v, (numpy.integer,)):
        return int(v)
    return v


def config_key(config: dict[str, Any]) -> str:
    """A stable short hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(jsonable(config), sort_keys=True).encode()).hexdigest()[:16]
