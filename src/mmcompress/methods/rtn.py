"""Round-to-nearest weight quantization (no calibration)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..adapters import Adapter
from ..modules.replace import replace_modules
from ..progress import progress_bar
from ..quantization.grid import QuantGrid
from .allocation import layer_grids
from .base import StageContext, register_method, selected
from .training_hooks import with_qat
from .weight_quant import WeightQuantConfig, quantized_module, store_half


class RTNConfig(WeightQuantConfig):
    method: str = "rtn"


def quantize_rtn(
    adapter: Adapter, modules: dict[str, nn.Module], grids: Mapping[str, QuantGrid], progress: bool
) -> int:
    """Swap each module for its min-max round-to-nearest quantized version."""
    bar = progress_bar(modules.items(), desc="rtn", enabled=progress)
    replace_modules(adapter.model, {n: quantized_module(m, grids[n]) for n, m in bar})
    return len(modules)


@register_method("quantize", "rtn", RTNConfig)
@with_qat
def apply_rtn(adapter: Adapter, config: RTNConfig, context: StageContext) -> dict[str, Any]:
    """Round-to-nearest min-max quantization, per channel or per group."""
    modules = selected(adapter, config, config.kinds())
    if config.bits == 16:
        return store_half(adapter, modules, config.dtype)
    grids, summary = layer_grids(adapter, modules, config, context)
    return {"modules": quantize_rtn(adapter, modules, grids, context.progress), **summary}
