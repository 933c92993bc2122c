"""The papers' measurements, one concept per file. Metrics read a ``Trace`` and pull signals back or push
them forward through it; they never depend on how a particular layer is implemented."""

from typing import Any


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """The metrics' one option check: ValueError ``"{name} must be one of {choices}, got {value!r}"``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
