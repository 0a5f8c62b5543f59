"""Structured pruning: physically remove attention heads, MLP neurons, conv channels and whole
layers, per tower or with one cross-tower ranking (`structured.allocate`)."""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from ..adapters import Adapter
from ..calibration import CalibrationData
from ..errors import RecipeError
from ..evaluation.evaluate import count_params, parameter_counts
from ..modules import MODULE_TYPES
from ..selection import ignored_names, select_modules, tower_of
from ..structured.allocate import (
    Candidate,
    check_counts,
    global_plan,
    how_many,
    uniform_plan,
    unit_amount,
)
from ..structured.groups import (
    UnitGroup,
    check_prunable,
    group_params,
    layer_params,
    params_after,
    prune_units,
    remove_layers,
)
from ..structured.importance import consumer_stats, layer_scores, unit_scores
from ..structured.specs import find_structure
from .base import LAYER_ORDER, MethodConfig, StageContext, register_method
from .training_hooks import Schedule, with_schedule

UNIT_KINDS = ("heads", "neurons", "channels")
NOUNS = {"heads": "attention heads", "neurons": "MLP neurons", "channels": "channels",
         "layers": "removable layers"}


class StructuredPruneConfig(MethodConfig):
    """Each amount is a fraction in [0, 1) of the units (per layer; of the layers per tower)
    or a whole count (per layer; per tower for ``layers``)."""

    method: Literal["structured"] = "structured"
    heads: int | float | None = Field(None, description="attention heads removed per layer")
    neurons: int | float | None = Field(None, description="MLP neurons removed per layer")
    layers: int | float | None = Field(None, description="whole blocks removed per tower")
    channels: int | float | None = Field(None, description="conv channels removed per layer")
    importance: Literal["magnitude", "activation", "taylor"] = Field(
        "activation", description="how units are ranked (layers always by block "
        "influence); default 'activation' with scope 'tower', 'taylor' with scope 'global': "
        "Taylor scores measure the same output change in every layer, activation scores only "
        "rank within one")
    scope: Literal["tower", "global"] = Field(
        "tower", description="the same ratio in every layer and tower, or one ranking of all")
    params_ratio: float | None = Field(
        None, gt=0, lt=1, description="scope 'global' only: remove units until the model "
        "keeps this share of its parameters; the amounts then cap what each layer may lose "
        "(and every layer keeps one unit)")
    compensate: bool = Field(
        False, description="fold removed units' mean output into the next layer's bias "
        "(FLAP-style; needs calibration data)")
    schedule: Schedule | None = Field(None, description="prune gradually while a later "
                                      "finetune/distill stage trains (fractions of units)")

    @field_validator("heads", "neurons", "layers", "channels", mode="before")
    @classmethod
    def _amount(cls, v: Any) -> Any:
        return unit_amount(v)

    @model_validator(mode="before")
    @classmethod
    def _null_importance(cls, data: Any) -> Any:
        if isinstance(data, dict) and "importance" in data and data["importance"] is None:
            data = {k: v for k, v in data.items() if k != "importance"}  # the scope's default
        return data

    @model_validator(mode="after")
    def _something(self) -> StructuredPruneConfig:
        if "importance" not in self.model_fields_set and self.scope == "global":
            # the default for a global ranking, not a setting given: a saved recipe.yaml
            # holds only what the recipe gave
            object.__setattr__(self, "importance", "taylor")
        if all(getattr(self, k) is None for k in (*UNIT_KINDS, "layers")):
            raise ValueError("give at least one of heads, neurons, layers, channels")
        if self.params_ratio is not None and (self.scope != "global" or self.layers
                                              or self.schedule or not self.amounts()):
            raise ValueError("params_ratio needs scope 'global', heads/neurons/channels as "
                             "caps per layer, and no layers or schedule")
        if self.compensate and self.importance == "magnitude":
            raise ValueError("compensate needs importance 'activation' or 'taylor': weight "
                             "magnitude cannot tell which units their mean can replace")
        return self

    def amounts(self) -> dict[str, int | float]:
        return {k: getattr(self, k) for k in UNIT_KINDS if getattr(self, k) is not None}

    layer_order: ClassVar[int | None] = LAYER_ORDER.index("structured pruning")

    def kinds(self) -> tuple[type[nn.Module], ...]:
        """Layer types it shrinks for sure: none for whole blocks alone (removing a block
        rebuilds no layer: it works after any stage), convolutions alone for channels alone
        (their consumer may be linear, which the stage itself checks)."""
        units = set(self.amounts())
        if not units:
            return ()
        return (nn.Conv2d,) if units == {"channels"} else (nn.Linear, nn.Conv2d)


def _tower(name: str, towers: dict[str, list[str]]) -> str:
    return tower_of(name, towers) or "model"


def _tower_params(model: nn.Module, towers: dict[str, list[str]]) -> dict[str, int]:
    """Parameters per tower, as `count_params` counts them."""
    out: dict[str, int] = {}
    for name, _, _, n in parameter_counts(model):
        t = _tower(name, towers)
        out[t] = out.get(t, 0) + n
    return out


def _prune_layers(adapter: Adapter, config: StructuredPruneConfig, chosen: set[nn.Module],
                  calib, summary: dict) -> None:
    model, towers = adapter.model, adapter.towers()
    lists, cands, remove = [], [], {}
    for ll in find_structure(model).layer_lists:
        ok = tuple(i for i in ll.removable if _all_chosen(model.get_submodule(ll.entry(i)),
                                                          chosen))
        if not ok:
            continue
        k = how_many(config.layers, ll.length)
        check_counts("layers", ll.name, k, ll.length, "layers")
        if k > len(ok):
            raise RecipeError(f"prune layers: {ll.name} has only {len(ok)} removable blocks "
                              f"in the targets, asked to remove {k}")
        remove[len(lists)] = k
        lists.append((ll, ok))
    if not lists:
        raise RecipeError("prune layers: no removable layers in the targets")
    scores = layer_scores(adapter, [ll for ll, _ in lists], calib)
    sizes = {}  # what the global plan may empty but for one: blocks that cannot go count too
    for g, (ll, ok) in enumerate(lists):
        sizes[g] = len(ok) + (len(ok) < ll.length)
        for i in ok:
            t = _tower(ll.name, towers)
            cands.append(Candidate(g, i, "layers", scores[ll.entry(i)],
                                   layer_params(model, ll.entry(i)), (t, "layers")))
    if config.scope == "tower":
        plan = uniform_plan(cands, remove)
    else:
        mean = {g: sum(c.params for c in cands if c.group == g) / len(ok)
                for g, (_, ok) in enumerate(lists)}
        plan = global_plan(cands, sizes, int(sum(remove[g] * mean[g] for g in sizes)))
    for g, (ll, _) in enumerate(lists):
        summary.setdefault("removed_layers", []).extend(ll.entry(i) for i in plan.get(g, []))
        remove_layers(model, ll, plan.get(g, []))
        _count(summary, _tower(ll.name, towers), "layers", len(plan.get(g, [])), ll.length)


def _all_chosen(module: nn.Module, chosen: set[nn.Module]) -> bool:
    """Whether every layer of block `module` is targeted, whatever an earlier stage made of
    it (removing a block rebuilds none of its layers)."""
    kinds = (nn.Linear, nn.Conv2d, *MODULE_TYPES.values())
    layers = [m for m in module.modules() if isinstance(m, kinds)]
    return bool(layers) and all(m in chosen for m in layers)


def _count(summary: dict, tower: str, kind: str, removed: int, total: int) -> None:
    entry = summary["removed"].setdefault(tower, {}).setdefault(kind, {"removed": 0, "of": 0})
    entry["removed"] += removed
    entry["of"] += total


def _unit_groups(adapter: Adapter, config: StructuredPruneConfig,
                 chosen: set[nn.Module]) -> list[UnitGroup]:
    """Targeted groups of the requested kinds, but those feeding a layer `ignore` names (it
    keeps its shape); every amount checked before anything changes."""
    model, amounts = adapter.model, config.amounts()
    ignored = ignored_names(model, adapter.towers(), config.ignore)
    groups = [g for g in find_structure(model).units
              if g.kind in amounts and all(model.get_submodule(n) in chosen for n in g.outputs)
              and not ignored.intersection(g.inputs)]
    for kind in amounts:
        if not any(g.kind == kind for g in groups):
            raise RecipeError(f"prune {kind}: the targets hold no {NOUNS[kind]} this method "
                              f"knows how to remove (towers: {', '.join(adapter.towers())})")
    for g in groups:
        check_prunable(model, g)
        if config.params_ratio is None:  # caps keep one unit of every layer by themselves
            check_counts(g.kind, g.name, how_many(amounts[g.kind], g.size), g.size, g.kind)
    return groups


def _prune_units(adapter: Adapter, config: StructuredPruneConfig, groups: list[UnitGroup],
                 calib, per_text, progress: bool, summary: dict) -> None:
    model, towers, amounts = adapter.model, adapter.towers(), config.amounts()
    stats = functools.cache(lambda: consumer_stats(adapter, groups, calib(), progress))
    scores = unit_scores(adapter, groups, config.importance, per_text, stats,
                         config.compensate)
    means = {n: s.mean for n, s in stats().items()} if config.compensate else None
    cands, remove, sizes = [], {}, {}
    for gi, (g, s) in enumerate(zip(groups, scores, strict=True)):
        remove[gi], sizes[gi] = min(how_many(amounts[g.kind], g.size), g.size - 1), g.size
        params = group_params(model, g)
        # Taylor scores are the relative output change in every layer of every tower alike;
        # local scores are only comparable within their layer
        pool = ("taylor",) if config.importance == "taylor" else (gi,)
        cands += [Candidate(gi, u, g.kind, float(s[u]), params, pool)
                  for u in range(g.size)]
    if config.scope == "tower":
        plan = uniform_plan(cands, remove)
    else:
        plan = _global_units(model, groups, cands, sizes, remove, config.params_ratio)
    for gi, g in enumerate(groups):
        prune_units(model, g, plan.get(gi, []), means)
        _count(summary, _tower(g.outputs[0], towers), g.kind, len(plan.get(gi, [])), g.size)


def _global_units(model: nn.Module, groups: list[UnitGroup], cands: list[Candidate],
                  sizes: dict[int, int], remove: dict[int, int],
                  ratio: float | None) -> dict[int, list[int]]:
    """The global plan leaving the parameters per-tower ratios (`remove[g]` units of each
    group) would leave, or, with `ratio`, that share of the model with `remove[g]` as each
    group's cap; counted exactly, to the nearest unit. An error, before anything changes, when
    the caps forbid the target."""
    total = count_params(model)
    if ratio is None:
        target, caps = params_after(model, groups, remove), None
    else:
        target, caps = math.floor(ratio * total), remove
    budget, unit = total - target, max(c.params for c in cands)
    for _ in range(8):  # per-unit counts overlap between chained groups: free more until met
        plan = global_plan(cands, sizes, budget, caps)
        kept = params_after(model, groups, {g: len(u) for g, u in plan.items()})
        if kept <= target + unit // 2:
            return plan
        budget += kept - target
    if kept > target + unit:
        raise RecipeError(f"prune params_ratio {round(target / total, 4):g}: out of reach; "
                          "removing at most the asked share of each layer's units keeps "
                          f"{kept / total:.4f} of the parameters (raise heads, neurons or "
                          "channels)")
    return plan


def one_text_per_batch(adapter: Adapter, context: StageContext,
                       calib: CalibrationData) -> CalibrationData:
    """`calib`, but texts one per batch, for Taylor scores: they square each batch's gradient
    of one random projection, so a batch of one text gives that text's own term (as the
    scores were first measured); the input statistics and block influence drop padded
    positions themselves and take the batches as they are."""
    if not calib.batches.get("text"):
        return calib
    single = context.calibration_data(adapter, batch_size=1)
    return CalibrationData({**calib.batches, "text": single.batches["text"]}, calib.drawn)


@register_method("prune", "structured", StructuredPruneConfig)
@with_schedule
def apply_structured(adapter: Adapter, config: StructuredPruneConfig,
                     context: StageContext) -> dict[str, Any]:
    """Remove attention heads, MLP neurons, conv channels and whole layers physically."""
    model, towers = adapter.model, adapter.towers()
    chosen = set(select_modules(model, towers, (nn.Module,), config.targets,
                                config.ignore).values())
    calib = functools.cache(lambda: context.calibration_data(adapter))
    per_text = functools.cache(lambda: one_text_per_batch(adapter, context, calib()))
    before = _tower_params(model, towers)
    summary: dict[str, Any] = {"importance": config.importance, "scope": config.scope,
                               "removed": {}}
    groups = _unit_groups(adapter, config, chosen) if config.amounts() else []
    if config.layers:
        _prune_layers(adapter, config, chosen, calib, summary)
        groups = _unit_groups(adapter, config, chosen) if config.amounts() else []
    if groups:
        _prune_units(adapter, config, groups, calib, per_text, context.progress, summary)
    after = _tower_params(model, towers)
    summary["params"] = {t: {"before": n, "after": after.get(t, 0),
                             "removed_ratio": round(1 - after.get(t, 0) / n, 4)}
                         for t, n in before.items() if t in towers}
    summary["params_kept_ratio"] = round(sum(after.values()) / sum(before.values()), 4)
    return summary
