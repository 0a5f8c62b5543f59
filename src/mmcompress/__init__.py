"""mmcompress: compress multimodal models — pruning, quantization, distillation, low-rank."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "compress", "evaluate", "load"]

if TYPE_CHECKING:
    from .api import compress, evaluate, load


def __getattr__(name: str) -> Any:
    """Import the API (torch, transformers) on first use, so that the command line answers
    `--help` and bad input without that cost."""
    if name in {"compress", "evaluate", "load"}:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
