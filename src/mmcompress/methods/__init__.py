"""Compression methods, registered by stage kind and name."""

# importing a method module registers it
from . import (  # noqa: F401
    awq,
    batchnorm,
    distill,
    finetune,
    gptq,
    lowrank,
    lowrank_conv,
    prune_structured,
    prune_unstructured,
    rtn,
    smoothquant,
)
from .base import (
    METHODS,
    STAGE_KINDS,
    MethodConfig,
    StageContext,
    keep_original,
    methods_for,
    register_method,
    run_stage,
    run_stages,
)

__all__ = [
    "METHODS",
    "STAGE_KINDS",
    "MethodConfig",
    "StageContext",
    "keep_original",
    "methods_for",
    "register_method",
    "run_stage",
    "run_stages",
]
