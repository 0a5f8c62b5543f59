"""`QuantLinear` and `QuantEmbedding`: packed integer weights with group-wise scales.

Both hold only tensors: ``qweight`` (packed codes; signed int8 for symmetric 8-bit so the
integer matmul kernel can use it directly), ``scale`` [rows, groups] and, for asymmetric
grids, ``zero`` [rows, groups].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quantization.grid import QuantGrid, compute_scales, dequantize, quantize
from ..quantization.packing import pack_rows, unpack_rows
from .registry import register_module


class _PackedWeight(nn.Module):
    """Shared storage and (de)quantization of a [rows, cols] weight."""

    def __init__(self, rows: int, cols: int, grid: QuantGrid) -> None:
        super().__init__()
        self.rows, self.cols, self.grid = rows, cols, grid
        groups = grid.groups(cols)
        if self._signed_int8:
            self.register_buffer("qweight", torch.zeros(rows, cols, dtype=torch.int8))
        else:
            probe = pack_rows(torch.zeros(1, cols, dtype=torch.uint8), grid.bits)
            self.register_buffer("qweight", torch.zeros(rows, probe.shape[1], dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(rows, groups))
        if not grid.symmetric:
            self.register_buffer("zero", torch.zeros(rows, groups, dtype=torch.uint8))
        else:
            self.zero = None

    @property
    def _signed_int8(self) -> bool:
        return self.grid.bits == 8 and self.grid.symmetric

    @torch.no_grad()
    def _set_weight(self, weight: torch.Tensor) -> None:
        scale, zero = compute_scales(weight, self.grid)
        codes = quantize(weight, self.grid, scale, zero)
        if self._signed_int8:
            self.qweight.copy_((codes.to(torch.int16) - 128).to(torch.int8))
        else:
            self.qweight.copy_(pack_rows(codes, self.grid.bits))
        self.scale.copy_(scale)
        if zero is not None:
            self.zero.copy_(zero.to(torch.uint8))

    def _codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        packed = self.qweight if rows is None else self.qweight[rows]
        if self._signed_int8:
            return (packed.to(torch.int16) + 128).to(torch.uint8)
        return unpack_rows(packed, self.grid.bits, self.cols)

    def dequantized_weight(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 weight (or only the given rows)."""
        scale = self.scale if rows is None else self.scale[rows]
        zero = None if self.zero is None else (self.zero if rows is None else self.zero[rows])
        return dequantize(
            self._codes(rows), self.grid, scale, None if zero is None else zero.float()
        )

    def _grid_spec(self) -> dict[str, Any]:
        return {
            "bits": self.grid.bits,
            "group_size": self.grid.group_size,
            "symmetric": self.grid.symmetric,
        }

    @staticmethod
    def _grid_from(spec: dict[str, Any]) -> QuantGrid:
        return QuantGrid(spec["bits"], spec["group_size"], spec["symmetric"])

    def logical_params(self) -> int:
        """Parameters of the dense layer this module stands for."""
        return self.rows * self.cols + sum(p.numel() for p in self.parameters())


@register_module
class QuantLinear(_PackedWeight):
    """A linear layer with integer weights, dequantized on the fly (weight-only quantization)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, grid: QuantGrid) -> None:
        super().__init__(out_features, in_features, grid)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid: QuantGrid) -> QuantLinear:
        """Quantize a dense layer's weight with round-to-nearest min-max scales."""
        return cls.from_weight(linear.weight.detach(), linear.bias, grid)

    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, grid: QuantGrid
    ) -> QuantLinear:
        """Build from an (already adjusted) float weight, e.g. after GPTQ updates."""
        out_features, in_features = weight.shape
        mod = cls(in_features, out_features, bias is not None, grid)
        mod._set_weight(weight)
        if bias is not None:
            mod.bias.data.copy_(bias.detach().float())
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # aten._weight_int8pack_mm exists on CPU but measured ~30x slower than dequantize +
        # sgemm here, so weights are dequantized per call; fast integer kernels are separate.
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def to_dense(self) -> nn.Linear:
        """The dense layer with the dequantized weight."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense.weight.data.copy_(self.dequantized_weight())
        if self.bias is not None:
            dense.bias.data.copy_(self.bias)
        return dense

    def spec(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            **self._grid_spec(),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantLinear:
        return cls(spec["in_features"], spec["out_features"], spec["bias"], cls._grid_from(spec))

    def extra_repr(self) -> str:
        g = self.grid
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={g.bits}, group_size={g.group_size}, symmetric={g.symmetric}"
        )


@register_module
class QuantEmbedding(_PackedWeight):
    """An embedding table with integer rows; lookups unpack only the rows they need."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, grid: QuantGrid, padding_idx: int | None
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, grid)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, grid: QuantGrid) -> QuantEmbedding:
        mod = cls(emb.num_embeddings, emb.embedding_dim, grid, emb.padding_idx)
        mod._set_weight(emb.weight.detach())
        return mod

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized table (some model code reads ``embedding.weight`` directly)."""
        return self.dequantized_weight()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return self.dequantized_weight(flat).view(*ids.shape, self.embedding_dim)

    def to_dense(self) -> nn.Embedding:
        dense = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx)
        dense.weight.data.copy_(self.dequantized_weight())
        return dense

    def spec(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            **self._grid_spec(),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantEmbedding:
        return cls(
            spec["num_embeddings"], spec["embedding_dim"], cls._grid_from(spec), spec["padding_idx"]
        )

    def logical_params(self) -> int:
        return self.rows * self.cols

    def extra_repr(self) -> str:
        g = self.grid
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, bits={g.bits}, "
            f"group_size={g.group_size}, symmetric={g.symmetric}"
        )
