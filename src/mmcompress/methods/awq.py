"""AWQ weight quantization: activation-aware per-channel scales, then rounding."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from torch import nn

from ..adapters import Adapter
from ..calibration import InputStatsCollector
from ..quantization.awq import awq_quantize
from ..quantization.grid import QuantGrid
from .base import StageContext, register_method
from .rtn import quantize_calibrated
from .training_hooks import with_qat
from .weight_quant import WeightQuantConfig, quantized_module, weight_matrix


class AWQConfig(WeightQuantConfig):
    """AWQ's scale search needs at least 3 bits."""

    method: str = "awq"
    bits: int = Field(4, description="3..8, or 16 for half precision")
    clip: bool = Field(True, description="also search a clipping ratio per group")
    n_grid: int = Field(20, ge=1, description="scale exponents tried in [0, 1)")
    sample_rows: int = Field(1024, ge=16, description="input rows kept per layer for the search")

    @field_validator("bits")
    @classmethod
    def _awq_bits(cls, v: int) -> int:
        if v == 2:
            raise ValueError("AWQ supports 3..8 bits (or 16)")
        return v


@register_method("quantize", "awq", AWQConfig)
@with_qat
def apply_awq(adapter: Adapter, config: AWQConfig, context: StageContext) -> dict[str, Any]:
    """AWQ: activation-aware scale search (embedding tables: round-to-nearest)."""

    def quantize(module: nn.Module, grid: QuantGrid, stats: InputStatsCollector) -> nn.Module:
        tie = 1
        if isinstance(module, nn.Conv2d):
            if module.groups > 1:  # per-channel input scaling does not apply; plain rounding
                return quantized_module(module, grid)
            tie = module.kernel_size[0] * module.kernel_size[1]
        q, s = awq_quantize(weight_matrix(module), stats.sample, stats.abs_mean, grid,
                            config.clip, config.n_grid, tie)
        input_scale = s[::tie] if tie > 1 else s
        return quantized_module(module, grid, quantized=q, input_scale=input_scale)

    return quantize_calibrated(adapter, config, context,
                               lambda n, m: InputStatsCollector(config.sample_rows), quantize,
                               "awq")
