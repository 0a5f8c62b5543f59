"""Sparse replacement modules: a packed keep-mask (one bit per weight) plus the kept values.

`SparseLinear`, `SparseConv2d` and `SparseEmbedding` keep fp32 values. They subclass
`nn.Linear`/`nn.Conv2d`/`nn.Embedding` so that later stages (quantization, the calibration
hooks, bit allocation) treat them as the layers they stand for and read the dense weight
through ``.weight``. The `SparseQuant*` modules keep integer codes of the kept values only, with
the scales of the dense grid: what a quantize stage makes of a sparse layer, so pruned weights
stay exactly zero and cost one mask bit each.

Kept values are stored in row-major order of the [rows, cols] weight matrix (rows: outputs, or
an embedding table's tokens; cols: inputs, convolution filters flattened, or the embedding
dimension). Forward densifies the weight on the fly. A linear layer pruned to an N:M pattern
over a chosen order of its inputs (``permute``) also stores that order, ``input_order``
(int32 [cols]): its groups of M are ``input_order[k·M:(k+1)·M]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quantization.grid import QuantGrid, compute_scales, dequantize, quantize
from ..quantization.packing import gather_codes, pack_codes, packed_numel, unpack_codes
from ..sparsity.masks import kernel_position_order, parse_pattern
from .quantized import Quantized
from .registry import register_module
from .replace import filled, lookup_ids, not_reproducible, table_from_rows

_SHIFTS = torch.arange(8, dtype=torch.uint8)


_BIT_COUNTS = torch.tensor([bin(b).count("1") for b in range(256)])  # set bits per byte


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as bits (row-major, little-endian within each byte), flat uint8."""
    flat = keep.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_mask(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of `pack_mask`: the first `numel` entries as a flat bool tensor."""
    return ((bits.unsqueeze(1) >> _SHIFTS.to(bits.device)) & 1).view(-1)[:numel].bool()


def layer_args(module: nn.Module) -> dict[str, Any]:
    """JSON-able constructor arguments of a Linear, Conv2d or Embedding layer."""
    if why := not_reproducible(module):
        raise ValueError(f"cannot sparsify {module}: {why}")
    if isinstance(module, nn.Embedding):
        return {"kind": "embedding", "num_embeddings": module.num_embeddings,
                "embedding_dim": module.embedding_dim, "padding_idx": module.padding_idx,
                "bias": False}
    if isinstance(module, nn.Linear):
        return {"kind": "linear", "in_features": module.in_features,
                "out_features": module.out_features, "bias": module.bias is not None}
    if isinstance(module, nn.Conv2d):
        pad = module.padding
        return {"kind": "conv2d", "in_channels": module.in_channels,
                "out_channels": module.out_channels, "kernel_size": list(module.kernel_size),
                "stride": list(module.stride),
                "padding": pad if isinstance(pad, str) else list(pad),
                "dilation": list(module.dilation), "groups": module.groups,
                "bias": module.bias is not None}
    raise TypeError(f"cannot sparsify {type(module).__name__}")


def _weight_shape(args: dict[str, Any]) -> tuple[int, ...]:
    if args["kind"] == "linear":
        return args["out_features"], args["in_features"]
    if args["kind"] == "embedding":
        return args["num_embeddings"], args["embedding_dim"]
    return (args["out_channels"], args["in_channels"] // args["groups"], *args["kernel_size"])


def _run(args: dict[str, Any], x: torch.Tensor, weight: torch.Tensor,
         bias: torch.Tensor | None) -> torch.Tensor:
    """The layer's function with `weight` (cast to the input's dtype); embedding tables have
    lookups of their own."""
    weight = weight.to(x.dtype)
    if args["kind"] == "linear":
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, args["stride"], args["padding"], args["dilation"],
                    args["groups"])


def dense_layer(args: dict[str, Any], weight: torch.Tensor,
                bias: torch.Tensor | None) -> nn.Module:
    """A new nn.Linear/nn.Conv2d/nn.Embedding of geometry `args` (from `layer_args`) holding
    `weight`."""
    if args["kind"] == "linear":
        dense = nn.Linear(args["in_features"], args["out_features"], bias=args["bias"])
    elif args["kind"] == "embedding":
        dense = nn.Embedding(args["num_embeddings"], args["embedding_dim"], args["padding_idx"])
    else:
        dense = nn.Conv2d(args["in_channels"], args["out_channels"], args["kernel_size"],
                          args["stride"], args["padding"], args["dilation"], args["groups"],
                          args["bias"])
    return filled(dense, weight, bias)


class _MaskedLayer(nn.Module):
    """What every sparse layer shares: geometry, the packed mask, bias, manifest basics."""

    layer: dict[str, Any]
    pattern: str
    derived_buffers = ("row_start",)  # set from the mask whenever it is loaded: not saved

    def _setup(self, args: dict[str, Any], nnz: int, pattern: str, bias_grad: bool,
               ordered: bool = False) -> None:
        self.layer, self.pattern, self.nnz = dict(args), pattern, nnz
        shape = _weight_shape(args)
        self.rows, self.cols = shape[0], math.prod(shape[1:])
        self.register_buffer("mask_bits", torch.zeros(packed_numel(self.rows * self.cols, 1),
                                                      dtype=torch.uint8))
        self.register_buffer("input_order", torch.arange(self.cols, dtype=torch.int32)
                             if ordered else None)
        bias = nn.Parameter(torch.zeros(self.rows), requires_grad=bias_grad) \
            if args["bias"] else None
        self.register_parameter("bias", bias)
        # an embedding table's lookups read only their rows: where each row's values begin
        # (derived from the mask, so not saved; set whenever the mask is)
        self.register_buffer("row_start", torch.zeros(self.rows, dtype=torch.int64)
                             if args["kind"] == "embedding" else None, persistent=False)

    def _store_mask(self, keep: torch.Tensor, order: torch.Tensor | None = None) -> None:
        self.mask_bits.copy_(pack_mask(keep))
        if order is not None:
            self.input_order.copy_(order)
        self._index_rows()

    def _index_rows(self) -> None:
        """Set `row_start` from the mask (tables only), a few thousand rows at a time."""
        if self.row_start is None:
            return
        ids = torch.arange(self.rows, device=self.mask_bits.device)
        counts = torch.cat([self._keep_rows(chunk).sum(1) for chunk in ids.split(4096)])
        self.row_start = counts.cumsum(0) - counts

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any
                              ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        kept = int(_BIT_COUNTS[self.mask_bits.long()].sum())  # padding bits must be 0 too
        if kept != self.nnz:
            args[-1].append(f"{prefix}mask_bits keeps {kept} weights, but the layer holds "
                            f"{self.nnz} values")
            return
        order = self.input_order
        if order is not None and not torch.equal(
                order.sort().values, torch.arange(self.cols, dtype=order.dtype)):
            args[-1].append(f"{prefix}input_order is not an order of the layer's "
                            f"{self.cols} inputs")
            return
        self._index_rows()

    def _keep_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The keep-mask rows [n, cols] of flat row ids, unpacking no other rows."""
        if self.cols % 8 == 0:  # each row's bits start on a byte: gather bytes, then unpack
            row_bytes = self.mask_bits.view(self.rows, self.cols // 8)[ids].reshape(-1)
            return unpack_mask(row_bytes, len(ids) * self.cols).view(len(ids), self.cols)
        cols = torch.arange(self.cols, device=ids.device)
        return gather_codes(self.mask_bits, 1, ids.long()[:, None] * self.cols + cols).bool()

    def _row_entries(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For flat row ids: their keep-mask rows [n, cols], and the position in the stored
        values of each kept entry (row-major)."""
        keep = self._keep_rows(ids)
        index = self.row_start[ids][:, None] + keep.cumsum(1) - 1
        return keep, index[keep]

    def keep_mask(self) -> torch.Tensor:
        """Boolean [rows, cols]: True where a weight is kept."""
        return unpack_mask(self.mask_bits, self.rows * self.cols).view(self.rows, self.cols)

    def group_order(self) -> torch.Tensor | None:
        """The order of the columns that N:M groups run over (None: their own): the saved
        `input_order`, or a convolution's kernel position first."""
        if self.input_order is not None:
            return self.input_order.long()
        if self.layer["kind"] == "conv2d":
            k = self.layer["kernel_size"]
            return kernel_position_order(self.cols // (k[0] * k[1]), k[0] * k[1])
        return None

    def follows_pattern(self) -> bool:
        """Whether the mask keeps at most N of every group of M inputs of each row (groups
        formed over `group_order`); True for an unstructured layer."""
        nm = parse_pattern(self.pattern)
        if nm is None:
            return True
        keep, order = self.keep_mask(), self.group_order()
        if order is not None:
            keep = keep[:, order]
        return bool((keep.view(self.rows, -1, nm[1]).sum(-1) <= nm[0]).all())

    @property
    def sparsity(self) -> float:
        return 1 - self.nnz / (self.rows * self.cols)

    def logical_params(self) -> int:
        """Parameters of the dense layer this module stands for."""
        return self.rows * self.cols + (self.rows if self.bias is not None else 0)

    def to_dense(self) -> nn.Module:
        """The dense layer computing the same function (a table decoded a few thousand rows
        at a time, so a large vocabulary holds no table-sized temporaries)."""
        a = self.layer
        if a["kind"] == "embedding":
            return table_from_rows(a["num_embeddings"], a["embedding_dim"], a["padding_idx"],
                                   self)
        return dense_layer(a, self.weight.detach(), self.bias)

    def _spec(self) -> dict[str, Any]:
        spec = {"type": type(self).__name__, "layer": self.layer, "nnz": self.nnz,
                "pattern": self.pattern}
        if self.input_order is not None:
            spec["input_order"] = True
        return spec

    def _repr(self) -> str:
        order = ", input_order" if self.input_order is not None else ""
        return f"{list(_weight_shape(self.layer))}, pattern={self.pattern}{order}, " \
            f"sparsity={self.sparsity:.3f}"


class _SparseFloat(_MaskedLayer):
    """fp32 kept values (trainable: fine-tuning keeps the zeros at zero)."""

    def _init(self, args: dict[str, Any], nnz: int, pattern: str, ordered: bool) -> None:
        nn.Module.__init__(self)
        self._setup(args, nnz, pattern, bias_grad=True, ordered=ordered)
        self.values = nn.Parameter(torch.zeros(nnz))

    def _fill(self, keep: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None,
              order: torch.Tensor | None) -> None:
        with torch.no_grad():
            self._store_mask(keep, order)
            self.values.copy_(matrix[keep])
            if bias is not None:
                self.bias.copy_(bias.detach().float())

    def dense_matrix(self) -> torch.Tensor:
        """The float weight as [rows, cols], zeros where pruned (differentiable in `values`)."""
        flat = torch.zeros(self.rows * self.cols, dtype=self.values.dtype,
                           device=self.values.device)
        return flat.masked_scatter_(unpack_mask(self.mask_bits, flat.numel()), self.values) \
            .view(self.rows, self.cols)

    @torch.no_grad()
    def scale_columns(self, scale: torch.Tensor) -> None:
        """Multiply weight column j by scale[j] in place (``.weight`` is a fresh tensor on
        every access: writing into it changes nothing)."""
        self.values.mul_(scale.to(self.values.dtype)[self.keep_mask().nonzero()[:, 1]])

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """Dense weight in the original layer's shape (built on each access)."""
        return self.dense_matrix().view(_weight_shape(self.layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.layer, x, self.weight, self.bias)

    def spec(self) -> dict[str, Any]:
        return self._spec()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> _SparseFloat:
        return cls(spec["layer"], spec["nnz"], spec["pattern"], spec.get("input_order", False))

    def extra_repr(self) -> str:
        return self._repr()


@register_module
class SparseLinear(_SparseFloat, nn.Linear):
    """A linear layer stored as a keep-mask plus its kept fp32 values."""

    def __init__(self, args: dict[str, Any], nnz: int, pattern: str = "unstructured",
                 ordered: bool = False) -> None:
        self._init(args, nnz, pattern, ordered)
        self.in_features, self.out_features = args["in_features"], args["out_features"]


@register_module
class SparseConv2d(_SparseFloat, nn.Conv2d):
    """A 2-d convolution stored as a keep-mask plus its kept fp32 values."""

    def __init__(self, args: dict[str, Any], nnz: int, pattern: str = "unstructured",
                 ordered: bool = False) -> None:
        self._init(args, nnz, pattern, ordered)
        # what nn.Conv2d's readers (calibration's unfold, AWQ) look up
        self.in_channels, self.out_channels = args["in_channels"], args["out_channels"]
        self.kernel_size, self.stride = tuple(args["kernel_size"]), tuple(args["stride"])
        pad = args["padding"]
        self.padding = pad if isinstance(pad, str) else tuple(pad)
        self.dilation, self.groups = tuple(args["dilation"]), args["groups"]
        self.transposed, self.output_padding, self.padding_mode = False, (0, 0), "zeros"


@register_module
class SparseEmbedding(_SparseFloat, nn.Embedding):
    """An embedding table stored as a keep-mask plus its kept fp32 values."""

    def __init__(self, args: dict[str, Any], nnz: int, pattern: str = "unstructured",
                 ordered: bool = False) -> None:
        self._init(args, nnz, pattern, ordered)
        # what nn.Embedding's readers look up
        self.num_embeddings, self.embedding_dim = args["num_embeddings"], args["embedding_dim"]
        self.padding_idx, self.max_norm, self.norm_type = args["padding_idx"], None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = lookup_ids(ids, self.rows)
        keep, index = self._row_entries(flat)
        values = self.values[index]
        if self.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            padding = (flat == self.padding_idx)[:, None].expand_as(keep)[keep]
            values = torch.where(padding, values.detach(), values)
        rows = torch.zeros(keep.shape, dtype=self.values.dtype, device=self.values.device)
        return rows.masked_scatter(keep, values).view(*ids.shape, self.cols)


SPARSE_FLOAT = (SparseLinear, SparseConv2d, SparseEmbedding)
_FLOAT_CLASS = {"linear": SparseLinear, "conv2d": SparseConv2d, "embedding": SparseEmbedding}


def is_sparse(module: nn.Module) -> bool:
    """Whether `module` is a float sparse layer (one a quantize stage turns into SparseQuant*)."""
    return isinstance(module, SPARSE_FLOAT)


def sparse_module(module: nn.Module, keep: torch.Tensor, matrix: torch.Tensor | None = None,
                  pattern: str = "unstructured", order: torch.Tensor | None = None
                  ) -> _SparseFloat:
    """The sparse replacement of a Linear/Conv2d/Embedding keeping `keep` ([rows, cols]) of `matrix`
    (default: the layer's own weight as [rows, cols]); `order`: the inputs' order its N:M
    groups were formed over, when not their own (for a convolution, not
    kernel position first)."""
    args = layer_args(module)
    if matrix is None:
        matrix = module.weight.detach().float().reshape(keep.shape)
    mod = _FLOAT_CLASS[args["kind"]](args, int(keep.sum()), pattern, order is not None)
    mod._fill(keep, matrix, getattr(module, "bias", None), order)
    return mod


class _SparseQuant(_MaskedLayer):
    """Integer codes of the kept values; per-group scales of the dense grid. With an input
    scale s (AWQ) the stored weight is W·diag(s) and inputs are divided by s."""

    def __init__(self, args: dict[str, Any], nnz: int, pattern: str, grid: QuantGrid,
                 input_scale: bool = False, ordered: bool = False) -> None:
        super().__init__()
        self._setup(args, nnz, pattern, bias_grad=False, ordered=ordered)
        self.grid = grid
        if self._signed_int8:
            self.register_buffer("qvalues", torch.zeros(nnz, dtype=torch.int8))
        else:
            self.register_buffer("qvalues", torch.zeros(packed_numel(nnz, grid.bits),
                                                        dtype=torch.uint8))
        groups = grid.groups(self.cols)
        self.register_buffer("scale", torch.ones(self.rows, groups))
        zero = None if grid.symmetric else torch.zeros(self.rows, groups, dtype=torch.uint8)
        self.register_buffer("zero", zero)
        if input_scale and args["kind"] == "embedding":
            raise ValueError("an embedding table has no input channels to scale")
        n_in = args["in_features"] if args["kind"] == "linear" else args.get("in_channels")
        self.register_buffer("input_scale", torch.ones(n_in) if input_scale else None)

    @property
    def _signed_int8(self) -> bool:
        return self.grid.bits == 8 and self.grid.symmetric

    def _scale_columns(self, s: torch.Tensor) -> torch.Tensor:
        """An input scale per column of the [rows, cols] matrix."""
        if self.layer["kind"] == "linear":
            return s
        k = self.layer["kernel_size"]
        return s.repeat_interleave(k[0] * k[1])

    @classmethod
    def from_sparse(cls, module: _SparseFloat, grid: QuantGrid, quantized: Quantized | None = None,
                    input_scale: torch.Tensor | None = None) -> _SparseQuant:
        """Quantize a sparse layer's kept values (min-max unless `quantized` codes for the whole
        [rows, cols] matrix are given; codes at pruned positions are dropped)."""
        order = module.input_order
        mod = cls(module.layer, module.nnz, module.pattern, grid, input_scale is not None,
                  order is not None)
        keep = module.keep_mask()
        matrix = module.dense_matrix().detach()
        if input_scale is not None:
            matrix = matrix * mod._scale_columns(input_scale)
        if quantized is None:
            scale, zero = compute_scales(matrix, grid)
            codes = quantize(matrix, grid, scale, zero)
        else:
            codes, scale, zero = quantized
        kept = codes[keep]
        with torch.no_grad():
            mod._store_mask(keep, order)
            if mod._signed_int8:
                mod.qvalues.copy_((kept.to(torch.int16) - 128).to(torch.int8))
            else:
                mod.qvalues.copy_(pack_codes(kept, grid.bits))
            mod.scale.copy_(scale)
            if zero is not None:
                mod.zero.copy_(zero.to(torch.uint8))
            if input_scale is not None:
                mod.input_scale.copy_(input_scale)
            if module.bias is not None:
                mod.bias.copy_(module.bias.detach())
        return mod

    def _kept_codes(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned codes of the kept values (those at `index`, default all) as uint8."""
        if self._signed_int8:
            q = self.qvalues if index is None else self.qvalues[index]
            return (q.to(torch.int16) + 128).to(torch.uint8)
        if index is None:
            return unpack_codes(self.qvalues, self.grid.bits, self.nnz)
        return gather_codes(self.qvalues, self.grid.bits, index)

    def _dequantize(self, keep: torch.Tensor, kept: torch.Tensor,
                    rows: torch.Tensor | slice) -> torch.Tensor:
        """Float values of `rows` whose keep-mask is `keep` and kept codes `kept`."""
        codes = torch.zeros(keep.shape, dtype=torch.uint8, device=kept.device)
        codes.masked_scatter_(keep, kept)
        zero = None if self.zero is None else self.zero[rows].float()
        return dequantize(codes, self.grid, self.scale[rows], zero) * keep

    def dequantized_matrix(self) -> torch.Tensor:
        """Float [rows, cols] as stored (input scale still folded in), zeros where pruned."""
        return self._dequantize(self.keep_mask(), self._kept_codes(), slice(None))

    def dense_weight(self) -> torch.Tensor:
        """The float weight in the original layer's shape, computing the same function."""
        w = self.dequantized_matrix()
        if self.input_scale is not None:
            w = w / self._scale_columns(self.input_scale)
        return w.view(_weight_shape(self.layer))

    @property
    def weight(self) -> torch.Tensor:
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            s = self.input_scale if self.layer["kind"] == "linear" else \
                self.input_scale.view(1, -1, 1, 1)
            x = x / s
        w = self.dequantized_matrix().view(_weight_shape(self.layer))
        return _run(self.layer, x, w, self.bias)

    def spec(self) -> dict[str, Any]:
        g = self.grid
        return {**self._spec(), "bits": g.bits, "group_size": g.group_size,
                "symmetric": g.symmetric, "input_scale": self.input_scale is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> _SparseQuant:
        grid = QuantGrid(spec["bits"], spec["group_size"], spec["symmetric"])
        return cls(spec["layer"], spec["nnz"], spec["pattern"], grid, spec["input_scale"],
                   spec.get("input_order", False))

    def extra_repr(self) -> str:
        g = self.grid
        return f"{self._repr()}, bits={g.bits}, group_size={g.group_size}, " \
            f"symmetric={g.symmetric}" + (", input_scale" if self.input_scale is not None else "")


@register_module
class SparseQuantLinear(_SparseQuant):
    """A sparse linear layer with integer kept values."""


@register_module
class SparseQuantConv2d(_SparseQuant):
    """A sparse 2-d convolution with integer kept values."""


@register_module
class SparseQuantEmbedding(_SparseQuant):
    """A sparse embedding table with integer kept values (a scale per token row); lookups
    decode only their rows."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = lookup_ids(ids, self.rows)
        keep, index = self._row_entries(flat)
        rows = self._dequantize(keep, self._kept_codes(index), flat)
        return rows.view(*ids.shape, self.cols)


_QUANT_CLASS = {"linear": SparseQuantLinear, "conv2d": SparseQuantConv2d,
                "embedding": SparseQuantEmbedding}


def sparse_quantized(module: _SparseFloat, grid: QuantGrid, quantized: Quantized | None = None,
                     input_scale: torch.Tensor | None = None) -> _SparseQuant:
    """What a quantize stage makes of a sparse layer."""
    return _QUANT_CLASS[module.layer["kind"]].from_sparse(module, grid, quantized, input_scale)
