"""Name → replacement-module class, so a manifest entry can rebuild an empty module."""

from __future__ import annotations

from typing import Any

from torch import nn

MODULE_TYPES: dict[str, type] = {}


def register_module(cls: type) -> type:
    """Class decorator: make `cls` rebuildable from its manifest entry by type name."""
    MODULE_TYPES[cls.__name__] = cls
    return cls


def build_module(spec: dict[str, Any]) -> nn.Module:
    """Build an empty replacement module from its manifest entry (weights loaded later)."""
    kind = spec.get("type")
    if kind not in MODULE_TYPES:
        raise KeyError(f"unknown module type {kind!r}; known: {', '.join(sorted(MODULE_TYPES))}")
    return MODULE_TYPES[kind].from_spec(spec)
