"""Adapter registry: adapter name → class, and Hugging Face ``model_type`` → class."""

from __future__ import annotations

from .base import Adapter, DualEncoderAdapter
from .classifier import ImageClassifierAdapter
from .demo import DemoAdapter
from .fusion import FusionAdapter
from .hf_dual import CLIPAdapter, SiglipAdapter
from .lit_cifar import LitCifarAdapter
from .sentence import SentenceAdapter

ADAPTERS: dict[str, type[Adapter]] = {}
HF_MODEL_TYPES: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter], *hf_model_types: str) -> type[Adapter]:
    """Make `cls` reloadable by its name, and loadable from HF folders of `hf_model_types`."""
    ADAPTERS[cls.name] = cls
    for model_type in hf_model_types:
        HF_MODEL_TYPES[model_type] = cls
    return cls


register_adapter(DemoAdapter)
register_adapter(CLIPAdapter, "clip")
register_adapter(SiglipAdapter, "siglip")
register_adapter(ImageClassifierAdapter)
register_adapter(LitCifarAdapter)
register_adapter(SentenceAdapter, "bert")
register_adapter(FusionAdapter)

__all__ = ["ADAPTERS", "HF_MODEL_TYPES", "Adapter", "DualEncoderAdapter", "register_adapter"]
