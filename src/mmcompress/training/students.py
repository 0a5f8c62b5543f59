"""Students by weight inheritance: shrink the teacher into a student that starts close to it.

- ``layers``: keep every k-th block (``every-2`` keeps blocks 0, 2, 4, …) or the listed
  blocks of every list of transformer layers / residual blocks (a residual block that changes
  shape — the first of a ResNet stage — is always kept);
- ``heads`` / ``neurons`` / ``channels``: keep the most important ones, ranked and removed by
  the structured pruning method (`methods.prune_structured`), with its importance scores.

Returns which teacher blocks each student block came from, so feature and attention
distillation compare each student block with its own ancestor.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator
from torch import nn

from ..adapters import Adapter
from ..errors import RecipeError
from ..methods.base import StageContext
from ..models.resnet_cifar import BasicBlock
from ..settings_base import Settings
from ..structured.allocate import unit_amount
from ..structured.groups import LayerList, remove_layers
from .taps import block_lists

EVERY = re.compile(r"^every-([1-9]\d*)$")


class StudentConfig(Settings):
    """How to derive the student from the model (amounts as in ``prune: structured``)."""


    layers: str | list[int] | None = Field(
        None, description="'every-K' or block indices kept in every block list")
    heads: int | float | None = Field(None, description="attention heads removed per layer")
    neurons: int | float | None = Field(None, description="MLP neurons removed per layer")
    channels: int | float | None = Field(None, description="conv channels removed per layer")
    importance: Literal["magnitude", "activation", "taylor"] = Field(
        "magnitude", description="how units are ranked, as in prune: structured")
    targets: list[str] | None = Field(None, description="towers/modules to shrink (default all)")

    @field_validator("heads", "neurons", "channels", mode="before")
    @classmethod
    def _amount(cls, v: Any) -> Any:
        return unit_amount(v)

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        if isinstance(v, str) and not EVERY.match(v):
            raise ValueError(f"layers is 'every-K' (K ≥ 1) or a list of indices, got {v!r}")
        if isinstance(v, list) and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError("layers: a non-empty list of distinct indices ≥ 0")
        return v


def _kept(spec: str | list[int], length: int, name: str) -> list[int]:
    if isinstance(spec, str):
        k = int(EVERY.match(spec)[1])
        return list(range(0, length, k))
    if max(spec) >= length:
        raise RecipeError(f"student layers {spec}: {name} has only {length} blocks")
    return sorted(spec)


def _in_targets(name: str, adapter: Adapter, targets: list[str] | None) -> bool:
    if targets is None:
        return True
    towers = adapter.towers()
    prefixes = [p for t in targets for p in towers.get(t, [t])]
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def keep_layers(adapter: Adapter, spec: str | list[int],
                targets: list[str] | None = None) -> dict[str, list[int]]:
    """Delete the blocks not kept from every block list; returns list name → kept indices."""
    lists = {n: b for n, b in block_lists(adapter.model).items()
             if _in_targets(n, adapter, targets)}
    if not lists:
        raise RecipeError("student layers: the model has no lists of transformer layers or "
                          "residual blocks to take layers from")
    kept_by_list = {}
    for name, blocks in lists.items():
        kept = _kept(spec, len(blocks), name)
        fixed = [i for i, b in enumerate(blocks) if isinstance(b, BasicBlock) and b.pad is not None]
        if isinstance(spec, str):
            kept = sorted(set(kept) | set(fixed))
        elif set(fixed) - set(kept):
            raise RecipeError(f"student layers {spec}: block(s) {sorted(set(fixed) - set(kept))} "
                              f"of {name} change the feature shape and must be kept")
        remove = [i for i in range(len(blocks)) if i not in kept]
        remove_layers(adapter.model, LayerList(name, len(blocks), tuple(remove)), remove)
        kept_by_list[name] = kept
    return kept_by_list


def build_student(adapter: Adapter, config: StudentConfig, context: StageContext,
                  teacher: nn.Module | None = None) -> dict[str, Any]:
    """Shrink `adapter.model` in place into the student; returns a summary with the layer map
    (``layer_map``: list name → block of the model before shrinking, for each student block)
    and the parameter counts of `teacher` (default: the model before shrinking) and student."""
    from ..methods.prune_structured import StructuredPruneConfig, apply_structured

    teacher_params = _params(adapter.model if teacher is None else teacher)
    summary: dict[str, Any] = {}
    if config.layers is not None:
        summary["layer_map"] = keep_layers(adapter, config.layers, config.targets)
    amounts = {k: getattr(config, k) for k in ("heads", "neurons", "channels")
               if getattr(config, k) is not None}
    if amounts:
        prune = StructuredPruneConfig(method="structured", importance=config.importance,
                                      targets=config.targets, **amounts)
        summary["pruned"] = apply_structured(adapter, prune, context)["removed"]
    summary["params"] = {"teacher": teacher_params, "student": _params(adapter.model)}
    return summary


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
