"""SmoothQuant W8A8: smoothing scales, int8 weights, static int8 activations.

Linear layers become `W8A8Linear` (an integer GEMM on CPU). Per layer, the calibration
engine streams the layer's inputs into an `InputStatsCollector` (per-channel max |x| and a
bounded sample of rows); the smoothing scales s come from the channel maxima and the
weight, and the static activation scale from the chosen observer applied to x / s.
Convolutions and embedding tables, which have no int8 activation path here, get int8
weight-only round-to-nearest.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..adapters import Adapter
from ..calibration import InputStatsCollector, calibrate_layers
from ..modules import W8A8Linear
from ..quantization.grid import QuantGrid
from ..quantization.observers import OBSERVERS, activation_scale
from ..quantization.smoothquant import smoothing_scales
from .base import MethodConfig, StageContext, register_method, selected
from .rtn import quantize_rtn


class ActivationQuantConfig(BaseModel):
    """``activations: {bits: 8, observer: minmax|percentile|mse, percentile: 99.99}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    bits: int = Field(8, description="activation bits (int8 kernels only)")
    observer: Literal["minmax", "percentile", "mse"] = Field(
        "minmax", description=f"how the static range is chosen: {', '.join(OBSERVERS)}")
    percentile: float = Field(99.99, gt=50, le=100, description="for observer: percentile")

    @field_validator("bits")
    @classmethod
    def _int8_only(cls, v: int) -> int:
        if v != 8:
            raise ValueError(f"activation bits must be 8 (the int8 kernels), got {v}")
        return v


class SmoothQuantConfig(MethodConfig):
    method: str = "smoothquant"
    alpha: float | None = Field(
        0.5, ge=0, le=1, description="migration strength; null = no smoothing (plain W8A8)")
    activations: ActivationQuantConfig = ActivationQuantConfig()
    embeddings: bool = Field(True, description="also quantize embedding tables (int8 weights)")
    convolutions: bool = Field(True, description="also quantize 2-d convolutions (int8 weights)")
    sample_rows: int = Field(2048, ge=16, description="input rows kept per layer for observers")

    def kinds(self) -> tuple[type[nn.Module], ...]:
        kinds: tuple[type[nn.Module], ...] = (nn.Linear,)
        if self.convolutions:
            kinds += (nn.Conv2d,)
        if self.embeddings:
            kinds += (nn.Embedding,)
        return kinds


def w8a8_linear(module: nn.Linear, stats: InputStatsCollector, alpha: float | None,
                acts: ActivationQuantConfig) -> W8A8Linear:
    """The W8A8 replacement of one calibrated linear layer."""
    s = None if alpha is None else smoothing_scales(stats.abs_max, module.weight, alpha)
    abs_max = stats.abs_max if s is None else stats.abs_max / s
    sample = stats.sample if s is None else stats.sample / s
    scale = activation_scale(sample, float(abs_max.max()), acts.observer, acts.bits,
                             acts.percentile)
    return W8A8Linear.from_linear(module, scale, s)


@register_method("quantize", "smoothquant", SmoothQuantConfig)
def apply_smoothquant(adapter: Adapter, config: SmoothQuantConfig,
                      context: StageContext) -> dict[str, Any]:
    """SmoothQuant W8A8: int8 weights and static int8 activations (integer GEMM on CPU)."""
    modules = selected(adapter, config, config.kinds())
    linears = {n: m for n, m in modules.items() if isinstance(m, nn.Linear)}
    others = {n: m for n, m in modules.items() if n not in linears}

    def replace(name: str, module: nn.Module, stats: InputStatsCollector) -> nn.Module:
        return w8a8_linear(module, stats, config.alpha, config.activations)

    n = 0
    if linears:
        n = calibrate_layers(adapter, linears, context.calibration_data(adapter),
                             lambda n, m: InputStatsCollector(config.sample_rows), replace,
                             "smoothquant", context.progress)
    grid = QuantGrid(8)
    n_weight_only = quantize_rtn(adapter, others, {k: grid for k in others}, context.progress)
    return {"modules": n + n_weight_only, "w8a8": n, "weight_only_int8": n_weight_only,
            "alpha": config.alpha, "observer": config.activations.observer}
