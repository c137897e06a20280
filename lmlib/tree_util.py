"""Nested config dicts <-> dotted keys."""

from __future__ import annotations

from typing import Any


def flatten_dict(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"mesh": {"data": 1}}} -> {"trainer.mesh.data": 1}."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
