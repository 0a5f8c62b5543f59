"""What the weight-quantization methods share: the config, the layer kinds, the swap."""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..modules import QuantConv2d, QuantEmbedding, QuantLinear
from ..modules.quantized import Quantized
from ..quantization.grid import QuantGrid
from .allocation import BitBudget
from .base import MethodConfig


class WeightQuantConfig(MethodConfig):
    """Weight grid shared by weight-quantization methods."""

    bits: int = Field(8, ge=2, le=8, description="integer bits per weight")
    group_size: PositiveInt | None = Field(None, description="values per scale; null = per channel")
    symmetric: bool = True
    embeddings: bool = Field(True, description="also quantize embedding tables (round-to-nearest)")
    convolutions: bool = Field(True, description="also quantize 2-d convolutions")
    budget: BitBudget | None = Field(None, description="choose bits per layer to meet a size")

    def grid(self) -> QuantGrid:
        return QuantGrid(self.bits, self.group_size, self.symmetric)

    def kinds(self) -> tuple[type[nn.Module], ...]:
        """Layer types this config quantizes."""
        kinds: tuple[type[nn.Module], ...] = (nn.Linear,)
        if self.convolutions:
            kinds += (nn.Conv2d,)
        if self.embeddings:
            kinds += (nn.Embedding,)
        return kinds


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as [rows, cols] float32: outputs × inputs (filters flattened)."""
    w = module.weight.detach().float()
    return w.reshape(w.shape[0], -1)


def quantized_module(module: nn.Module, grid: QuantGrid, quantized: Quantized | None = None,
                     input_scale: torch.Tensor | None = None) -> nn.Module:
    """The quantized replacement of a Linear, Conv2d or Embedding layer."""
    if isinstance(module, nn.Linear):
        return QuantLinear.from_linear(module, grid, quantized, input_scale)
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.from_conv(module, grid, quantized, input_scale)
    if isinstance(module, nn.Embedding):
        return QuantEmbedding.from_embedding(module, grid)
    raise TypeError(f"cannot quantize {type(module).__name__}")
