"""Sparsity per layer from measured sensitivity, the stage's share of weights removed in all.

Each layer offers a grid of sparsities. An option's loss is the layer's relative output error
on the calibration inputs with that mask and the weights left as they are,
‖(W − M⊙W)X‖² / ‖WX‖², scaled per layer so that at the stage's sparsity it equals the model's
loss with only that layer pruned (a `Probe`): one minus the correlation of the two models'
similarities between every pair of probe examples (`similarity_fidelity`; embedding fidelity
where outputs differ in width). Equal output errors matter more in some layers than in others,
and a distortion every embedding shares matters less than one that changes which are alike.
`rank_allocation` then removes weights where the loss per weight removed is lowest: the
mechanism that allocates ranks for the low-rank methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..modules.sparse import dense_layer, layer_args
from ..sensitivity import Probe
from .rank_allocation import LayerOptions, allocate_ranks, scale_to_measured
from .weight_quant import weight_matrix

GRID_STEP = 0.05
MAX_SPARSITY = 0.95

KeepAt = Callable[[str, nn.Module, float], torch.Tensor]


def masked_error(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor) -> float:
    """‖(W − M⊙W)X‖² / ‖WX‖² from the Gram matrix H = XXᵀ."""
    w = weight.double()
    h = hessian.double()
    lost = w * ~keep
    total = float(((w @ h) * w).sum())
    return float(((lost @ h) * lost).sum()) / max(total, 1e-30)


def grid(target: float) -> list[float]:
    """The sparsities offered to every layer: steps of GRID_STEP up to MAX_SPARSITY, and the
    stage's own."""
    steps = int(round(MAX_SPARSITY / GRID_STEP))
    return sorted({round(i * GRID_STEP, 4) for i in range(1, steps + 1)} | {target})


def sensitivity_sparsities(layers: dict[str, nn.Module], hessians: dict[str, torch.Tensor],
                           target: float, keep_at: KeepAt, probe: Probe | None
                           ) -> dict[str, float]:
    """Sparsity per layer removing (about) `target` of all the layers' weights; `keep_at(name,
    module, s)` is the layer's keep-mask at sparsity s (the method's ranking of its weights)."""
    options: dict[str, LayerOptions] = {}
    for name, module in layers.items():
        w, h = weight_matrix(module), hessians[name]
        masks = {s: keep_at(name, module, s) for s in grid(target)}
        layer = LayerOptions(w.numel(), [(int(keep.sum()), masked_error(w, keep, h), s)
                                         for s, keep in masks.items()])
        if probe is not None:
            scale_to_measured(layer, target, _probe_loss(probe, name, module, masks[target]))
        options[name] = layer
    choices, _ = allocate_ranks(options, 1 - target)
    return {n: 0.0 if s is None else float(s) for n, s in choices.items()}


def _probe_loss(probe: Probe, name: str, module: nn.Module, keep: torch.Tensor) -> float:
    """The model's similarity loss with only this layer masked by `keep` (its embedding
    fidelity loss where outputs differ in width and share no similarities)."""
    weight = (weight_matrix(module) * keep).view(module.weight.shape)
    trial = dense_layer(layer_args(module), weight, module.bias)
    out = probe.measure({name: module}, lambda n, m: trial)
    measured = out["similarity_loss"]
    return measured if math.isfinite(measured) else out["fidelity_loss"]
