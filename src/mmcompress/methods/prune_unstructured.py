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
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
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
from ..sparsity import (
    NM,
    global_keep_masks,
    keep_mask,
    parse_pattern,
    pattern_name,
    sparsegpt_prune,
)
from ..sparsity.admm import admm_prune
from ..sparsity.owl import outlier_ratio, owl_sparsities
from ..sparsity.refit import refit_kept
from ..sparsity.swaps import DEFAULT_ROUNDS, refine_by_swaps
from .base import MethodConfig, StageContext, register_method, selected, split_embeddings
from .sparsity_allocation import sensitivity_sparsities
from .training_hooks import Schedule, with_schedule
from .weight_quant import weight_matrix

SEQUENTIAL = ("collect each block's statistics with the blocks before it already pruned (as "
              "SparseGPT's and Wanda's reference code do), or, false, every block's from the "
              "unpruned model in one pass (wanda, sparsegpt, admm; default false for wanda, "
              "true for the others)")

SWAPS = ("then refine each layer's mask by up to this many rounds of swaps (a pruned and a kept "
         "weight of one row) that lower the layer's output error on the calibration data with "
         f"the unpruned weights (SparseSwaps; 0 or false: off, true: {DEFAULT_ROUNDS}; default "
         f"{DEFAULT_ROUNDS} for wanda, but none with a 'schedule'; 0 for sparsegpt and admm, "
         "where it needs 'refit' as their own update fits the mask before the swaps)")


BIAS = ("shift each pruned layer's bias by the mean output it lost, b + W·μ_ref − Ŵ·μ over the "
        "calibration inputs, and choose and fit the mask to the error about the means (the "
        "Gram matrices centred): what a bias can absorb no longer costs kept weights (layers "
        "with a bias; wanda, sparsegpt, admm)")


class UnstructuredPruneConfig(MethodConfig):
    """Settings every unstructured pruning method takes."""

    sparsity: float | None = Field(None, ge=0, lt=1, description="fraction of weights removed "
                                   "(an N:M pattern implies 1 - N/M)")
    pattern: str = Field("unstructured", description="'unstructured', or 'N:M': at most N "
                         "nonzeros in every M consecutive inputs of a row")
    scope: Literal["layer", "global"] = Field("layer", description="rank weights within each "
                                              "layer, or across all targeted layers (magnitude)")
    convolutions: bool = Field(True, description="also prune 2-d convolutions")
    embeddings: bool = Field(False, description="also prune embedding tables (by magnitude, "
                             "the same share of every token's row, whatever the method)")
    schedule: Schedule | None = Field(None, description="prune gradually while a later "
                                      "finetune/distill stage trains (magnitude, wanda)")
    layer_sparsity: Literal["uniform", "owl", "sensitivity"] = Field(
        "uniform", description="every block at `sparsity`; 'owl': blocks whose Wanda scores "
        "hold more outliers pruned less, the mean staying `sparsity`; or 'sensitivity': a "
        "sparsity per layer from each layer's measured output error, `sparsity` of all the "
        "weights removed (wanda, sparsegpt, admm; unstructured)")
    sensitivity_samples: int = Field(64, ge=0, description="layer_sparsity 'sensitivity': "
                                     "examples probing each layer's effect on the model's "
                                     "output (0: each layer's relative output error alone)")
    owl_threshold: float = Field(5.0, gt=1, description="OWL: a score is an outlier above this "
                                 "many times its block's mean score")
    owl_spread: float = Field(0.08, ge=0, lt=0.5, description="OWL: block sparsities span the "
                              "target ± this")

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern(cls, v: Any) -> str:
        return pattern_name(parse_pattern(v))

    @model_validator(mode="after")
    def _consistent(self) -> UnstructuredPruneConfig:
        nm = self.nm
        if nm is None and self.sparsity is None:
            raise ValueError("give 'sparsity' (e.g. 0.5) or an N:M 'pattern' (e.g. '2:4')")
        if nm is not None and self.sparsity is not None \
                and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-6:
            raise ValueError(f"pattern {self.pattern} means sparsity {1 - nm[0] / nm[1]:g}, not "
                             f"{self.sparsity:g}; drop 'sparsity' or make them agree")
        if self.layer_sparsity != "uniform" and (self.method == "magnitude" or nm is not None
                                                 or self.schedule is not None):
            raise ValueError(f"layer_sparsity '{self.layer_sparsity}' sets a sparsity per layer "
                             "from calibrated statistics: it needs method wanda, sparsegpt or "
                             "admm, an unstructured pattern and no schedule")
        if self.embeddings and self.schedule is not None:
            raise ValueError("gradual pruning ('schedule') masks linear and convolution layers "
                             "only; set 'embeddings' false or prune in one shot")
        if self.scope == "global" and (self.method != "magnitude" or nm is not None):
            raise ValueError("scope 'global' ranks weights across layers by magnitude, so it "
                             "needs method 'magnitude' and an unstructured pattern")
        return self

    @property
    def nm(self) -> NM | None:
        return parse_pattern(self.pattern)

    def rows_compete(self, module: nn.Module) -> bool:
        """Whether each output row of `module` keeps its own share of weights (else all the
        layer's weights compete)."""
        return False

    @property
    def target_sparsity(self) -> float:
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm is not None else float(self.sparsity)


class MagnitudeConfig(UnstructuredPruneConfig):
    method: str = "magnitude"


class CalibratedPruneConfig(UnstructuredPruneConfig):
    """Settings of the methods that calibrate on data (Wanda, SparseGPT, ADMM)."""

    sequential: bool = Field(True, description=SEQUENTIAL)
    refit: bool = Field(False, description="once a layer's mask is chosen, refit each row's "
                        "kept weights to the calibration inputs: the exact least-squares "
                        "solution with the mask fixed (Wanda leaves the weights as they are; "
                        "SparseGPT's own update approximates this)")
    damp: float = Field(0.01, gt=0, lt=1, description="Hessian damping, fraction of its mean "
                        "diagonal (SparseGPT's update, refit and the asymmetric fit)")
    asymmetric: bool = Field(False, description="fit each layer to the unpruned model's "
                             "outputs from the inputs the already-pruned layers give it, so it "
                             "also corrects their error (needs 'sequential'; keeps a copy of the "
                             "model while calibrating; with 'refit', the refit aims at the "
                             "unpruned model's outputs too)")
    swaps: int = Field(0, ge=0, description=SWAPS)
    bias_correction: bool = Field(False, description=BIAS)
    comparison: Literal["auto", "row", "layer"] = Field(
        "auto", description="which weights compete: each output row's (Wanda's choice), the "
        "whole layer's (SparseGPT's: each block of columns), or auto: rows in linear layers, "
        "the whole layer in convolutions (on ResNet-56 per-row lost twice as much with Wanda; "
        "docs/methods.md)")

    @field_validator("swaps", mode="before")
    @classmethod
    def _swaps_flag(cls, v: Any) -> Any:
        return (DEFAULT_ROUNDS if v else 0) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _one_shot_options(self) -> CalibratedPruneConfig:
        # only what the recipe asked for: sparsegpt's refit is on by default, and sparsegpt
        # with a schedule is refused by gradual pruning itself
        chosen = [k for k in ("swaps", "refit", "asymmetric")
                  if getattr(self, k, False) and k in self.model_fields_set]
        if chosen and self.schedule is not None:
            raise ValueError(f"'{chosen[0]}' works on a mask chosen in one shot; gradual "
                             "pruning ('schedule') chooses its masks while training: drop one "
                             "of them")
        if self.asymmetric and not self.sequential:
            raise ValueError("'asymmetric' corrects the error of the blocks pruned before; with "
                             "'sequential' false no block sees it: set 'sequential: true' or "
                             "drop 'asymmetric'")
        return self

    def rows_compete(self, module: nn.Module) -> bool:
        if self.comparison == "auto":
            return not isinstance(module, nn.Conv2d)
        return self.comparison == "row"


class WandaConfig(CalibratedPruneConfig):
    method: str = "wanda"
    # one-shot scores lost less than sequential ones on MiniLM in 5 of 6 comparisons (60%, 2:4,
    # 70% on STS-B dev and held-out train pairs; docs/methods.md)
    sequential: bool = Field(False, description=SEQUENTIAL)
    # the swaps change the mask, not the weights (no update, as in Wanda); they lost less in 12
    # of 15 comparisons on MiniLM (STS-B dev, held-out train pairs, embedding tables pruned
    # too) and lit-cifar, with and without the BatchNorm correction (docs/methods.md);
    # `swaps: 0` is the paper's Wanda
    swaps: int = Field(DEFAULT_ROUNDS, ge=0, description=SWAPS)


class _UpdatingPruneConfig(CalibratedPruneConfig):
    """Settings of the methods that update the kept weights themselves (SparseGPT, ADMM)."""

    refit: bool = Field(True, description="once a layer's mask is chosen, replace the method's "
                        "own update of the kept weights by the exact least-squares fit to the "
                        "calibration inputs with the mask fixed (false: the paper's update "
                        "alone)")

    @model_validator(mode="after")
    def _swaps_need_refit(self) -> _UpdatingPruneConfig:
        if self.swaps and not self.refit:
            raise ValueError(f"'swaps' change {self.method}'s mask after its update fitted the "
                             "kept weights to it: set 'refit: true' (the default) or drop "
                             "'swaps'")
        return self


class SparseGPTConfig(_UpdatingPruneConfig):
    method: str = "sparsegpt"
    block_size: int = Field(128, ge=1, description="columns whose mask is chosen together")
    # SparseGPT's own update approximates the least-squares fit to its mask; solving it exactly
    # (`refit`, on by default) lost less in 13 of 15 comparisons on MiniLM (STS-B dev, held-out
    # train pairs) and lit-cifar, with and without the BatchNorm correction; the other two by
    # 0.0015 (docs/methods.md). Its mask compares each output row's weights in linear layers
    # (`comparison: auto`), as Wanda does: on MiniLM that lost less than the paper's block-wide
    # choice at 60% and 70%, on STS-B dev and held-out train pairs (docs/methods.md)


class AdmmConfig(_UpdatingPruneConfig):
    method: str = "admm"
    iterations: int = Field(40, ge=1, description="ADMM iterations; the sparsity rises to its "
                            "target over the first three quarters of them")
    rho: float = Field(1.0, gt=0, description="ADMM penalty, relative to the Hessian scaled "
                       "to a unit diagonal")


def _prunable(
    adapter: Adapter, config: UnstructuredPruneConfig, calibrated: bool
) -> tuple[dict[str, nn.Module], list[str]]:
    """(layers to prune, layers skipped): checks N:M divisibility before anything changes."""
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,)
    kinds += (nn.Conv2d,) if config.convolutions else ()
    kinds += (nn.Embedding,) if config.embeddings else ()
    layers, skipped = {}, []
    for name, m in selected(adapter, config, kinds).items():
        conv = isinstance(m, nn.Conv2d)
        # grouped convolutions: the unfolded input does not match the filter's columns
        if conv and (m.padding_mode != "zeros" or (calibrated and m.groups > 1)):
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


def _column_order(module: nn.Module, nm: NM | None) -> torch.Tensor | None:
    """For an N:M convolution, columns reordered (kh, kw, channel) so that groups run over the
    input channels of one kernel position: the GEMM order of NHWC sparse kernels."""
    if nm is None or not isinstance(module, nn.Conv2d) or module.kernel_size == (1, 1):
        return None
    c, k = module.in_channels // module.groups, module.kernel_size[0] * module.kernel_size[1]
    return torch.arange(c * k).view(c, k).T.reshape(-1)


def _select(scores: torch.Tensor, module: nn.Module, config: UnstructuredPruneConfig,
            per_row: bool, sparsity: float | None = None) -> torch.Tensor:
    """Keep-mask of one layer from its scores, in the layer's own column order (`sparsity`:
    this layer's, default the stage's)."""
    sparsity = config.target_sparsity if sparsity is None else sparsity
    perm = _column_order(module, config.nm)
    if perm is None:
        return keep_mask(scores, sparsity, config.nm, per_row)
    keep = torch.empty_like(scores, dtype=torch.bool)
    keep[:, perm] = keep_mask(scores[:, perm], sparsity, config.nm, per_row)
    return keep


def _magnitude_keep(module: nn.Module, config: UnstructuredPruneConfig) -> torch.Tensor:
    """Keep-mask of the largest |W|: per layer, or per row for an embedding table (each token
    keeps the same share of its values)."""
    return _select(weight_matrix(module).abs(), module, config,
                   per_row=isinstance(module, nn.Embedding))


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
    per_block = owl_sparsities(ratios, config.target_sparsity, config.owl_spread)
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
        return _select(_wanda_scores(weight_matrix(module), stats[name]), module, config,
                       config.rows_compete(module), sparsity)

    probe = Probe.on(adapter, context.data, config.sensitivity_samples) \
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
        self.masks: dict[str, torch.Tensor] = {}

    def sparse(self, module: nn.Module, keep: torch.Tensor,
               matrix: torch.Tensor | None) -> nn.Module:
        self.kept += int(keep.sum())
        self.total += keep.numel()
        return sparse_module(module, keep, matrix, self.config.pattern)

    def stand_in(self, name: str, module: nn.Module, keep: torch.Tensor,
                 matrix: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        """A dense layer with the pruned weights, used while later blocks calibrate (dense
        layers run faster than sparse ones); `finish` swaps in the compact modules."""
        self.masks[name] = keep
        weight = (matrix * keep).view(module.weight.shape)
        return dense_layer(layer_args(module), weight, bias)

    def finish(self, model: nn.Module) -> None:
        replace_modules(model, {n: self.sparse(model.get_submodule(n), keep, None)
                                for n, keep in self.masks.items()})

    def summary(self, modules: int) -> dict[str, Any]:
        out: dict[str, Any] = {"modules": modules, "pattern": self.config.pattern,
                               "sparsity": round(1 - self.kept / max(self.total, 1), 6)}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def _nothing_to_do(config: UnstructuredPruneConfig) -> bool:
    return config.nm is None and config.target_sparsity == 0


@register_method("prune", "magnitude", MagnitudeConfig)
@with_schedule
def apply_magnitude(adapter: Adapter, config: MagnitudeConfig,
                    context: StageContext) -> dict[str, Any]:
    """Magnitude pruning: drop the smallest |W| of each layer, or of all targeted layers."""
    layers, skipped = _prunable(adapter, config, calibrated=False)
    tally = _Tally(config, skipped)
    if _nothing_to_do(config):
        return tally.summary(0)
    matrices = {n: weight_matrix(m) for n, m in layers.items()}
    if config.scope == "global":
        masks = global_keep_masks([w.abs() for w in matrices.values()], config.target_sparsity)
        keep = dict(zip(matrices, masks, strict=True))
    else:
        keep = {n: _magnitude_keep(m, config) for n, m in layers.items()}
    replace_modules(adapter.model, {n: tally.sparse(m, keep[n], matrices[n])
                                    for n, m in layers.items()})
    return tally.summary(len(layers))


def _swapped(module: nn.Module, weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
             config: CalibratedPruneConfig) -> tuple[torch.Tensor, int]:
    """(`keep` refined by swaps, rounds used), in the layer's own column order (N:M groups of a
    convolution run over the channels of one kernel position, as when the mask was chosen)."""
    perm = _column_order(module, config.nm)
    order = slice(None) if perm is None else perm
    keep[:, order], used = refine_by_swaps(weight[:, order], keep[:, order],
                                           hessian[order][:, order], config.nm, config.swaps)
    return keep, used


def _prune_calibrated(adapter: Adapter, config: CalibratedPruneConfig, context: StageContext,
                      make_collector: Callable[[str, nn.Module], Any],
                      prune_layer: Callable[[nn.Module, torch.Tensor, Any, Any, float],
                                            tuple[torch.Tensor, torch.Tensor]],
                      desc: str) -> dict[str, Any]:
    """What Wanda, SparseGPT and ADMM share: the prunable layers, a sparsity per layer (uniform or
    OWL), then block-by-block calibration (or, not `sequential`, one pass over the unpruned
    model) where `prune_layer(module, weight, stats, hessian, sparsity)` gives (keep mask, new
    weight matrix) for the layer's weight matrix `weight` (`hessian`: the Gram matrix to fit,
    centred with `bias_correction`); compact sparse modules replace them at the
    end. With `asymmetric`, the collectors also pair each layer's inputs with the unpruned
    model's, and `weight` is the map from this layer's inputs closest to the unpruned outputs
    (`reference_fit`), so masking it and refitting to it aim at the unpruned model."""
    layers, skipped = _prunable(adapter, config, calibrated=True)
    tally = _Tally(config, skipped)
    if _nothing_to_do(config):
        return tally.summary(0)
    rounds: list[int] = []  # swap rounds each layer used
    reference = copy.deepcopy(adapter.model) if config.asymmetric else None
    tables, layers = split_embeddings(layers)
    replace_modules(adapter.model, {  # by magnitude, before the layers that read them calibrate
        n: tally.sparse(m, _magnitude_keep(m, config), None) for n, m in tables.items()})

    def replace(name: str, module: nn.Module, stats: Any) -> nn.Module:
        original = target = weight_matrix(module)
        shift_bias = config.bias_correction and module.bias is not None
        hessian, cross = stats.centred() if shift_bias else (stats.hessian, stats.cross)
        if config.asymmetric:
            target = reference_fit(target, hessian, cross, config.damp).float()
        keep, weight = prune_layer(module, target, stats, hessian, sparsity[name])
        if config.swaps:
            keep, used = _swapped(module, target, keep, hessian, config)
            rounds.append(used)
        if config.refit:
            weight = refit_kept(target, keep, hessian, config.damp)
        bias = module.bias
        if shift_bias:
            lost = original.double() @ stats.reference_mean.double() \
                - (weight * keep).double() @ stats.mean.double()
            bias = (bias.detach().double() + lost).to(bias.dtype)
        return tally.stand_in(name, module, keep, weight, bias)

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
              hessian: torch.Tensor | None, sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
        keep = _select(_wanda_scores(w, stats), module, config,
                       config.rows_compete(module), sparsity)
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
              sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
        perm = _column_order(module, config.nm)
        if perm is not None:
            w, h = w[:, perm], h[perm][:, perm]
        new, keep = sparsegpt_prune(w, h, sparsity, config.nm, config.damp, config.block_size,
                                    config.rows_compete(module))
        if perm is not None:
            new[:, perm], keep[:, perm] = new.clone(), keep.clone()
        return keep, new

    return _prune_calibrated(adapter, config, context, lambda n, m: HessianCollector(),
                             prune, "sparsegpt")


@register_method("prune", "admm", AdmmConfig)
@with_schedule
def apply_admm(adapter: Adapter, config: AdmmConfig, context: StageContext) -> dict[str, Any]:
    """ADMM with a gradual mask (Boža, 2024): alternate the layer's least-squares fit and the
    projection onto the sparsity pattern while the pattern's sparsity rises."""

    def prune(module: nn.Module, w: torch.Tensor, stats: HessianCollector, h: torch.Tensor,
              sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
        per_row = config.rows_compete(module)
        nm_mask = None if config.nm is None else (  # in the layer's own column order
            lambda scores: _select(scores, module, config, per_row))
        new, keep = admm_prune(w, h, sparsity, nm_mask, per_row, config.iterations, config.rho,
                               config.damp)
        return keep, new

    return _prune_calibrated(adapter, config, context, lambda n, m: HessianCollector(),
                             prune, "admm")
