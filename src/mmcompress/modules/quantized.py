"""Quantized replacement modules: packed integer weights with group-wise scales.

Each holds only tensors: ``qweight`` (packed codes; signed int8 for symmetric 8-bit),
``scale`` [rows, groups], for asymmetric grids ``zero`` [rows, groups], and optionally
``input_scale`` [in_features]: activation-aware methods (AWQ, SmoothQuant) quantize
``W·diag(s)`` and feed ``x / s``, which leaves the float product unchanged.
Weights are dequantized on the fly (weight-only quantization); `to_dense` undoes the swap.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quantization.grid import QuantGrid, Quantized, compute_scales, dequantize, quantize
from ..quantization.packing import pack_rows, packed_row_bytes, unpack_rows
from .registry import register_module
from .replace import conv_padding, filled, lookup_ids, not_reproducible, table_from_rows

ROWS_PER_CHUNK = 4096  # rows quantized at a time: bounds the temporaries of a large table


class _PackedWeight(nn.Module):
    """Shared storage and (de)quantization of a weight viewed as [rows, cols]."""

    def __init__(self, rows: int, cols: int, grid: QuantGrid, input_scale: int = 0) -> None:
        super().__init__()
        self.rows, self.cols, self.grid = rows, cols, grid
        groups = grid.groups(cols)
        if self._signed_int8:
            self.register_buffer("qweight", torch.zeros(rows, cols, dtype=torch.int8))
        else:
            row_bytes = packed_row_bytes(cols, grid.bits)
            self.register_buffer("qweight", torch.zeros(rows, row_bytes, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(rows, groups))
        zero = None if grid.symmetric else torch.zeros(rows, groups, dtype=torch.uint8)
        self.register_buffer("zero", zero)
        self.register_buffer("input_scale", torch.ones(input_scale) if input_scale else None)

    @property
    def _signed_int8(self) -> bool:
        return self.grid.bits == 8 and self.grid.symmetric

    @torch.no_grad()
    def _store(self, weight: torch.Tensor, quantized: Quantized | None,
               input_scale: torch.Tensor | None) -> None:
        """Store `weight` ([rows, cols], already multiplied by any input scale) with min-max
        scales, or the codes a calibrated method computed. Rows go in chunks (scales are per
        row), so quantizing a large embedding table needs no full-size temporaries."""
        for start in range(0, self.rows, ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            if quantized is None:
                w = weight[rows]
                scale, zero = compute_scales(w, self.grid)
                codes = quantize(w, self.grid, scale, zero)
            else:
                codes, scale, zero = (None if t is None else t[rows] for t in quantized)
            if self._signed_int8:
                self.qweight[rows] = (codes.to(torch.int16) - 128).to(torch.int8)
            else:
                self.qweight[rows] = pack_rows(codes, self.grid.bits)
            self.scale[rows] = scale
            if zero is not None:
                self.zero[rows] = zero.to(torch.uint8)
        if input_scale is not None:
            self.input_scale.copy_(input_scale)

    def _codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        packed = self.qweight if rows is None else self.qweight[rows]
        if self._signed_int8:
            return (packed.to(torch.int16) + 128).to(torch.uint8)
        return unpack_rows(packed, self.grid.bits, self.cols)

    def dequantized_weight(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 [rows, cols] weight as stored (input scale still folded in)."""
        scale = self.scale if rows is None else self.scale[rows]
        zero = self.zero if rows is None or self.zero is None else self.zero[rows]
        return dequantize(self._codes(rows), self.grid, scale,
                          None if zero is None else zero.float())

    def dense_weight(self) -> torch.Tensor:
        """The float weight in the original layer's shape, computing the same function."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """Dense view of the weight, for model code that reads ``layer.weight`` (e.g. dtype)."""
        return self.dense_weight()

    def _base_spec(self) -> dict[str, Any]:
        g = self.grid
        return {"type": type(self).__name__, "bits": g.bits, "group_size": g.group_size,
                "symmetric": g.symmetric, "input_scale": self.input_scale is not None}

    @staticmethod
    def _grid_from(spec: dict[str, Any]) -> QuantGrid:
        return QuantGrid(spec["bits"], spec["group_size"], spec["symmetric"])

    def logical_params(self) -> int:
        """Parameters of the dense layer this module stands for."""
        return self.rows * self.cols + sum(p.numel() for p in self.parameters())

    def _grid_repr(self) -> str:
        g = self.grid
        extra = ", input_scale" if self.input_scale is not None else ""
        return f"bits={g.bits}, group_size={g.group_size}, symmetric={g.symmetric}{extra}"


def _bias(module: nn.Module, bias: bool, n: int) -> None:
    module.bias = nn.Parameter(torch.zeros(n), requires_grad=False) if bias else None


@register_module
class QuantLinear(_PackedWeight):
    """A linear layer with integer weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool, grid: QuantGrid,
                 input_scale: bool = False) -> None:
        super().__init__(out_features, in_features, grid, in_features if input_scale else 0)
        self.in_features, self.out_features = in_features, out_features
        _bias(self, bias, out_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid: QuantGrid, quantized: Quantized | None = None,
                    input_scale: torch.Tensor | None = None) -> QuantLinear:
        """Quantize `linear` (round-to-nearest unless `quantized` codes are given). With
        `input_scale` s, the stored weight is W·diag(s) and inputs are divided by s."""
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, grid,
                  input_scale is not None)
        weight = linear.weight.detach().float()
        if input_scale is not None:
            weight = weight * input_scale
        mod._store(weight, quantized, input_scale)
        if linear.bias is not None:
            mod.bias.data.copy_(linear.bias.detach().float())
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def dense_weight(self) -> torch.Tensor:
        w = self.dequantized_weight()
        return w if self.input_scale is None else w / self.input_scale

    def to_dense(self) -> nn.Linear:
        """The dense layer computing the same function."""
        return filled(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None),
                      self.dense_weight(), self.bias)

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec(), "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantLinear:
        return cls(spec["in_features"], spec["out_features"], spec["bias"], cls._grid_from(spec),
                   spec.get("input_scale", False))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + \
            self._grid_repr()


@register_module
class QuantConv2d(_PackedWeight):
    """A 2-d convolution with integer weights; rows are output channels, columns the
    flattened (in_channels/groups × kh × kw) filter, so scales are per output channel."""

    def __init__(self, conv: dict[str, Any], grid: QuantGrid, input_scale: bool = False) -> None:
        cin, cout, k = conv["in_channels"], conv["out_channels"], conv["kernel_size"]
        super().__init__(cout, cin // conv["groups"] * k[0] * k[1], grid,
                         cin if input_scale else 0)
        self.conv = dict(conv)
        self.in_channels, self.out_channels = cin, cout  # as nn.Conv2d names them
        _bias(self, conv["bias"], cout)

    @staticmethod
    def conv_args(conv: nn.Conv2d) -> dict[str, Any]:
        return {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
                "kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
                "padding": list(conv_padding(conv)), "dilation": list(conv.dilation),
                "groups": conv.groups, "bias": conv.bias is not None}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, grid: QuantGrid, quantized: Quantized | None = None,
                  input_scale: torch.Tensor | None = None) -> QuantConv2d:
        if why := not_reproducible(conv):
            raise ValueError(f"cannot quantize {conv}: {why}")
        mod = cls(cls.conv_args(conv), grid, input_scale is not None)
        weight = conv.weight.detach().float()
        if input_scale is not None:
            weight = weight * input_scale.view(1, -1, 1, 1)
        mod._store(weight.reshape(mod.rows, -1), quantized, input_scale)
        if conv.bias is not None:
            mod.bias.data.copy_(conv.bias.detach().float())
        return mod

    def _filters(self) -> torch.Tensor:
        c = self.conv
        shape = (c["out_channels"], c["in_channels"] // c["groups"], *c["kernel_size"])
        return self.dequantized_weight().view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.view(1, -1, 1, 1)
        c = self.conv
        return F.conv2d(x, self._filters().to(x.dtype), self.bias, c["stride"], c["padding"],
                        c["dilation"], c["groups"])

    def dense_weight(self) -> torch.Tensor:
        w = self._filters()
        return w if self.input_scale is None else w / self.input_scale.view(1, -1, 1, 1)

    def to_dense(self) -> nn.Conv2d:
        c = self.conv
        return filled(nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"],
                                c["stride"], c["padding"], c["dilation"], c["groups"],
                                c["bias"]), self.dense_weight(), self.bias)

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec(), "conv": self.conv}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantConv2d:
        return cls(spec["conv"], cls._grid_from(spec), spec.get("input_scale", False))

    def extra_repr(self) -> str:
        c = self.conv
        return f"{c['in_channels']}, {c['out_channels']}, kernel_size={c['kernel_size']}, " + \
            self._grid_repr()


@register_module
class QuantEmbedding(_PackedWeight):
    """An embedding table with integer rows; lookups unpack only the rows they need."""

    def __init__(self, num_embeddings: int, embedding_dim: int, grid: QuantGrid,
                 padding_idx: int | None) -> None:
        super().__init__(num_embeddings, embedding_dim, grid)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, grid: QuantGrid) -> QuantEmbedding:
        if why := not_reproducible(emb):
            raise ValueError(f"cannot quantize {emb}: {why}")
        mod = cls(emb.num_embeddings, emb.embedding_dim, grid, emb.padding_idx)
        mod._store(emb.weight.detach().float(), None, None)
        return mod

    def dense_weight(self) -> torch.Tensor:
        return self.dequantized_weight()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.dequantized_weight(lookup_ids(ids, self.num_embeddings))
        return rows.view(*ids.shape, self.embedding_dim)

    def to_dense(self) -> nn.Embedding:
        return table_from_rows(self.num_embeddings, self.embedding_dim, self.padding_idx,
                               self.dequantized_weight)

    def spec(self) -> dict[str, Any]:
        return {**self._base_spec(), "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "padding_idx": self.padding_idx}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantEmbedding:
        return cls(spec["num_embeddings"], spec["embedding_dim"], cls._grid_from(spec),
                   spec["padding_idx"])

    def logical_params(self) -> int:
        return self.rows * self.cols

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, " + self._grid_repr()
