"""Compression methods, registered by stage kind and name."""

from . import awq, gptq, rtn  # noqa: F401  (registers)
from .base import METHODS, STAGE_KINDS, MethodConfig, StageContext, methods_for, register_method

__all__ = [
    "METHODS",
    "STAGE_KINDS",
    "MethodConfig",
    "StageContext",
    "methods_for",
    "register_method",
]
