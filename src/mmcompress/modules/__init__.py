"""Replacement modules and the registry that rebuilds them from a saved manifest."""

from .quantized import QuantEmbedding, QuantLinear
from .registry import MODULE_TYPES, build_module

__all__ = ["MODULE_TYPES", "QuantEmbedding", "QuantLinear", "build_module"]
