"""GPTQ weight quantization of linear and convolution layers, calibrated block by block."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from ..adapters import Adapter
from ..calibration import HessianCollector
from ..modules.sparse import is_sparse
from ..quantization.gptq import gptq_quantize
from ..quantization.grid import QuantGrid
from .base import StageContext, register_method
from .rtn import quantize_calibrated
from .training_hooks import with_qat
from .weight_quant import WeightQuantConfig, quantized_module, weight_matrix


class GPTQConfig(WeightQuantConfig):
    method: str = "gptq"
    damp: float = Field(0.01, gt=0, lt=1, description="Hessian damping, fraction of mean diag")
    act_order: bool = Field(False, description="quantize columns by decreasing Hessian diagonal")
    block_size: int = Field(128, ge=1, description="columns updated lazily together")


@register_method("quantize", "gptq", GPTQConfig)
@with_qat
def apply_gptq(adapter: Adapter, config: GPTQConfig, context: StageContext) -> dict[str, Any]:
    """GPTQ: second-order error-compensating rounding (embedding tables: round-to-nearest)."""

    def quantize(module: nn.Module, grid: QuantGrid, stats: HessianCollector) -> nn.Module:
        keep = module.keep_mask() if is_sparse(module) else None  # pruned weights stay 0
        q = gptq_quantize(weight_matrix(module), stats.hessian, grid, config.damp,
                          config.act_order, config.block_size, keep)
        return quantized_module(module, grid, quantized=q)

    return quantize_calibrated(adapter, config, context, lambda n, m: HessianCollector(),
                               quantize, "gptq")
