"""Unstructured and N:M pruning of linear and convolution layers (and, when asked, embedding
tables): magnitude, Wanda, SparseGPT and ADMM.

Pruned layers become `SparseLinear`/`SparseConv2d`/`SparseEmbedding` (a bitmask plus the kept
values), so the saved model shrinks and a later quantize stage stores only the kept values.
Embedding tables are pruned by magnitude whatever the method: a lookup has no input
activations to weigh, and each token's row keeps the same share of its values.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..adapters import Adapter
from ..calibration import HessianCollector, calibrate_layers, layer_groups
from ..calibration.collectors import FeatureNormCollector
from ..calibration.reference import reference_fit
from ..errors import RecipeError
from ..modules.replace import replace_modules
from ..modules.sparse import dense_layer, layer_args, sparse_module
from ..selection import tower_of
from ..sensitivity import Probe
from ..sparsity import global_keep_masks, keep_mask, sparsegpt_prune
from ..sparsity.admm import admm_prune
from ..sparsity.masks import NM, kernel_position_order
from ..sparsity.owl import outlier_ratio, owl_sparsities
from ..sparsity.permute import nm_input_order
from ..sparsity.refit import refit_kept
from ..sparsity.swaps import refine_by_swaps
from .base import StageContext, plain_layers, register_method, split_embeddings
from .prune_unstructured_config import (
    AdmmConfig,
    CalibratedPruneConfig,
    MagnitudeConfig,
    SparseGPTConfig,
    UnstructuredPruneConfig,
    WandaConfig,
)
from .sparsity_allocation import sensitivity_sparsities
from .training_hooks import with_schedule
from .weight_quant import weight_matrix


def prunable_layers(
    adapter: Adapter, config: UnstructuredPruneConfig, calibrated: bool
) -> tuple[dict[str, nn.Module], list[str]]:
    """(layers to prune, layers skipped): checks N:M divisibility, and that no targeted layer
    is already quantized or factorised, before anything changes."""
    layers, skipped = {}, []
    chosen = plain_layers(adapter, config, config.kinds(), "unstructured pruning",
                          "prune before quantizing")
    for name, m in chosen.items():
        conv = isinstance(m, nn.Conv2d)
        # grouped convolutions: the unfolded input does not match the filter's columns
        if conv and calibrated and m.groups > 1:
            skipped.append(name)
        else:
            layers[name] = m
    nm = config.nm
    if nm is not None:
        for name, m in layers.items():
            cols = weight_matrix(m).shape[1]
            if cols % nm[1]:
                raise RecipeError(
                    f"pattern {config.pattern} groups every {nm[1]} consecutive inputs, but "
                    f"layer {name!r} has {cols} inputs (not a multiple of {nm[1]}); add it to "
                    "'ignore' or use another pattern")
    return layers, skipped


def _own_order(module: nn.Module) -> torch.Tensor | None:
    """The order of the layer's columns that N:M groups run over unless one is chosen (None:
    their own): a convolution's (kh, kw, channel), so that groups run over the input channels
    of one kernel position (the GEMM order of NHWC sparse kernels)."""
    if not isinstance(module, nn.Conv2d):
        return None
    positions = module.kernel_size[0] * module.kernel_size[1]
    return None if positions == 1 else kernel_position_order(
        module.in_channels // module.groups, positions)


def _chosen_order(module: nn.Module, nm: NM, scores: Callable[[], torch.Tensor]
                  ) -> torch.Tensor | None:
    """An order of the layer's columns whose N:M mask keeps more of `scores()`
    (`nm_input_order`), None if none does: of a linear layer's inputs, or of a convolution's
    input channels, one order for every kernel position (each (row, position) a row of groups
    over the channels)."""
    if isinstance(module, nn.Linear):
        return _gaining(nm_input_order(scores(), nm))
    if not isinstance(module, nn.Conv2d):
        return None
    channels = module.in_channels // module.groups
    positions = module.kernel_size[0] * module.kernel_size[1]
    if channels % nm[1] or channels == nm[1]:  # no two whole groups of channels to trade
        return None
    by_position = scores().view(-1, channels, positions).transpose(1, 2)
    order = _gaining(nm_input_order(by_position.reshape(-1, channels), nm))
    if order is None:
        return None
    at = torch.arange(positions, device=order.device)
    return (order[None, :] * positions + at[:, None]).reshape(-1)


def _gaining(order: torch.Tensor) -> torch.Tensor | None:
    """`order`, or None where it is the columns' own (`nm_input_order` found no gain)."""
    return None if torch.equal(order, torch.arange(len(order), device=order.device)) else order


def _input_order(module: nn.Module, config: UnstructuredPruneConfig,
                 scores: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """The order of the layer's columns that its N:M groups run over (None: their own): one
    chosen to keep more of `scores()` for a stage that `permutes`, else `_own_order`."""
    if config.nm is None:
        return None
    chosen = _chosen_order(module, config.nm, scores) if config.permutes else None
    return _own_order(module) if chosen is None else chosen


def _stored_order(module: nn.Module, order: torch.Tensor | None) -> torch.Tensor | None:
    """The order a sparse layer saves: a chosen one (`_own_order` follows from its shape)."""
    own = _own_order(module)
    if order is None or (own is not None and torch.equal(order, own.to(order.device))):
        return None
    return order


def _select(scores: torch.Tensor, config: UnstructuredPruneConfig, per_row: bool,
            sparsity: float | None = None, order: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask of one layer from its scores, in the layer's own column order, its N:M groups
    formed over `order` (`_input_order`; `sparsity`: this layer's, default the stage's)."""
    sparsity = config.target_sparsity if sparsity is None else sparsity
    if order is None:
        return keep_mask(scores, sparsity, config.nm, per_row)
    keep = torch.empty_like(scores, dtype=torch.bool)
    keep[:, order] = keep_mask(scores[:, order], sparsity, config.nm, per_row)
    return keep


def _magnitude_keep(module: nn.Module, config: UnstructuredPruneConfig
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(keep-mask of the largest |W|, the order its N:M groups run over): per layer, or per
    row for an embedding table (each token keeps the same share of its values)."""
    scores = weight_matrix(module).abs()
    order = _input_order(module, config, lambda: scores)
    keep = _select(scores, config, per_row=isinstance(module, nn.Embedding), order=order)
    return keep, order


def _wanda_scores(weight: torch.Tensor,
                  stats: FeatureNormCollector | HessianCollector) -> torch.Tensor:
    """|W_ij|·‖X_j‖₂ of one layer's weight matrix."""
    return weight.abs() * stats.norm


def _unpruned_stats(adapter: Adapter, layers: dict[str, nn.Module], context: StageContext,
                    make_collector: Callable[[str, nn.Module], Any], desc: str
                    ) -> dict[str, Any]:
    """Every layer's statistics from the unpruned model (nothing is replaced), in one pass per
    input (every collector is kept to the end anyway, so merging the blocks' passes costs no
    memory beyond one batch's layer inputs)."""
    stats: dict[str, Any] = {}

    def record(name: str, module: nn.Module, collector: Any) -> None:
        stats[name] = collector

    calibrate_layers(adapter, dict(layers), context.calibration_data(adapter), make_collector,
                     record, desc, context.progress, release=True, merge=True)
    return stats


def _layer_sparsities(adapter: Adapter, layers: dict[str, nn.Module],
                      config: UnstructuredPruneConfig, context: StageContext,
                      stats: dict[str, Any] | None = None) -> dict[str, float]:
    """Sparsity per layer: the stage's, OWL's per block from the unpruned model's Wanda
    scores, or one per layer from measured sensitivity (from `stats`, the unpruned model's
    collectors, when given; else collected)."""
    if config.layer_sparsity == "uniform":
        return dict.fromkeys(layers, config.target_sparsity)
    if config.layer_sparsity == "sensitivity":
        return _sensitivity_sparsities(adapter, layers, config, context, stats)
    blocks = {name: group[0] for group in layer_groups(list(layers)) for name in group}
    scores: dict[str, list[torch.Tensor]] = {}
    if stats is None:
        stats = _unpruned_stats(adapter, layers, context, lambda n, m: FeatureNormCollector(),
                                "owl ratios")
    for name, s in stats.items():
        scores.setdefault(blocks[name], []).append(_wanda_scores(weight_matrix(layers[name]),
                                                                 s))
    ratios = {b: outlier_ratio(s, config.owl_threshold) for b, s in scores.items()}
    sizes: dict[str, int] = {}
    for name, block in blocks.items():
        sizes[block] = sizes.get(block, 0) + weight_matrix(layers[name]).numel()
    per_block = owl_sparsities(ratios, config.target_sparsity, config.owl_spread, sizes)
    return {name: per_block[blocks[name]] for name in layers}


def _sensitivity_sparsities(adapter: Adapter, layers: dict[str, nn.Module],
                            config: UnstructuredPruneConfig, context: StageContext,
                            stats: dict[str, Any] | None) -> dict[str, float]:
    """Sparsity per layer from each layer's output error under its Wanda mask at a grid of
    sparsities, weighed by a probe of the model (`sparsity_allocation`)."""
    if stats is None:
        stats = _unpruned_stats(adapter, layers, context, lambda n, m: HessianCollector(),
                                "sparsity sensitivity")

    def keep_at(name: str, module: nn.Module, sparsity: float) -> torch.Tensor:
        return _select(_wanda_scores(weight_matrix(module), stats[name]), config,
                       config.rows_compete(module), sparsity)  # unstructured: no order

    probe = Probe.reaching(adapter, context.data, config.sensitivity_samples, layers,
                           "sparsity sensitivity") \
        if config.sensitivity_samples and context.data is not None else None
    return sensitivity_sparsities(layers, {n: s.hessian for n, s in stats.items()},
                                  config.target_sparsity, keep_at, probe)


def _tower_sparsity(adapter: Adapter, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of each tower's pruned layers' weights removed."""
    towers = adapter.towers()
    kept: dict[str, list[int]] = {}
    for name, keep in masks.items():
        k = kept.setdefault(tower_of(name, towers) or "other", [0, 0])
        k[0] += int(keep.sum())
        k[1] += keep.numel()
    return {t: round(1 - k / n, 4) for t, (k, n) in kept.items()}


class _Tally:
    """Counts what a stage pruned, and builds the compact modules."""

    def __init__(self, config: UnstructuredPruneConfig, skipped: list[str]) -> None:
        self.config, self.skipped, self.kept, self.total = config, skipped, 0, 0
        self.permuted = 0  # layers whose N:M groups run over a chosen order
        self.masks: dict[str, torch.Tensor] = {}
        self.orders: dict[str, torch.Tensor | None] = {}

    def sparse(self, module: nn.Module, keep: torch.Tensor, order: torch.Tensor | None,
               matrix: torch.Tensor | None = None) -> nn.Module:
        self.kept += int(keep.sum())
        self.total += keep.numel()
        order = _stored_order(module, order)
        self.permuted += order is not None
        return sparse_module(module, keep, matrix, self.config.pattern, order)

    def stand_in(self, name: str, module: nn.Module, keep: torch.Tensor, matrix: torch.Tensor,
                 bias: torch.Tensor | None, order: torch.Tensor | None) -> nn.Module:
        """A dense layer with the pruned weights, used while later blocks calibrate (dense
        layers run faster than sparse ones); `finish` swaps in the compact modules."""
        self.masks[name], self.orders[name] = keep, order
        weight = (matrix * keep).view(module.weight.shape)
        return dense_layer(layer_args(module), weight, bias)

    def finish(self, model: nn.Module) -> None:
        replace_modules(model, {n: self.sparse(model.get_submodule(n), keep, self.orders[n])
                                for n, keep in self.masks.items()})

    def summary(self, modules: int) -> dict[str, Any]:
        out: dict[str, Any] = {"modules": modules, "pattern": self.config.pattern,
                               "sparsity": round(1 - self.kept / self.total, 6)
                               if self.total else 0.0}
        if self.skipped:
            out["skipped"] = self.skipped
        if self.config.permutes:  # 0: no layer gained from an order
            out["permuted_layers"] = self.permuted
        return out


def _nothing_to_do(config: UnstructuredPruneConfig) -> bool:
    return config.nm is None and config.target_sparsity == 0


@register_method("prune", "magnitude", MagnitudeConfig)
@with_schedule
def apply_magnitude(adapter: Adapter, config: MagnitudeConfig,
                    context: StageContext) -> dict[str, Any]:
    """Magnitude pruning: drop the smallest |W| of each layer, or of all targeted layers."""
    layers, skipped = prunable_layers(adapter, config, calibrated=False)
    tally = _Tally(config, skipped)
    if _nothing_to_do(config):
        return tally.summary(0)
    matrices = {n: weight_matrix(m) for n, m in layers.items()}
    if config.scope == "global":  # tables still keep the same share in every token's row
        tables, ranked = split_embeddings(layers)
        masks = global_keep_masks([matrices[n].abs() for n in ranked], config.target_sparsity)
        keep = {**{n: (k, None) for n, k in zip(ranked, masks, strict=True)},
                **{n: _magnitude_keep(m, config) for n, m in tables.items()}}
    else:
        keep = {n: _magnitude_keep(m, config) for n, m in layers.items()}
    replace_modules(adapter.model, {n: tally.sparse(m, *keep[n], matrices[n])
                                    for n, m in layers.items()})
    return tally.summary(len(layers))


def _swapped(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
             config: CalibratedPruneConfig, order: torch.Tensor | None
             ) -> tuple[torch.Tensor, int]:
    """(`keep` refined by swaps, rounds used), in the layer's own column order (N:M groups
    over `order`, as when the mask was chosen)."""
    cols = slice(None) if order is None else order
    keep[:, cols], used = refine_by_swaps(weight[:, cols], keep[:, cols],
                                          hessian[cols][:, cols], config.nm, config.swaps)
    return keep, used


def _prune_calibrated(adapter: Adapter, config: CalibratedPruneConfig, context: StageContext,
                      make_collector: Callable[[str, nn.Module], Any],
                      prune_layer: Callable[[nn.Module, torch.Tensor, Any, Any, float,
                                             torch.Tensor | None],
                                            tuple[torch.Tensor, torch.Tensor]],
                      desc: str) -> dict[str, Any]:
    """What Wanda, SparseGPT and ADMM share: the prunable layers, a sparsity per layer (uniform or
    OWL), then block-by-block calibration (or, not `sequential`, one pass over the unpruned
    model) where `prune_layer(module, weight, stats, hessian, sparsity, order)` gives (keep
    mask, new weight matrix) for the layer's weight matrix `weight` (`hessian`: the Gram
    matrix to fit, centred with `bias_correction`; `order`: the columns' order its N:M groups
    run over, `_input_order` from Wanda's scores); compact sparse modules replace them at the
    end. With `asymmetric`, the collectors also pair each layer's inputs with the unpruned
    model's, and `weight` is the map from this layer's inputs closest to the unpruned outputs
    (`reference_fit`), so masking it and refitting to it aim at the unpruned model."""
    layers, skipped = prunable_layers(adapter, config, calibrated=True)
    tally = _Tally(config, skipped)
    if _nothing_to_do(config):
        return tally.summary(0)
    rounds: list[int] = []  # swap rounds each layer used
    reference = copy.deepcopy(adapter.model) if config.asymmetric else None
    tables, layers = split_embeddings(layers)
    replace_modules(adapter.model, {  # by magnitude, before the layers that read them calibrate
        n: tally.sparse(m, *_magnitude_keep(m, config)) for n, m in tables.items()})

    def replace(name: str, module: nn.Module, stats: Any) -> nn.Module:
        original = target = weight_matrix(module)
        shift_bias = config.bias_correction and module.bias is not None
        hessian, cross = stats.centred() if shift_bias else (stats.hessian, stats.cross)
        if config.asymmetric:
            target = reference_fit(target, hessian, cross, config.damp).float()
        order = _input_order(module, config, lambda: _wanda_scores(target, stats))
        keep, weight = prune_layer(module, target, stats, hessian, sparsity[name], order)
        if config.swaps:
            keep, used = _swapped(target, keep, hessian, config, order)
            rounds.append(used)
        if config.refit:
            weight = refit_kept(target, keep, hessian, config.damp)
        bias = module.bias
        if shift_bias:
            lost = original.double() @ stats.reference_mean.double() \
                - (weight * keep).double() @ stats.mean.double()
            bias = (bias.detach().double() + lost).to(bias.dtype)
        return tally.stand_in(name, module, keep, weight, bias, order)

    if config.sequential:
        sparsity = _layer_sparsities(adapter, layers, config, context)
        n = calibrate_layers(adapter, layers, context.calibration_data(adapter), make_collector,
                             replace, desc, context.progress, release=True, reference=reference)
    else:  # one pass serves OWL's ratios and the masks
        stats = _unpruned_stats(adapter, layers, context, make_collector, desc)
        sparsity = _layer_sparsities(adapter, layers, config, context, stats)
        replace_modules(adapter.model, {name: replace(name, m, stats.pop(name))
                                        for name, m in layers.items()})
        n = len(layers)
    del reference
    tally.finish(adapter.model)
    summary = tally.summary(n + len(tables))
    if len(set(sparsity.values())) > 1:
        summary["layer_sparsity_range"] = [round(min(sparsity.values()), 4),
                                           round(max(sparsity.values()), 4)]
        summary["tower_sparsity"] = _tower_sparsity(adapter, tally.masks)
    if rounds:  # a layer that used every round might have gained from more
        summary["swap_rounds_max"] = max(rounds)
        summary["layers_at_swap_limit"] = sum(r == config.swaps for r in rounds)
    return summary


@register_method("prune", "wanda", WandaConfig)
@with_schedule
def apply_wanda(adapter: Adapter, config: WandaConfig, context: StageContext) -> dict[str, Any]:
    """Wanda: drop the smallest |W_ij|·‖X_j‖₂ of each output row, or of each convolution, then
    (by default) refine the mask by swaps (calibrated, no weight update)."""

    def prune(module: nn.Module, w: torch.Tensor, stats: FeatureNormCollector | HessianCollector,
              hessian: torch.Tensor | None, sparsity: float, order: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = _select(_wanda_scores(w, stats), config, config.rows_compete(module), sparsity,
                       order)
        return keep, w

    needs_hessian = config.swaps or config.refit or config.asymmetric or config.bias_correction \
        or config.layer_sparsity == "sensitivity"
    collector = HessianCollector if needs_hessian else FeatureNormCollector
    return _prune_calibrated(adapter, config, context, lambda n, m: collector(), prune,
                             "wanda")


@register_method("prune", "sparsegpt", SparseGPTConfig)
@with_schedule
def apply_sparsegpt(adapter: Adapter, config: SparseGPTConfig,
                    context: StageContext) -> dict[str, Any]:
    """SparseGPT: second-order mask selection with an inverse-Hessian weight update."""

    def prune(module: nn.Module, w: torch.Tensor, stats: HessianCollector, h: torch.Tensor,
              sparsity: float, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if order is not None:
            w, h = w[:, order], h[order][:, order]
        new, keep = sparsegpt_prune(w, h, sparsity, config.nm, config.damp, config.block_size,
                                    config.rows_compete(module), config.act_order)
        if order is not None:
            new[:, order], keep[:, order] = new.clone(), keep.clone()
        return keep, new

    return _prune_calibrated(adapter, config, context, lambda n, m: HessianCollector(),
                             prune, "sparsegpt")


@register_method("prune", "admm", AdmmConfig)
@with_schedule
def apply_admm(adapter: Adapter, config: AdmmConfig, context: StageContext) -> dict[str, Any]:
    """ADMM with a gradual mask (Boža, 2024): alternate the layer's least-squares fit and the
    projection onto the sparsity pattern while the pattern's sparsity rises."""

    def prune(module: nn.Module, w: torch.Tensor, stats: HessianCollector, h: torch.Tensor,
              sparsity: float, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        per_row = config.rows_compete(module)
        nm_mask = None if config.nm is None else (  # in the layer's own column order
            lambda scores: _select(scores, config, per_row, order=order))
        new, keep = admm_prune(w, h, sparsity, nm_mask, per_row, config.iterations, config.rho,
                               config.damp)
        return keep, new

    return _prune_calibrated(adapter, config, context, lambda n, m: HessianCollector(),
                             prune, "admm")
