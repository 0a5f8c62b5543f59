"""The one module-replacement helper every method uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

Layer = TypeVar("Layer", bound=nn.Module)


def get_submodule(model: nn.Module, fqn: str) -> nn.Module:
    """Return the submodule at dotted name `fqn` ('' is the model itself)."""
    return model.get_submodule(fqn) if fqn else model


def replace_modules(model: nn.Module, replacements: Mapping[str, nn.Module]) -> None:
    """Swap each named submodule for its replacement by `setattr` on the parent.

    The names are resolved before anything changes, so replacing one module never
    affects how another name resolves.
    """
    targets = []
    for fqn, new in replacements.items():
        parent_name, _, child = fqn.rpartition(".")
        parent = get_submodule(model, parent_name)
        if not hasattr(parent, child):
            raise KeyError(f"no module named {fqn!r}")
        targets.append((parent, child, new))
    for parent, child, new in targets:
        setattr(parent, child, new)


def not_reproducible(module: nn.Module) -> str | None:
    """Why no compact layer (quantized, sparse, half precision) computes what `module` does,
    or None: a convolution padding other than with zeros, an embedding renormalising rows."""
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        return f"padding_mode {module.padding_mode!r} (compact layers pad with zeros)"
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return "max_norm renormalises rows on lookup"
    return None


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """`conv`'s zero padding as numbers. ``"valid"`` (SigLIP's patch embedding) is none;
    ``"same"`` is half the dilated kernel on each side where that is a whole number."""
    if not isinstance(conv.padding, str):
        return (int(conv.padding[0]), int(conv.padding[1]))
    if conv.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    if any(t % 2 for t in total):
        raise ValueError(f"{conv}: padding 'same' pads one side more than the other for this "
                         "kernel, which only an explicit padding layer can express")
    return (total[0] // 2, total[1] // 2)


def filled(layer: Layer, weight: torch.Tensor, bias: torch.Tensor | None) -> Layer:
    """A new dense `layer` (nn.Linear, nn.Conv2d) with `weight` and `bias` copied in."""
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def lookup_ids(ids: torch.Tensor, num: int) -> torch.Tensor:
    """`ids` flattened, refused as `nn.Embedding` refuses them when outside [0, num): a
    compact table would otherwise read a negative id as a row from the end. Not checked
    inside `torch.compile` (reading the bounds back would break the graph at every call)."""
    flat = ids.reshape(-1)
    if torch.compiler.is_compiling():
        return flat
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num):
        raise IndexError(f"index out of range in self (ids must be in [0, {num}))")
    return flat


def table_from_rows(num: int, dim: int, padding_idx: int | None,
                    rows: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4096
                    ) -> nn.Embedding:
    """A new nn.Embedding whose rows are `rows(ids)`, decoded `chunk` rows at a time into a
    table given uninitialised memory: a large vocabulary costs the table itself and no
    table-sized temporaries (no random initialisation, no decoded copy to copy in)."""
    with torch.device("meta"):
        table = nn.Embedding(num, dim, padding_idx)
    table.to_empty(device="cpu")
    with torch.no_grad():
        for ids in torch.arange(num).split(chunk):
            table.weight[int(ids[0]): int(ids[-1]) + 1] = rows(ids)
    return table
