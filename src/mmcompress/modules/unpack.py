"""Weights stored compactly for size, unpacked after loading into dense layers for speed.

Sparse layers (bitmask plus kept values) and weight-only integer layers rebuild their dense
weight on every call: the file and the resident model are small, the forward pass is slower
than dense. `unpack_weights` trades the memory back for speed: each such layer becomes the
dense fp32 layer computing the same function. W8A8 layers (integer kernels) and factored
layers (fewer multiply-adds) are left as they are: they are faster that way.
"""

from __future__ import annotations

from torch import nn

from .quantized import QuantEmbedding, _PackedWeight
from .replace import replace_modules
from .sparse import SPARSE_FLOAT, SparseEmbedding, SparseQuantEmbedding, _SparseQuant

UNPACKABLE: tuple[type[nn.Module], ...] = (*SPARSE_FLOAT, _SparseQuant, _PackedWeight)
TABLES = (QuantEmbedding, SparseEmbedding, SparseQuantEmbedding)


def compact_layers(model: nn.Module) -> int:
    """How many linear and convolution layers of `model` rebuild their dense weight on every
    call (those `unpack_weights` would turn dense; embedding tables, which decode only the rows
    a lookup reads, are not counted)."""
    return sum(isinstance(m, UNPACKABLE) and not isinstance(m, TABLES) for m in model.modules())


def unpack_weights(model: nn.Module) -> int:
    """Replace every compact weight-only layer of `model` with its dense equivalent; returns
    how many were replaced."""
    names = [n for n, m in model.named_modules() if isinstance(m, UNPACKABLE)]
    for name in names:  # one at a time: each compact layer is freed once its dense one is in
        replace_modules(model, {name: model.get_submodule(name).to_dense()})
    return len(names)
