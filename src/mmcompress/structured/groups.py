"""Dependency groups and the per-layer prune functions that physically shrink them.

A `UnitGroup` names the layers one kind of unit couples (Torch-Pruning's dependency group,
written down per architecture instead of traced): removing unit ``u`` removes rows
``u*out_width … (u+1)*out_width - 1`` of every *output* layer (Linear rows and bias, conv
output channels, BatchNorm features) and the matching columns of every *input* layer (the
consumer: Linear columns, conv input channels). Layers are swapped for smaller plain
``nn.Linear`` / ``nn.Conv2d`` / ``nn.BatchNorm2d``, so `io.structure` records the new shapes
and reload works without anything special.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import skip_init

from ..errors import RecipeError
from ..evaluation.evaluate import count_params, parameter_counts
from ..modules.replace import replace_modules

PRUNABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)


@dataclass(frozen=True)
class UnitGroup:
    """Coupled layers whose units (heads, neurons, channels) are removed together."""

    kind: str  # "heads" | "neurons" | "channels"
    name: str  # where the units live, e.g. '…layers.0.self_attn' (used in messages)
    outputs: tuple[str, ...]  # layers whose outputs are the units
    inputs: tuple[str, ...]  # layers that consume them
    size: int  # number of units
    out_width: int = 1  # output indices per unit (head_dim for heads)
    in_width: int = 1  # input indices per unit (head_dim; spatial size after a flatten)
    #: (module, attribute, multiplier): set to kept units × multiplier after pruning
    attrs: tuple[tuple[str, str, int], ...] = ()
    layer: str | None = None  # the removable layer (ModuleList entry) holding the group


@dataclass(frozen=True)
class LayerList:
    """A list of residual blocks some of which may be removed whole."""

    name: str  # the ModuleList / Sequential
    length: int
    removable: tuple[int, ...]  # indices whose removal keeps the forward well-defined

    def entry(self, i: int) -> str:
        return f"{self.name}.{i}"


def _expand(units: Sequence[int], width: int) -> torch.Tensor:
    u = torch.as_tensor(sorted(units), dtype=torch.long)
    return (u[:, None] * width + torch.arange(width)).flatten()


def _like(cls: type[nn.Module], ref: nn.Module, *args, **kwargs) -> nn.Module:
    p = next(iter(ref.parameters()), None)
    b = next(iter(ref.buffers()), None)
    t = p if p is not None else b
    new = skip_init(cls, *args, device=t.device, dtype=t.dtype, **kwargs)
    new.train(ref.training)
    return new


def _copy(dst: torch.Tensor | None, src: torch.Tensor | None) -> None:
    if dst is not None and src is not None:
        dst.copy_(src)


@torch.no_grad()
def keep_outputs(module: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A copy of `module` with only output rows / channels / features `idx`."""
    n = len(idx)
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear):
        new = _like(nn.Linear, module, module.in_features, n, bias=bias is not None)
    elif isinstance(module, nn.Conv2d):
        new = _like(nn.Conv2d, module, module.in_channels, n, module.kernel_size,
                    module.stride, module.padding, module.dilation, module.groups,
                    bias is not None, module.padding_mode)
    elif isinstance(module, nn.BatchNorm2d):
        new = _like(nn.BatchNorm2d, module, n, module.eps, module.momentum, module.affine,
                    module.track_running_stats)
        for key in ("running_mean", "running_var"):
            _copy(getattr(new, key), None if getattr(module, key) is None
                  else getattr(module, key)[idx])
        _copy(new.num_batches_tracked, module.num_batches_tracked)
    else:
        raise TypeError(type(module).__name__)
    if module.weight is not None:
        _copy(new.weight, module.weight[idx])
        new.weight.requires_grad_(module.weight.requires_grad)
    if bias is not None:
        _copy(new.bias, bias[idx])
        new.bias.requires_grad_(bias.requires_grad)
    return new


@torch.no_grad()
def keep_inputs(module: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A copy of `module` reading only input features / channels `idx`."""
    bias = module.bias
    if isinstance(module, nn.Linear):
        new = _like(nn.Linear, module, len(idx), module.out_features, bias=bias is not None)
    elif isinstance(module, nn.Conv2d) and module.groups == 1:
        new = _like(nn.Conv2d, module, len(idx), module.out_channels, module.kernel_size,
                    module.stride, module.padding, module.dilation, 1, bias is not None,
                    module.padding_mode)
    else:
        raise TypeError(type(module).__name__)
    new.weight.copy_(module.weight[:, idx])
    new.weight.requires_grad_(module.weight.requires_grad)
    if bias is not None:
        new.bias.copy_(bias)
        new.bias.requires_grad_(bias.requires_grad)
    return new


def check_prunable(model: nn.Module, group: UnitGroup) -> None:
    """Refuse groups holding layers already replaced (quantized, low-rank …)."""
    for name in group.outputs + group.inputs:
        module = model.get_submodule(name)
        # the plain types only: sparse layers and QAT's fake-quantized ones subclass them
        ok = type(module) in PRUNABLE and not (
            isinstance(module, nn.Conv2d) and module.groups != 1)
        if not ok:
            raise RecipeError(
                f"structured pruning cannot shrink {name} ({type(module).__name__}); run it "
                "before unstructured pruning, quantizing (QAT too) or factorising, or leave "
                "the layer out with 'ignore:'")


@torch.no_grad()
def _compensate(old: nn.Module, new: nn.Module, dropped: torch.Tensor,
                mean: torch.Tensor) -> nn.Module:
    """Fold the dropped inputs' mean contribution, W[:, dropped] · E[x_dropped], into the
    bias (FLAP's bias compensation); a layer without a bias gets one."""
    w = old.weight.detach()
    if isinstance(old, nn.Conv2d):  # engine rows are (channel, kh, kw)
        shift = w[:, dropped].reshape(w.shape[0], -1).float() @ (
            mean.reshape(old.in_channels, -1)[dropped].reshape(-1))
    else:
        shift = w[:, dropped].float() @ mean[dropped]
    if new.bias is None:
        bias = nn.Parameter(torch.zeros_like(shift, dtype=w.dtype),
                            requires_grad=w.requires_grad)
        new.register_parameter("bias", bias)
    new.bias.add_(shift.to(new.bias.dtype))
    return new


def prune_units(model: nn.Module, group: UnitGroup, remove: Sequence[int],
                means: dict[str, torch.Tensor] | None = None) -> None:
    """Physically remove units `remove` of `group` and update the attention attributes.

    With `means` (each consumer's mean input per feature), the removed units' average
    contribution is kept in the consumers' biases instead of being dropped.
    """
    if not remove:
        return
    kept = [u for u in range(group.size) if u not in set(remove)]
    if not kept:
        raise RecipeError(f"refusing to remove every {group.kind[:-1]} of {group.name}")
    out_idx, in_idx = _expand(kept, group.out_width), _expand(kept, group.in_width)
    new = {n: keep_outputs(model.get_submodule(n), out_idx) for n in group.outputs}
    for n in group.inputs:
        src = new.get(n, model.get_submodule(n))
        new[n] = keep_inputs(src, in_idx)
        if means is not None:
            dropped = _expand(remove, group.in_width)
            new[n] = _compensate(src, new[n], dropped, means[n])
    replace_modules(model, new)
    for module_name, attr, mult in group.attrs:
        setattr(model.get_submodule(module_name), attr, len(kept) * mult)


_ORIGIN = "_mmcompress_block_origin"


def block_origin(block: nn.Module, index: int) -> int:
    """The position `block` had in its list before any block was removed from it (`index`,
    where it is now, when none was)."""
    return getattr(block, _ORIGIN, index)


def remove_layers(model: nn.Module, layers: LayerList, remove: Sequence[int]) -> None:
    """Delete whole blocks from a ModuleList / Sequential (later entries renumber); each block
    remembers where it was first (`block_origin`), so that distillation from the model before
    the recipe compares a block with the one it was."""
    container = model.get_submodule(layers.name)
    for i, block in enumerate(container):
        setattr(block, _ORIGIN, block_origin(block, i))
    for i in sorted(remove, reverse=True):
        del container[i]


def group_params(model: nn.Module, group: UnitGroup) -> int:
    """Parameters one unit of `group` holds (what removing it frees)."""
    total = 0
    for n in group.outputs:
        total += sum(p.numel() for p in model.get_submodule(n).parameters()) // group.size
    for n in group.inputs:
        w = model.get_submodule(n).weight
        total += w.numel() // w.shape[1] * group.in_width
    return total


def params_after(model: nn.Module, groups: list[UnitGroup], removed: dict[int, int]) -> int:
    """The model's parameters once `removed[i]` units of each ``groups[i]`` are gone, exactly:
    a weight between two pruned groups (chained convolutions) is counted once, where
    `group_params` counts it with each of them; quantized and sparse layers elsewhere count
    their logical weights (`count_params`)."""
    rows: dict[str, float] = {}
    cols: dict[str, int] = {}
    for i, g in enumerate(groups):
        for n in g.outputs:
            rows[n] = 1 - removed.get(i, 0) / g.size
        for n in g.inputs:
            cols[n] = removed.get(i, 0) * g.in_width
    total = 0.0
    for name, pname, p, n in parameter_counts(model):  # layers pruning never takes: logical
        keep = rows.get(name, 1.0)
        if pname == "weight" and p.dim() > 1 and name in cols:
            keep *= 1 - cols[name] / p.shape[1]
        total += n * keep
    return round(total)


def layer_params(model: nn.Module, name: str) -> int:
    """What removing block `name` frees, counted as a dense network would count it (quantized
    layers keep their weights in buffers: counted by their logical weights)."""
    return count_params(model.get_submodule(name))
