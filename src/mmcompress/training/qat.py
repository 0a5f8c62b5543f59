"""Quantization-aware training: fake-quantized layers trained with a straight-through estimator.

A weight method with ``qat`` first quantizes as usual (RTN, GPTQ or AWQ: the same grids, bit
budgets and AWQ input scales), then every `QuantLinear` / `QuantConv2d` it made becomes a
`QATLinear` / `QATConv2d`: a plain ``nn.Linear`` / ``nn.Conv2d`` whose float (latent) weight is
rounded to the module's grid in every forward (`fake_quantize_ste`), gradients passing
straight through the rounding. Scales are min-max of the current latent weight (``scales:
minmax``) or trained with it starting from the post-training scales (``scales: learned``,
LSQ). The latent weight starts as the original weight when rounding it with those scales
gives the stored codes (RTN; AWQ with learned scales), else as the stored weight (GPTQ's
error-compensated values, AWQ's clipped ones). So before any step the model computes what
the post-training model computes with learned scales, and after RTN; with min-max scales
after GPTQ or AWQ it computes the stored weights rounded again on their own min-max scales
(their scale choices, AWQ's clipping among them, are not min-max), close but not equal.

When training ends, `QATCallback` turns every fake-quantized layer back into a
`QuantLinear` / `QuantConv2d` holding the codes of its final latent weight: the same function
the layer computed while training, in the saved format of post-training quantization.
Embedding tables and sparse layers keep their post-training quantization (not trained).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import Adapter
from ..calibration import InputStatsCollector, calibrate_layers
from ..errors import RecipeError
from ..methods.activations import ActivationQuantConfig
from ..methods.base import MethodConfig, StageContext, selected
from ..methods.training_hooks import QATOptions, arm
from ..methods.weight_quant import weight_matrix
from ..modules import QuantConv2d, QuantLinear, W8A8Linear
from ..modules.int8 import QMAX, QMIN
from ..modules.replace import replace_modules
from ..quantization.grid import (
    QuantGrid,
    compute_scales,
    dequantize,
    fake_quantize_ste,
    quantize,
    round_ste,
)
from ..quantization.observers import activation_scale
from .callbacks import TrainCallback
from .masks import WEIGHT_MASK

_MIN_SCALE = 1e-8  # learned scales are kept positive


class _FakeQuantized:
    """What QATLinear and QATConv2d share: grid, scales, the fake-quantized weight."""

    weight: nn.Parameter
    grid: QuantGrid
    learned: bool

    def _adopt(self, q: nn.Module, weight: torch.Tensor, learned: bool) -> Any:
        """Take `weight` (the latent float weight, in this layer's shape) and `q`'s bias and
        grid; returns self (built on the meta device: nothing else is allocated)."""
        self.weight = nn.Parameter(weight.detach().clone())
        if q.bias is not None:
            self.bias = nn.Parameter(q.bias.detach().clone())
        self._init_quant(q, learned)
        return self

    def _init_quant(self, q: QuantLinear | QuantConv2d, learned: bool) -> None:
        self.grid, self.learned = q.grid, learned
        if learned:
            self.scale = nn.Parameter(q.scale.detach().clone())
            zero = None if q.zero is None else q.zero.detach().float().clone()
            self.register_buffer("zero", zero)
        scale = q.input_scale
        self.register_buffer("input_scale", None if scale is None else scale.detach().clone())
        self.register_buffer("act_scale", None)  # static int8 input scale (W8A8 QAT)

    def matrix(self) -> torch.Tensor:
        """The latent weight as [rows, cols] (filters flattened)."""
        return self.weight.reshape(self.weight.shape[0], -1)

    def quant_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale, zero point) the weight is rounded with now."""
        if self.learned:
            return self.scale.clamp(min=_MIN_SCALE), self.zero
        return compute_scales(self.matrix().detach(), self.grid)

    def fake_weight(self) -> torch.Tensor:
        """The weight rounded to the grid, in the layer's shape (straight-through gradient)."""
        scale, zero = self.quant_params()
        return fake_quantize_ste(self.matrix(), self.grid, scale, zero).view(self.weight.shape)

    @torch.no_grad()
    def quantized(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codes, scale, zero) of the current latent weight, as the saved module stores them."""
        scale, zero = self.quant_params()
        scale = scale.detach().clone()
        codes = quantize(self.matrix().detach().float(), self.grid, scale, zero)
        return codes, scale, zero

    def extra_repr(self) -> str:
        g = self.grid
        return f"{super().extra_repr()}, bits={g.bits}, group_size={g.group_size}, " \
            f"symmetric={g.symmetric}, scales={'learned' if self.learned else 'minmax'}"


def _column_scale(q: nn.Module) -> torch.Tensor:
    """A module's input scale per column of its [rows, cols] weight."""
    if isinstance(q, QuantConv2d):
        k = q.conv["kernel_size"]
        return q.input_scale.repeat_interleave(k[0] * k[1])
    return q.input_scale


class QATLinear(_FakeQuantized, nn.Linear):
    """A linear layer trained through its weight's rounding to an integer grid."""

    @classmethod
    def from_quantized(cls, q: QuantLinear, latent: torch.Tensor, learned: bool) -> QATLinear:
        mod = cls(q.in_features, q.out_features, q.bias is not None, device="meta")
        return mod._adopt(q, latent.view(q.out_features, q.in_features), learned)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale
        if self.act_scale is not None:
            x = fake_quantize_int8(x, self.act_scale)
        return F.linear(x, self.fake_weight().to(x.dtype), self.bias)

    def to_quantized(self) -> QuantLinear | W8A8Linear:
        """The saved `QuantLinear` (`W8A8Linear` with activations) computing the same function
        (W8A8: up to float rounding of the integer product)."""
        if self.act_scale is not None:  # the grid is int8 per channel, min-max: W8A8's own
            if self.grid.bits != 8:
                raise RuntimeError(f"QATLinear: W8A8 needs an 8-bit weight grid, this layer "
                                   f"trained on {self.grid.bits} bits")
            return W8A8Linear.from_linear(self, float(self.act_scale))
        return QuantLinear.from_linear(self, self.grid, self.quantized(), self.input_scale)


class QATConv2d(_FakeQuantized, nn.Conv2d):
    """A 2-d convolution trained through its weight's rounding to an integer grid."""

    @classmethod
    def from_quantized(cls, q: QuantConv2d, latent: torch.Tensor, learned: bool) -> QATConv2d:
        c = q.conv
        mod = cls(c["in_channels"], c["out_channels"], c["kernel_size"], c["stride"],
                  c["padding"], c["dilation"], c["groups"], c["bias"], device="meta")
        shape = (c["out_channels"], c["in_channels"] // c["groups"], *c["kernel_size"])
        return mod._adopt(q, latent.view(shape), learned)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.view(1, -1, 1, 1)
        return F.conv2d(x, self.fake_weight().to(x.dtype), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def to_quantized(self) -> QuantConv2d:
        """The saved `QuantConv2d` computing the same function."""
        return QuantConv2d.from_conv(self, self.grid, self.quantized(), self.input_scale)


QAT_TYPES = (QATLinear, QATConv2d)


def fake_quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`W8A8Linear`'s input rounding, clamp(round(x / scale), −128, 127) · scale, with a
    straight-through gradient inside the range."""
    return torch.clamp(round_ste(x / scale), QMIN, QMAX) * scale


def calibrate_activations(adapter: Adapter, layers: dict[str, QATLinear],
                          options: ActivationQuantConfig, context: StageContext) -> None:
    """Set each layer's static int8 input scale from calibration inputs (the observer)."""

    def record(name: str, module: QATLinear, stats: InputStatsCollector) -> None:
        scale = activation_scale(stats.sample, float(stats.abs_max.max()), options.observer,
                                 options.bits, options.percentile)
        module.act_scale = torch.tensor([scale])

    calibrate_layers(adapter, layers, context.calibration_data(adapter),
                     lambda n, m: InputStatsCollector(), record, "qat activations",
                     context.progress, release=True)


def latent_weight(original: nn.Module | None, q: QuantLinear | QuantConv2d,
                  learned: bool) -> torch.Tensor:
    """Where training starts: the original weight (times any input scale) when rounding it as
    training will (the post-training scales when `learned`, else its own min-max scales)
    reproduces the stored weight, else the stored weight; [rows, cols]."""
    stored = q.dequantized_weight()
    if original is None:
        return stored
    w = weight_matrix(original)
    if q.input_scale is not None:
        w = w * _column_scale(q)
    if learned:
        scale, zero = q.scale, None if q.zero is None else q.zero.float()
    else:
        scale, zero = compute_scales(w, q.grid)
    if torch.equal(dequantize(quantize(w, q.grid, scale, zero), q.grid, scale, zero), stored):
        return w
    return stored


def qat_module(q: nn.Module, original: nn.Module | None, learned: bool) -> nn.Module | None:
    """The trainable stand-in of a quantized layer (None for kinds QAT does not train)."""
    if type(q) is QuantLinear:
        return QATLinear.from_quantized(q, latent_weight(original, q, learned), learned)
    if type(q) is QuantConv2d:
        return QATConv2d.from_quantized(q, latent_weight(original, q, learned), learned)
    return None


def convert_qat(model: nn.Module) -> int:
    """Replace every fake-quantized layer by its saved quantized module; returns how many."""
    swaps = {n: m.to_quantized() for n, m in model.named_modules() if isinstance(m, QAT_TYPES)}
    replace_modules(model, swaps)
    return len(swaps)


class QATCallback(TrainCallback):
    """Converts the fake-quantized layers to the saved format once training ends."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary  # the stage's summary: filled in when training ends

    def on_train_end(self, trainer: Any) -> None:
        self.summary["converted"] = convert_qat(trainer.adapter.model)


def prepare_qat(apply: Callable[..., dict[str, Any]], adapter: Adapter, config: MethodConfig,
                context: StageContext, options: QATOptions) -> dict[str, Any]:
    """Run the post-training method, swap its linear and conv layers for trainable
    fake-quantized ones, and arm the conversion for the next training stage."""
    originals = selected(adapter, config, (nn.Linear, nn.Conv2d))
    masked = [n for n, m in originals.items() if hasattr(m, WEIGHT_MASK)]
    if masked:
        raise RecipeError(f"qat: {masked[0]} is being pruned gradually; finish that pruning "
                          "with a finetune stage before quantizing")
    summary = apply(adapter, config, context)
    learned = options.scales == "learned"
    swaps = {}
    for name, original in originals.items():
        new = qat_module(adapter.model.get_submodule(name), original, learned)
        if new is not None:
            swaps[name] = new
    if not swaps:
        raise RecipeError(f"qat: {config.method} quantized no linear or convolution layer in "
                          "the targets, so there is nothing to train")
    replace_modules(adapter.model, swaps)
    result: dict[str, Any] = {"layers": len(swaps), "scales": options.scales}
    if options.activations is not None:
        linears = {n: m for n, m in swaps.items() if isinstance(m, QATLinear)}
        calibrate_activations(adapter, linears, options.activations, context)
        result["w8a8"] = len(linears)
    arm(context, QATCallback(result))
    return {**summary, "qat": result}
