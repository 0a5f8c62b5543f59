"""SmoothQuant W8A8: smoothing scales, int8 weights, static int8 activations.

Linear layers become `W8A8Linear` (an integer GEMM on CPU). Per layer, the calibration
engine streams the layer's inputs into an `InputStatsCollector` (per-channel max |x| and a
bounded sample of rows); the smoothing scales s come from the channel maxima and the
weight, and the static activation scale from the chosen observer applied to x / s. Where a
LayerNorm alone feeds layers (pre-norm transformers: q/k/v, fc1), s is folded into the norm
first (`smooth_fold`), so those layers pay nothing at run time for smoothing.
Patchifying convolutions (kernel = stride: a ViT patch embedding) become `W8A8PatchConv2d`, a
W8A8 linear over flattened patches; other convolutions and embedding tables, which have no
int8 activation path here, get int8 weight-only round-to-nearest.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from ..adapters import Adapter
from ..calibration import InputStatsCollector, calibrate_layers
from ..modules import W8A8Linear
from ..modules.int8 import W8A8PatchConv2d, is_patchify
from ..quantization.grid import QuantGrid
from ..quantization.observers import activation_scale
from ..quantization.smoothquant import smoothing_scales
from .activations import ActivationQuantConfig
from .base import MethodConfig, StageContext, register_method, selected
from .rtn import quantize_rtn
from .smooth_fold import fold_into_norms


class SmoothQuantConfig(MethodConfig):
    method: str = "smoothquant"
    alpha: float | None = Field(
        0.5, ge=0, le=1, description="migration strength; null = no smoothing (plain W8A8)")
    activations: ActivationQuantConfig = ActivationQuantConfig()
    embeddings: bool = Field(True, description="also quantize embedding tables (int8 weights)")
    convolutions: bool = Field(True, description="also quantize 2-d convolutions (patchifying "
                               "ones W8A8, others int8 weight-only)")
    sample_rows: int = Field(2048, ge=16, description="input rows kept per layer for observers")
    fold: bool = Field(True, description="fold scales into a LayerNorm feeding the layers where "
                       "that is exact (checked); else inputs are divided at run time")

    def kinds(self) -> tuple[type[nn.Module], ...]:
        kinds: tuple[type[nn.Module], ...] = (nn.Linear,)
        if self.convolutions:
            kinds += (nn.Conv2d,)
        if self.embeddings:
            kinds += (nn.Embedding,)
        return kinds


def w8a8_module(module: nn.Module, stats: InputStatsCollector, alpha: float | None,
                acts: ActivationQuantConfig) -> W8A8Linear:
    """The W8A8 replacement of one calibrated linear (or patchifying convolution) layer."""
    weight = module.weight.reshape(module.weight.shape[0], -1)  # a filter: flattened patches
    s = None if alpha is None else smoothing_scales(stats.abs_max, weight, alpha)
    abs_max = stats.abs_max if s is None else stats.abs_max / s
    sample = stats.sample if s is None else stats.sample / s
    scale = activation_scale(sample, float(abs_max.max()), acts.observer, acts.bits,
                             acts.percentile)
    if isinstance(module, nn.Conv2d):
        return W8A8PatchConv2d.from_conv(module, scale, s)
    return W8A8Linear.from_linear(module, scale, s)


@register_method("quantize", "smoothquant", SmoothQuantConfig)
def apply_smoothquant(adapter: Adapter, config: SmoothQuantConfig,
                      context: StageContext) -> dict[str, Any]:
    """SmoothQuant W8A8: int8 weights and static int8 activations (integer GEMM on CPU)."""
    modules = selected(adapter, config, config.kinds())
    linears = {n: m for n, m in modules.items() if isinstance(m, nn.Linear)}
    patches = {n: m for n, m in modules.items() if isinstance(m, nn.Conv2d) and is_patchify(m)}
    others = {n: m for n, m in modules.items() if n not in linears and n not in patches}

    folded: set[str] = set()

    def replace(name: str, module: nn.Module, stats: InputStatsCollector) -> nn.Module:
        alpha = None if name in folded else config.alpha  # folded: input already smoothed
        return w8a8_module(module, stats, alpha, config.activations)

    n = 0
    if linears or patches:
        calib = context.calibration_data(adapter)
        if config.fold and config.alpha is not None and linears:
            folded = fold_into_norms(adapter.model, linears, calib, config.alpha)
        w8a8 = {n: m for n, m in modules.items() if n in linears or n in patches}  # model order
        n = calibrate_layers(adapter, w8a8, calib,
                             lambda n, m: InputStatsCollector(config.sample_rows), replace,
                             "smoothquant", context.progress)
    grid = QuantGrid(8)
    n_weight_only = quantize_rtn(adapter, others, {k: grid for k in others}, context.progress)
    return {"modules": n + n_weight_only, "w8a8": n, "weight_only_int8": n_weight_only,
            "smoothed_by_norm": len(folded), "alpha": config.alpha,
            "observer": config.activations.observer}
