"""Record and replay structural changes (resized layers, shortened layer lists, changed head
counts) between a model and its base architecture, so pruned models reload.

The diff is found generically: rebuild the base architecture on the meta device (no memory,
no init) and compare it module by module with the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import CheckpointError
from ..modules import MODULE_TYPES
from ..modules.replace import replace_modules

_PLAIN = (int, float, bool, str)
T = TypeVar("T")


def _ctor(module: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of the standard layers whose shape pruning changes."""
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, nn.Conv2d):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": module.padding if isinstance(module.padding, str)
                else list(module.padding), "dilation": list(module.dilation),
                "groups": module.groups, "bias": module.bias is not None}
    if isinstance(module, nn.Embedding):
        return {"num_embeddings": module.num_embeddings, "embedding_dim": module.embedding_dim,
                "padding_idx": module.padding_idx}
    if isinstance(module, nn.LayerNorm):
        return {"normalized_shape": list(module.normalized_shape), "eps": module.eps,
                "elementwise_affine": module.elementwise_affine}
    if isinstance(module, nn.BatchNorm2d):
        return {"num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    return None


_BUILDERS = {"Linear": nn.Linear, "Conv2d": nn.Conv2d, "Embedding": nn.Embedding,
             "LayerNorm": nn.LayerNorm, "BatchNorm2d": nn.BatchNorm2d}


def _attrs(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, _PLAIN) and k != "training"}


def structure_diff(base: nn.Module, model: nn.Module) -> dict[str, Any]:
    """How `model` differs structurally from `base` (replacement modules excluded)."""
    replaced = tuple(MODULE_TYPES.values())
    base_mods = dict(base.named_modules())
    lists = {n: len(m) for n, m in model.named_modules()
             if isinstance(m, nn.ModuleList | nn.Sequential) and n in base_mods
             and len(m) != len(base_mods[n])}
    resized, attrs = {}, {}
    for name, module in model.named_modules():
        ref = base_mods.get(name)
        if ref is None or isinstance(module, replaced):
            continue
        args = _ctor(module)
        if args is not None and args != _ctor(ref):
            resized[name] = {"type": type(module).__name__, **args}
        changed = {k: v for k, v in _attrs(module).items() if _attrs(ref).get(k, v) != v}
        if changed:
            attrs[name] = changed
    out = {"lists": lists, "resized": resized, "attrs": attrs}
    return {k: v for k, v in out.items() if v}


def apply_structure(model: nn.Module, diff: dict[str, Any]) -> None:
    """Replay `structure_diff` on a freshly built base model (weights are loaded after)."""
    for name, length in diff.get("lists", {}).items():
        container = model.get_submodule(name)
        while len(container) > length:
            del container[len(container) - 1]
    replace_modules(model, {
        n: _BUILDERS[spec["type"]](**{k: v for k, v in spec.items() if k != "type"})
        for n, spec in diff.get("resized", {}).items()})
    for name, values in diff.get("attrs", {}).items():
        module = model.get_submodule(name)
        plain = _attrs(module)
        for key, value in values.items():  # settings the module has, of the same type only
            if key not in plain or type(value) is not type(plain[key]):
                raise CheckpointError(f"the structure sets {name}.{key} to {value!r}, which "
                                      "is not one of that module's settings")
            setattr(module, key, value)


def meta_base(build: Callable[[], T]) -> T:
    """Run `build` on the meta device: a model's structure only, no memory, no
    initialisation."""
    with torch.device("meta"):
        return build()
