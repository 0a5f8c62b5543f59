"""GPTQ weight quantization of linear and convolution layers, calibrated block by block."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from ..adapters import Adapter
from ..calibration import HessianCollector, calibrate_layers
from ..quantization.gptq import gptq_quantize
from .allocation import layer_grids
from .base import StageContext, register_method, selected
from .rtn import quantize_rtn
from .training_hooks import with_qat
from .weight_quant import WeightQuantConfig, quantized_module, store_half, weight_matrix


class GPTQConfig(WeightQuantConfig):
    method: str = "gptq"
    damp: float = Field(0.01, gt=0, lt=1, description="Hessian damping, fraction of mean diag")
    act_order: bool = Field(False, description="quantize columns by decreasing Hessian diagonal")
    block_size: int = Field(128, ge=1, description="columns updated lazily together")


def split_embeddings(modules: dict[str, nn.Module]) -> tuple[dict, dict]:
    """(embedding tables, everything else): tables have no input activations to calibrate."""
    tables = {n: m for n, m in modules.items() if isinstance(m, nn.Embedding)}
    return tables, {n: m for n, m in modules.items() if n not in tables}


@register_method("quantize", "gptq", GPTQConfig)
@with_qat
def apply_gptq(adapter: Adapter, config: GPTQConfig, context: StageContext) -> dict[str, Any]:
    """GPTQ: second-order error-compensating rounding (embedding tables: round-to-nearest)."""
    modules = selected(adapter, config, config.kinds())
    if config.bits == 16:
        return store_half(adapter, modules, config.dtype)
    grids, summary = layer_grids(adapter, modules, config, context)
    tables, layers = split_embeddings(modules)
    del modules  # the engine frees each original once it is replaced
    n = quantize_rtn(adapter, tables, grids, context.progress)  # first, in model order
    del tables
    calib = context.calibration_data(adapter)

    def replace(name: str, module: nn.Module, stats: HessianCollector) -> nn.Module:
        grid = grids[name]
        q = gptq_quantize(
            weight_matrix(module),
            stats.hessian,
            grid,
            config.damp,
            config.act_order,
            config.block_size,
        )
        return quantized_module(module, grid, quantized=q)

    n += calibrate_layers(
        adapter, layers, calib, lambda n, m: HessianCollector(), replace, "gptq", context.progress,
        release=True,
    )
    return {"modules": n, **summary}
