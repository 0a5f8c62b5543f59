"""Replacement modules and the registry that rebuilds them from a saved manifest. Every
module type is imported here, so loading a folder finds each one whatever else was imported
(`mmcompress inspect` of a sparse or factored output failed: 'unknown module type')."""

from . import lowrank, sparse  # noqa: F401  (they register their types)
from .half import HalfWeight
from .int8 import W8A8Linear as W8A8Linear
from .quantized import QuantConv2d, QuantEmbedding, QuantLinear
from .registry import MODULE_TYPES, build_module

__all__ = [
    "MODULE_TYPES",
    "HalfWeight",
    "QuantConv2d",
    "QuantEmbedding",
    "QuantLinear",
    "build_module",
]
