"""AWQ weight quantization: activation-aware per-channel scales, then rounding."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..adapters import Adapter
from ..calibration import InputStatsCollector
from ..quantization.awq import awq_quantize
from ..quantization.grid import QuantGrid
from .base import StageContext, register_method
from .rtn import quantize_calibrated
from .training_hooks import with_qat
from .weight_quant import WeightQuantConfig, quantized_module, weight_matrix

AWQ_BITS = "AWQ supports 3..8 bits (or 16)"


def scales_inputs(module: nn.Module) -> bool:
    """Whether AWQ gives `module` an input scale: not embedding tables (rounded to nearest) nor
    grouped convolutions (per-channel input scaling does not apply)."""
    return not isinstance(module, nn.Embedding) and getattr(module, "groups", 1) == 1


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
            raise ValueError(AWQ_BITS)
        return v

    @model_validator(mode="after")
    def _awq_budget_bits(self) -> AWQConfig:
        if self.budget is not None and 2 in self.budget.bits:
            raise ValueError(f"{AWQ_BITS}: drop 2 from budget bits")
        return self

    def layout(self, module: nn.Module, grid: QuantGrid) -> nn.Module:
        """`module` as AWQ stores it (with a unit input scale where AWQ adds one), with
        round-to-nearest codes."""
        if not scales_inputs(module):
            return quantized_module(module, grid)
        n_in = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        return quantized_module(module, grid, input_scale=torch.ones(n_in))


@register_method("quantize", "awq", AWQConfig)
@with_qat
def apply_awq(adapter: Adapter, config: AWQConfig, context: StageContext) -> dict[str, Any]:
    """AWQ: activation-aware scale search (embedding tables: round-to-nearest)."""

    def quantize(module: nn.Module, grid: QuantGrid, stats: InputStatsCollector) -> nn.Module:
        if not scales_inputs(module):
            return quantized_module(module, grid)
        tie = module.kernel_size[0] * module.kernel_size[1] \
            if isinstance(module, nn.Conv2d) else 1
        q, s = awq_quantize(weight_matrix(module), stats.sample, stats.abs_mean, grid,
                            config.clip, config.n_grid, tie)
        input_scale = s[::tie] if tie > 1 else s
        return quantized_module(module, grid, quantized=q, input_scale=input_scale)

    return quantize_calibrated(adapter, config, context,
                               lambda n, m: InputStatsCollector(config.sample_rows), quantize,
                               "awq")
