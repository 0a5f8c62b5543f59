"""Recipe settings of unstructured and N:M pruning (magnitude, Wanda, SparseGPT, ADMM),
validated where the recipe is read; `prune_unstructured` applies them."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from ..sparsity import NM, parse_pattern, pattern_name
from ..sparsity.swaps import DEFAULT_ROUNDS
from .base import LAYER_ORDER, MethodConfig, layer_types
from .training_hooks import Schedule

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


PERMUTE = ("N:M patterns: form each layer's groups of M over an order of its inputs chosen "
           "so that inputs the rows need spread over different groups (channel permutation; "
           "a convolution's input channels, one order for every kernel position), saved with "
           "the layer; a local search for the order that keeps the most score in the mask "
           "(|W| for magnitude, |W|·‖X‖ otherwise; ignored without an N:M pattern unless "
           "asked for)")


class UnstructuredPruneConfig(MethodConfig):
    """Settings every unstructured pruning method takes."""

    sparsity: float | None = Field(None, ge=0, lt=1, description="fraction of weights removed "
                                   "(an N:M pattern implies 1 - N/M)")
    pattern: str = Field("unstructured", description="'unstructured', or 'N:M': at most N "
                         "nonzeros in every M consecutive inputs of a row (a convolution's "
                         "inputs ordered kernel position first; with 'permute', a layer's "
                         "in its saved order)")
    scope: Literal["layer", "global"] = Field("layer", description="rank weights within each "
                                              "layer, or across all targeted layers (magnitude)")
    convolutions: bool = Field(True, description="also prune 2-d convolutions")
    embeddings: bool = Field(False, description="also prune embedding tables (by magnitude, "
                             "the same share of every token's row, whatever the method)")
    schedule: Schedule | None = Field(None, description="prune gradually while a later "
                                      "finetune/distill stage trains (magnitude, wanda)")
    permute: bool = Field(False, description=PERMUTE)
    layer_sparsity: Literal["uniform", "owl", "sensitivity"] = Field(
        "uniform", description="every block at `sparsity`; 'owl': blocks whose Wanda scores "
        "hold more outliers pruned less, `sparsity` of all the weights removed; or "
        "'sensitivity': a sparsity per layer from each layer's measured output error, "
        "`sparsity` of all the weights removed (wanda, sparsegpt, admm; unstructured)")
    sensitivity_samples: int = Field(64, ge=0, description="layer_sparsity 'sensitivity': "
                                     "examples probing each layer's effect on the model's "
                                     "output (0: each layer's relative output error alone)")
    owl_threshold: float = Field(5.0, gt=1, description="OWL: a score is an outlier above this "
                                 "many times its block's mean score")
    owl_spread: float = Field(0.08, ge=0, lt=0.5, description="OWL: block sparsities span "
                              "twice this (less where clamped to [0, 0.99])")
    layer_order: ClassVar[int | None] = LAYER_ORDER.index("unstructured pruning")

    def kinds(self) -> tuple[type[nn.Module], ...]:
        """Layer types this config prunes."""
        return layer_types(self.convolutions, self.embeddings)

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
        if self.permute and nm is None and "permute" in self.model_fields_set:
            raise ValueError("'permute' orders a layer's inputs for its N:M groups: give an "
                             "N:M 'pattern' (e.g. '2:4') or drop 'permute'")
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

    @property
    def permutes(self) -> bool:
        """Whether N:M groups run over a chosen order of each layer's inputs (a
        convolution's input channels)."""
        return self.permute and self.nm is not None

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

    @model_validator(mode="after")
    def _no_calibrated_settings(self) -> MagnitudeConfig:
        given = sorted(self.model_fields_set & {"owl_threshold", "owl_spread",
                                                "sensitivity_samples"})
        if given:
            raise ValueError(f"{', '.join(given)} tune layer_sparsity 'owl' or 'sensitivity', "
                             "which magnitude does not use (wanda, sparsegpt, admm)")
        return self


class CalibratedPruneConfig(UnstructuredPruneConfig):
    """Settings of the methods that calibrate on data (Wanda, SparseGPT, ADMM)."""

    # at 2:4 the order raised embedding fidelity in all 21 rows measured (MiniLM on STS-B dev
    # and four held-out quarters, lit-cifar with and without the BatchNorm correction) and
    # lowered the loss in 16 of the 18 without that correction (docs/methods.md); magnitude
    # keeps its own order, the data-free baseline
    permute: bool = Field(True, description=PERMUTE)

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
    act_order: bool = Field(False, description="unstructured patterns: visit the columns by "
                            "decreasing Hessian diagonal, as GPTQ's act-order does (on MiniLM "
                            "it lowered STS-B dev fidelity at 60% and 70%; docs/methods.md)")
    # SparseGPT's own update approximates the least-squares fit to its mask; solving it exactly
    # (`refit`, on by default) lost less in 13 of 15 comparisons on MiniLM (STS-B dev, held-out
    # train pairs) and lit-cifar, with and without the BatchNorm correction; the other two by
    # 0.0015 (docs/methods.md). Its mask compares each output row's weights in linear layers
    # (`comparison: auto`), as Wanda does: on MiniLM that lost less than the paper's block-wide
    # choice at 60% and 70%, on STS-B dev and held-out train pairs (docs/methods.md)

    @model_validator(mode="after")
    def _act_order_unstructured(self) -> SparseGPTConfig:
        if self.act_order and self.nm is not None:
            raise ValueError("'act_order' orders the columns of an unstructured mask; an N:M "
                             "pattern's groups take their order from 'permute': drop one")
        return self


class AdmmConfig(_UpdatingPruneConfig):
    method: str = "admm"
    iterations: int = Field(40, ge=1, description="ADMM iterations; the sparsity rises to its "
                            "target over the first three quarters of them")
    rho: float = Field(1.0, gt=0, description="ADMM penalty, relative to the Hessian scaled "
                       "to a unit diagonal")
