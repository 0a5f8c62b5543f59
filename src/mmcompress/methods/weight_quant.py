"""What the weight-quantization methods share: the config, the layer kinds, the swap."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import nn

from ..modules import HalfWeight, QuantConv2d, QuantEmbedding, QuantLinear
from ..modules.quantized import Quantized
from ..modules.replace import replace_modules
from ..modules.sparse import is_sparse, sparse_quantized
from ..quantization.grid import QuantGrid
from .allocation import BitBudget
from .base import LAYER_ORDER, MethodConfig, layer_types
from .training_hooks import QATOptions, parse_qat


class LayerKindsConfig(MethodConfig):
    """Which layer types a quantization method takes: linear layers, and convolutions and
    embedding tables unless switched off."""

    embeddings: bool = Field(True, description="also quantize embedding tables (round-to-nearest)")
    convolutions: bool = Field(True, description="also quantize 2-d convolutions")

    layer_order: ClassVar[int | None] = LAYER_ORDER.index("quantization")

    def kinds(self) -> tuple[type[nn.Module], ...]:
        """Layer types this config quantizes."""
        return layer_types(self.convolutions, self.embeddings)


# what `bits: 16` (half-precision storage) reads; any other setting given is refused
_HALF_OPTIONS = {"method", "bits", "dtype", "targets", "ignore", "embeddings", "convolutions"}


class WeightQuantConfig(LayerKindsConfig):
    """Weight grid shared by weight-quantization methods."""

    bits: int = Field(8, description="integer bits per weight (2..8), or 16 for fp16/bf16")
    dtype: Literal["fp16", "bf16"] = Field("fp16", description="storage type when bits is 16")
    group_size: PositiveInt | None = Field(None, description="values per scale; null = per channel")
    symmetric: bool = Field(True, description="symmetric grid (no zero point); false: "
                            "asymmetric, one zero point per scale")
    budget: BitBudget | None = Field(None, description="choose bits per layer to meet a size")
    qat: bool | QATOptions = Field(False, description="quantization-aware training: a later "
                                   "finetune/distill stage trains the quantized layers")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not (2 <= v <= 8 or v == 16):
            raise ValueError(f"bits must be 2..8 (integer) or 16 (half precision), got {v}")
        return v

    @field_validator("qat", mode="before")
    @classmethod
    def _qat(cls, v: object) -> bool | QATOptions:
        return parse_qat(v)

    @model_validator(mode="after")
    def _qat_needs_integers(self) -> WeightQuantConfig:
        if self.qat and self.bits == 16:
            raise ValueError("qat trains integer grids; bits 16 has none (use bits 2..8)")
        acts = self.qat.activations if isinstance(self.qat, QATOptions) else None
        if acts is not None and (self.method, self.bits, self.group_size, self.symmetric,
                                 self.qat.scales) != ("rtn", 8, None, True, "minmax"):
            raise ValueError("qat activations train W8A8 layers: use method rtn, bits 8, "
                             "group_size null, symmetric true and scales minmax")
        if acts is not None and self.budget is not None:
            raise ValueError("qat activations train W8A8 layers, 8 bits each; a budget "
                             "would give layers other widths (drop budget or activations)")
        return self

    @model_validator(mode="after")
    def _budget_needs_integers(self) -> WeightQuantConfig:
        if self.budget is not None and self.bits == 16:
            raise ValueError("budget chooses integer widths; bits 16 stores half precision "
                             "(drop budget or bits 16)")
        return self

    @model_validator(mode="after")
    def _options_that_apply(self) -> WeightQuantConfig:
        """Bits 16 stores half precision: grid and calibration options would do nothing
        there, so one given is refused; `dtype` is the half type, which integer grids lack."""
        if self.bits == 16:
            unused = sorted(self.model_fields_set - _HALF_OPTIONS)
            if unused:
                raise ValueError(f"{', '.join(unused)}: bits 16 stores the weights in half "
                                 "precision, without a grid or calibration (drop them or use "
                                 "bits 2..8)")
        elif "dtype" in self.model_fields_set:
            raise ValueError("dtype is the storage type of bits 16 (fp16 or bf16); integer "
                             f"grids ({self.bits} bits) have none")
        return self

    def grid(self) -> QuantGrid:
        return QuantGrid(self.bits, self.group_size, self.symmetric)

    def layout(self, module: nn.Module, grid: QuantGrid) -> nn.Module:
        """`module` as this method stores it at `grid`, with round-to-nearest codes: what the
        bit budget measures and sizes."""
        return quantized_module(module, grid)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as [rows, cols] float32: outputs × inputs (filters flattened)."""
    w = module.weight.detach().float()
    return w.reshape(w.shape[0], -1)


def quantized_module(
    module: nn.Module,
    grid: QuantGrid,
    quantized: Quantized | None = None,
    input_scale: torch.Tensor | None = None,
) -> nn.Module:
    """The quantized replacement of a Linear, Conv2d or Embedding layer."""
    if is_sparse(module):  # keep the mask; quantize only the kept values
        return sparse_quantized(module, grid, quantized, input_scale)
    if isinstance(module, nn.Linear):
        return QuantLinear.from_linear(module, grid, quantized, input_scale)
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.from_conv(module, grid, quantized, input_scale)
    if isinstance(module, nn.Embedding):
        return QuantEmbedding.from_embedding(module, grid)
    raise TypeError(f"cannot quantize {type(module).__name__}")


def sparse_stored_dense(modules: Iterable[nn.Module]) -> dict[str, int]:
    """The summary's count of pruned layers a dense format takes over (fp16/bf16, W8A8): their
    zeros stay, their compact storage does not."""
    n = sum(is_sparse(m) for m in modules)
    return {"sparse_stored_dense": n} if n else {}


def store_half(adapter, modules: dict[str, nn.Module], dtype: str) -> dict[str, int]:
    """``bits: 16`` on any method: keep the weights, store them in fp16 or bf16."""
    dense = sparse_stored_dense(modules.values())
    replace_modules(
        adapter.model, {n: HalfWeight.from_module(m, dtype) for n, m in modules.items()}
    )
    return {"modules": len(modules), **dense}
