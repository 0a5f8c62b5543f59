"""SmoothQuant W8A8: smoothing scales, int8 weights, static int8 activations.

Linear layers become `W8A8Linear` (an integer GEMM on CPU). Per layer, the calibration
engine streams the layer's inputs into an `InputStatsCollector` (per-channel max |x| and a
bounded sample of rows); the smoothing scales s come from the channel maxima and the
weight, and the static activation scale from the chosen observer applied to x / s. Where a
LayerNorm alone feeds layers (pre-norm transformers: q/k/v, fc1), s is folded into the norm
first (`smooth_fold`), so those layers pay nothing at run time for smoothing. ``alpha: auto``
(the default) picks alpha per layer, or per group of layers sharing a norm, from a grid by the
W8A8 output error on calibration inputs (`search_alpha`).
Patchifying convolutions (kernel = stride: a ViT patch embedding) become `W8A8PatchConv2d`, a
W8A8 linear over flattened patches; other convolutions and embedding tables, which have no
int8 activation path here, get int8 weight-only round-to-nearest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field
from torch import nn

from ..adapters import Adapter
from ..calibration import InputStatsCollector, calibrate_layers
from ..modules import W8A8Linear
from ..modules.int8 import W8A8PatchConv2d, is_patchify
from ..quantization.grid import QuantGrid
from ..quantization.observers import activation_scale
from ..quantization.smoothquant import ActScale, search_alpha, smoothing_scales
from .activations import ActivationQuantConfig
from .base import StageContext, plain_layers, register_method
from .rtn import quantize_rtn
from .smooth_fold import fold_into_norms
from .value_fold import fold_value_scales
from .weight_quant import LayerKindsConfig, sparse_stored_dense


class SmoothQuantConfig(LayerKindsConfig):
    method: str = "smoothquant"
    alpha: Literal["auto"] | Annotated[float, Field(ge=0, le=1)] | None = Field(
        "auto", description="migration strength in [0, 1]; auto = searched per "
        "layer on calibration inputs; null = no smoothing (plain W8A8)")
    activations: ActivationQuantConfig = Field(
        ActivationQuantConfig(), description="static int8 activations: {bits: 8, observer: "
        "minmax|percentile|mse, percentile: 99.99}")
    embeddings: bool = Field(True, description="also quantize embedding tables (int8 weights)")
    convolutions: bool = Field(True, description="also quantize 2-d convolutions (patchifying "
                               "ones W8A8, others int8 weight-only)")
    sample_rows: int = Field(2048, ge=16, description="input rows kept per layer for observers")
    fold: bool = Field(True, description="fold scales into a LayerNorm feeding the layers, or "
                       "an attention output's into the value projection, where that is exact "
                       "(checked); else inputs are divided at run time")


def act_scale_fn(acts: ActivationQuantConfig) -> ActScale:
    """The static activation scale the config's observer gives a sample and its max |x|."""
    return lambda values, abs_max: activation_scale(values, abs_max, acts.observer, acts.bits,
                                                    acts.percentile)


def w8a8_module(module: nn.Module, stats: InputStatsCollector, alpha: float | str | None,
                acts: ActivationQuantConfig) -> tuple[W8A8Linear, float | None]:
    """The W8A8 replacement of one calibrated linear (or patchifying convolution) layer, and
    the alpha used (searched when `alpha` is "auto")."""
    weight = module.weight.detach().reshape(module.weight.shape[0], -1)  # filters: patches
    if alpha == "auto":
        alpha = search_alpha(stats.sample, stats.abs_max, weight, act_scale_fn(acts))
    s = None if alpha is None else smoothing_scales(stats.abs_max, weight, alpha)
    abs_max = stats.abs_max if s is None else stats.abs_max / s
    sample = stats.sample if s is None else stats.sample / s
    scale = act_scale_fn(acts)(sample, float(abs_max.max()))
    if isinstance(module, nn.Conv2d):
        return W8A8PatchConv2d.from_conv(module, scale, s), alpha
    return W8A8Linear.from_linear(module, scale, s), alpha


@register_method("quantize", "smoothquant", SmoothQuantConfig)
def apply_smoothquant(adapter: Adapter, config: SmoothQuantConfig,
                      context: StageContext) -> dict[str, Any]:
    """SmoothQuant W8A8: int8 weights and static int8 activations (integer GEMM on CPU)."""
    modules = plain_layers(adapter, config, config.kinds(), "quantization",
                           "quantize each layer once")
    w8a8 = {n: m for n, m in modules.items()  # in model order
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and is_patchify(m))}
    others = {n: m for n, m in modules.items() if n not in w8a8}
    dense = sparse_stored_dense(w8a8.values())
    del modules  # the engine frees each original once it is replaced
    alphas: dict[str, float | None] = {}  # alpha per smoothed layer

    def replace(name: str, module: nn.Module, stats: InputStatsCollector) -> nn.Module:
        if name in alphas:  # smoothed through its norm: the input is already divided by s
            return w8a8_module(module, stats, None, config.activations)[0]
        new, alphas[name] = w8a8_module(module, stats, config.alpha, config.activations)
        return new

    grid = QuantGrid(8)  # weight-only layers first, in model order
    n_weight_only = quantize_rtn(adapter, others, {k: grid for k in others}, context.progress)
    del others
    n = folded = 0
    if w8a8:
        calib = context.calibration_data(adapter)
        if config.fold and config.alpha is not None:
            linears = {k: m for k, m in w8a8.items() if isinstance(m, nn.Linear)}
            alphas.update(fold_into_norms(adapter.model, linears, calib, config.alpha,
                                          act_scale_fn(config.activations)))
            del linears
        folded = len(alphas)
        n = calibrate_layers(adapter, w8a8, calib,
                             lambda n, m: InputStatsCollector(config.sample_rows), replace,
                             "smoothquant", context.progress, release=True)
    values = fold_value_scales(adapter.model, list(adapter.latency_inputs(2).values())) \
        if config.fold and n else 0
    return {"modules": n + n_weight_only, "w8a8": n, "weight_only_int8": n_weight_only,
            "smoothed_by_norm": folded, "smoothed_by_value": values, "alpha": config.alpha,
            **_alpha_summary(alphas), "observer": config.activations.observer, **dense}


def _alpha_summary(alphas: dict[str, float | None]) -> dict[str, Any]:
    """How the searched alphas came out (mean, range), for the report."""
    values = [a for a in alphas.values() if a is not None]
    if not values:
        return {}
    return {"alpha_mean": round(sum(values) / len(values), 3), "alpha_min": min(values),
            "alpha_max": max(values)}
