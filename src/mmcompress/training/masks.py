"""Pruning masks that live in the model while it trains, for gradual pruning.

Every masked layer holds a boolean ``weight_mask`` buffer (and ``bias_mask`` where whole
units go), so training checkpoints save the masks with the weights, and a forward pre-hook
zeroes the masked entries before the layer runs. `GradualPruning` also re-applies the masks
after every optimizer step, so masked weights stay exactly zero whatever the optimizer does
(momentum, weight decay).

- `UnstructuredMasks`: per weight, chosen by magnitude or Wanda (the one-shot methods' own
  selection, `sparsity.keep_mask`); ends as `SparseLinear` / `SparseConv2d`.
- `StructuredMasks`: whole heads, MLP neurons or conv channels (`structured` unit groups and
  importance scores): the units' output rows, biases and BatchNorm entries and the consumers'
  input columns; ends with the units removed physically (`structured.groups.prune_units`).

Masks only grow: entries masked earlier score −∞, so they stay among the lowest.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..adapters import Adapter
from ..calibration import calibrate_layers
from ..calibration.collectors import FeatureNormCollector
from ..errors import RecipeError
from ..methods.base import StageContext
from ..methods.prune_structured import StructuredPruneConfig, _unit_groups, one_text_per_batch
from ..methods.prune_unstructured import prunable_layers
from ..methods.prune_unstructured_config import UnstructuredPruneConfig
from ..methods.weight_quant import weight_matrix
from ..modules.replace import replace_modules
from ..modules.sparse import sparse_module
from ..selection import select_modules
from ..sparsity import global_keep_masks, keep_mask
from ..structured.allocate import how_many
from ..structured.groups import _expand, prune_units
from ..structured.importance import consumer_stats, unit_scores

WEIGHT_MASK, BIAS_MASK = "weight_mask", "bias_mask"
MASKABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)  # exact types: not their replacements


def _zero_masked(module: nn.Module, *_: object) -> None:
    """Zero the masked entries in place (a forward pre-hook; `.data` keeps autograd out)."""
    module.weight.data.mul_(getattr(module, WEIGHT_MASK))
    bias_mask = getattr(module, BIAS_MASK, None)
    if bias_mask is not None:
        module.bias.data.mul_(bias_mask)


class _Masked:
    """Masks on a set of layers: adding, applying and removing them."""

    def __init__(self) -> None:
        self.modules: dict[str, nn.Module] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, name: str, module: nn.Module, bias: bool) -> None:
        """Mask `module`'s weight (and its bias, with `bias`); a layer may be added twice
        (a group's consumer can hold the next group's units)."""
        if type(module) not in MASKABLE:
            raise RecipeError(f"gradual pruning masks plain layers, but {name} is a "
                              f"{type(module).__name__}; prune before quantizing, "
                              "sparsifying or factorising")
        if name not in self.modules:
            module.register_buffer(WEIGHT_MASK, torch.ones_like(module.weight, dtype=torch.bool))
            self._hooks.append(module.register_forward_pre_hook(_zero_masked))
            self.modules[name] = module
        if bias and module.bias is not None and getattr(module, BIAS_MASK, None) is None:
            module.register_buffer(BIAS_MASK, torch.ones_like(module.bias, dtype=torch.bool))

    def check_in(self, model: nn.Module) -> None:
        """Refuse to train when a stage between pruning and training replaced masked layers."""
        for name, module in self.modules.items():
            if model.get_submodule(name) is not module:
                raise RecipeError(f"gradual pruning: {name} was replaced by a stage after the "
                                  "prune stage; train right after it (quantize later)")

    @torch.no_grad()
    def apply(self) -> None:
        for module in self.modules.values():
            _zero_masked(module)

    def remove(self) -> None:
        """Drop hooks and mask buffers (the layers keep their zeroed weights)."""
        for h in self._hooks:
            h.remove()
        for module in self.modules.values():
            for key in (WEIGHT_MASK, BIAS_MASK):
                module._buffers.pop(key, None)
        self._hooks.clear()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state the mask buffers do not hold (saved with training checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Score units and weights without dropout or BatchNorm statistics updates."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


class UnstructuredMasks(_Masked):
    """Per-weight masks of linear and conv layers (magnitude or Wanda scores)."""

    def __init__(self, adapter: Adapter, config: UnstructuredPruneConfig,
                 context: StageContext) -> None:
        super().__init__()
        self.adapter, self.config, self.context = adapter, config, context
        layers, self.skipped = prunable_layers(adapter, config, calibrated=config.method == "wanda")
        for name, module in layers.items():
            self.add(name, module, bias=False)
        self._calib = functools.cache(lambda: context.calibration_data(adapter))

    def _scores(self) -> dict[str, torch.Tensor]:
        scores = {n: weight_matrix(m).abs() for n, m in self.modules.items()}
        if self.config.method == "wanda":
            norms: dict[str, torch.Tensor] = {}

            def keep(name: str, module: nn.Module, stats: FeatureNormCollector) -> None:
                norms[name] = stats.norm

            with _eval_mode(self.adapter.model):
                calibrate_layers(self.adapter, self.modules, self._calib(),
                                 lambda n, m: FeatureNormCollector(), keep, "wanda scores",
                                 progress=False)
            scores = {n: s * norms[n] for n, s in scores.items()}
        return scores

    @torch.no_grad()
    def prune(self, sparsity: dict[str, float]) -> None:
        """Mask the lowest-scored weights until `sparsity['weights']` of them are masked."""
        s = sparsity["weights"]
        scores = {}
        for n, score in self._scores().items():
            mask = getattr(self.modules[n], WEIGHT_MASK).reshape(score.shape)
            scores[n] = torch.where(mask, score, torch.tensor(-torch.inf))
        if self.config.scope == "global":
            keeps = dict(zip(scores, global_keep_masks(list(scores.values()), s), strict=True))
        else:
            keeps = {n: keep_mask(sc, s, None, self.config.rows_compete(self.modules[n]))
                     for n, sc in scores.items()}
        for n, keep in keeps.items():
            mask = getattr(self.modules[n], WEIGHT_MASK)
            mask.copy_(keep.view(mask.shape))
        self.apply()

    def finish(self) -> dict[str, object]:
        """Swap every masked layer for its compact sparse module."""
        kept = total = 0
        swaps = {}
        for n, m in self.modules.items():
            keep = getattr(m, WEIGHT_MASK).reshape(m.weight.shape[0], -1).clone()
            kept, total = kept + int(keep.sum()), total + keep.numel()
            swaps[n] = sparse_module(m, keep, None, self.config.pattern)
        self.remove()
        replace_modules(self.adapter.model, swaps)
        out: dict[str, object] = {"modules": len(swaps), "sparsity": round(1 - kept / total, 6)}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


class StructuredMasks(_Masked):
    """Masks of whole heads, neurons and channels (their unit groups)."""

    def __init__(self, adapter: Adapter, config: StructuredPruneConfig,
                 context: StageContext) -> None:
        super().__init__()
        self.adapter, self.config = adapter, config
        model = adapter.model
        chosen = set(select_modules(model, adapter.towers(), (nn.Module,), config.targets,
                                    config.ignore).values())
        self.groups = _unit_groups(adapter, config, chosen)
        for g in self.groups:
            for n in g.outputs + g.inputs:
                self.add(n, model.get_submodule(n), bias=n in g.outputs)
        self.removed: list[set[int]] = [set() for _ in self.groups]
        self._calib = functools.cache(lambda: context.calibration_data(adapter))
        # Taylor scores take texts one per batch, as the one-shot stage's do
        self._per_text = functools.cache(lambda: one_text_per_batch(adapter, context,
                                                                    self._calib()))

    def _scores(self) -> list[torch.Tensor]:
        adapter, groups = self.adapter, self.groups
        with _eval_mode(adapter.model):
            return unit_scores(adapter, groups, self.config.importance, self._per_text,
                               lambda: consumer_stats(adapter, groups, self._calib(), False))

    @torch.no_grad()
    def prune(self, fractions: dict[str, float]) -> None:
        """Mask the lowest-scored units of every group up to `fractions[kind]` of them."""
        for gi, (g, score) in enumerate(zip(self.groups, self._scores(), strict=True)):
            k = how_many(fractions[g.kind], g.size)
            score = score.clone().float()
            score[list(self.removed[gi])] = -torch.inf
            order = sorted(range(g.size), key=lambda u: (float(score[u]), u))
            self.removed[gi] |= set(order[:k])
            if self.removed[gi]:
                self._mask_units(g, sorted(self.removed[gi]))
        self.apply()

    def state_dict(self) -> dict[str, Any]:
        """The units masked so far, per group: `finish` removes them."""
        return {"removed": [sorted(units) for units in self.removed]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.removed = [{int(u) for u in units} for units in state["removed"]]

    def _mask_units(self, g, units: list[int]) -> None:
        out_idx, in_idx = _expand(units, g.out_width), _expand(units, g.in_width)
        for n in g.outputs:
            m = self.modules[n]
            getattr(m, WEIGHT_MASK)[out_idx] = False
            bias_mask = getattr(m, BIAS_MASK, None)
            if bias_mask is not None:
                bias_mask[out_idx] = False
        for n in g.inputs:
            getattr(self.modules[n], WEIGHT_MASK)[:, in_idx] = False

    def finish(self) -> dict[str, object]:
        """Remove the masked units physically."""
        self.remove()
        removed: dict[str, dict[str, int]] = {}
        for g, units in zip(self.groups, self.removed, strict=True):
            prune_units(self.adapter.model, g, sorted(units))
            entry = removed.setdefault(g.kind, {"removed": 0, "of": 0})
            entry["removed"] += len(units)
            entry["of"] += g.size
        return {"removed": removed}
