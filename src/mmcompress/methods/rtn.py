"""Round-to-nearest weight quantization (no calibration)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..adapters import Adapter
from ..calibration import calibrate_layers
from ..modules.replace import replace_modules
from ..progress import progress_bar
from ..quantization.grid import QuantGrid
from .allocation import layer_grids
from .base import StageContext, plain_layers, register_method, split_embeddings
from .training_hooks import with_qat
from .weight_quant import WeightQuantConfig, quantized_module, store_half

#: quantize one layer from its grid and calibration statistics → its quantized module
LayerQuantizer = Callable[[nn.Module, QuantGrid, Any], nn.Module]


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
    modules = plain_layers(adapter, config, config.kinds(), "quantization",
                           "quantize each layer once")
    if config.bits == 16:
        return store_half(adapter, modules, config.dtype)
    grids, summary = layer_grids(adapter, modules, config, context)
    return {"modules": quantize_rtn(adapter, modules, grids, context.progress), **summary}


def quantize_calibrated(adapter: Adapter, config: WeightQuantConfig, context: StageContext,
                        make_collector: Callable[[str, nn.Module], Any],
                        quantize_layer: LayerQuantizer, desc: str) -> dict[str, Any]:
    """What GPTQ and AWQ share: the selected layers (half precision for ``bits: 16``), a grid
    per layer (uniform or from the bit budget), embedding tables rounded first (in model
    order), then every other layer calibrated and replaced block by block."""
    modules = plain_layers(adapter, config, config.kinds(), "quantization",
                           "quantize each layer once")
    if config.bits == 16:
        return store_half(adapter, modules, config.dtype)
    grids, summary = layer_grids(adapter, modules, config, context)
    tables, layers = split_embeddings(modules)
    del modules  # the engine frees each original once it is replaced
    n = quantize_rtn(adapter, tables, grids, context.progress)
    del tables
    n += calibrate_layers(
        adapter, layers, context.calibration_data(adapter), make_collector,
        lambda name, module, stats: quantize_layer(module, grids[name], stats), desc,
        context.progress, release=True)
    return {"modules": n, **summary}
