"""Round-to-nearest weight quantization (no calibration)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..adapters import Adapter
from ..modules.replace import replace_modules
from ..progress import progress_bar
from .base import StageContext, register_method, selected
from .weight_quant import WeightQuantConfig, quantized_module


class RTNConfig(WeightQuantConfig):
    method: str = "rtn"


def quantize_rtn(adapter: Adapter, modules: dict[str, nn.Module], config: WeightQuantConfig,
                 progress: bool) -> int:
    """Swap each module for its min-max round-to-nearest quantized version."""
    grid = config.grid()
    bar = progress_bar(modules.items(), desc=f"rtn int{config.bits}", enabled=progress)
    replace_modules(adapter.model, {n: quantized_module(m, grid) for n, m in bar})
    return len(modules)


@register_method("quantize", "rtn", RTNConfig)
def apply_rtn(adapter: Adapter, config: RTNConfig, context: StageContext) -> dict[str, Any]:
    """Round-to-nearest min-max quantization, per channel or per group."""
    modules = selected(adapter, config, config.kinds())
    return {"modules": quantize_rtn(adapter, modules, config, context.progress)}
