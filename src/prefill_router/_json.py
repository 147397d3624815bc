"""Strict-JSON helpers shared by every stage that writes a report."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """A copy of nested dicts/lists with NaN and inf floats replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj
