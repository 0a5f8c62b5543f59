"""Low-rank stages: ``lowrank: {method: svd | svd-whiten | tucker | cp, ...}``.

Every method picks ranks one of three ways: a fixed ``rank``; a kept spectral ``energy``
(svd methods); or ``param_ratio``, the fraction of the selected layers' weights to keep, spread
over layers and towers either ``uniform`` (each layer keeps that fraction) or by
``sensitivity``: a first calibration pass measures every truncation's output error on the
calibration inputs (relative to the layer's output; closed form for SVD), scaled per layer so
that at the uniform choice it equals the model's fidelity loss when only that layer is factored
(`sensitivity_samples` examples, a `Probe`); `rank_allocation` then spends the budget where the
loss per weight saved is lowest. A layer is factored only where that saves weights; otherwise
it stays dense. A budget below what the smallest ranks keep, and a ``rank`` or ``energy`` that
factors no layer, are refused before the model changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator
from torch import nn

from ..adapters import Adapter
from ..calibration import HessianCollector, calibrate_layers
from ..calibration.reference import reference_fit
from ..errors import DataError, RecipeError, UserError
from ..factorization.svd import ScaledSVD, scaled_svd
from ..modules.lowrank import LowRankLinear, max_useful_rank
from ..modules.replace import replace_modules
from ..modules.sparse import is_sparse
from ..progress import progress_bar
from ..sensitivity import Probe
from .base import LAYER_ORDER, MethodConfig, StageContext, plain_layers, register_method
from .rank_allocation import (
    SMALLEST,
    LayerOptions,
    allocate_ranks,
    check_reachable,
    scale_to_measured,
    uniform_choice,
    uniform_ranks,
)


class LowRankConfig(MethodConfig):
    """Rank selection shared by the low-rank methods: exactly one of the rank settings."""

    rank: PositiveInt | None = Field(None, description="the same rank on every selected layer")
    param_ratio: float | None = Field(None, gt=0, lt=1,
                                      description="fraction of the selected weights to keep")
    allocation: Literal["uniform", "sensitivity"] = Field(
        "sensitivity", description="with param_ratio: same fraction per layer, or measured")
    sensitivity_samples: int = Field(
        64, ge=0, description="examples probing each layer's effect on the model's output "
        "(0: rank by each layer's relative output error alone)")

    layer_order: ClassVar[int | None] = LAYER_ORDER.index("low-rank factorisation")

    def rank_settings(self) -> list[str]:
        return ["rank", "param_ratio"]

    @model_validator(mode="after")
    def _one_rank_setting(self) -> LowRankConfig:
        given = [k for k in self.rank_settings() if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(self.rank_settings())} "
                             f"(got {', '.join(given) or 'none'})")
        if "allocation" in self.model_fields_set and self.param_ratio is None:
            raise ValueError("allocation applies only with param_ratio")
        return self


class SVDConfig(LowRankConfig):
    method: str = "svd"
    energy: float | None = Field(None, gt=0, lt=1,
                                 description="per layer, the smallest rank keeping this energy")

    def rank_settings(self) -> list[str]:
        return ["rank", "energy", "param_ratio"]

    def kinds(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear,)


class SVDWhitenConfig(SVDConfig):
    """SVD-LLM whitening (``cholesky``) or ASVD per-channel scaling (``asvd``)."""

    method: str = "svd-whiten"
    whiten: Literal["cholesky", "asvd"] = Field("cholesky", description="input scaling")
    alpha: float = Field(0.5, gt=0, le=1, description="asvd: scale = mean|x| ** alpha")
    damp: float = Field(0.01, gt=0, lt=1, description="XᵀX damping, fraction of mean diagonal")
    bias_correction: bool = Field(False, description="add the truncation's mean output error "
                                  "E[W·x_orig − W_r·x] to the bias")
    asymmetric: bool = Field(True, description="fit each layer to the uncompressed model's "
                             "outputs from the inputs the already-factored layers give it, so "
                             "it also corrects their error (keeps a copy of the model while "
                             "calibrating); false: SVD-LLM's fit to the layer's own weight")


class Factorizer:
    """What a low-rank method does to one layer type; subclasses fill it in."""

    kinds: tuple[type[nn.Module], ...] = ()
    smallest: str = SMALLEST  # what the least-weight options are, for an out-of-reach budget
    needs_stats: bool = False  # the factorization itself reads calibration statistics
    asymmetric: bool = False  # it fits the uncompressed model's outputs (paired statistics)

    def __init__(self, config: LowRankConfig) -> None:
        self.config = config

    def supports(self, module: nn.Module) -> bool:
        return True

    def dense(self, module: nn.Module) -> int:
        return module.weight.numel()

    def fixed(self, module: nn.Module) -> Any:
        """The choice a fixed ``rank`` makes (None: it would not save weights)."""
        raise NotImplementedError

    def options(self, name: str, module: nn.Module, stats: Any) -> LayerOptions:
        """The layer's factored options; losses are measured when `stats` is given."""
        raise NotImplementedError

    def factor(self, name: str, module: nn.Module, choice: Any, stats: Any) -> nn.Module | None:
        raise NotImplementedError


def _calibrate(adapter: Adapter, modules: dict[str, nn.Module], context: StageContext,
               replace: Callable[[str, nn.Module, Any], nn.Module | None], desc: str,
               reference: nn.Module | None = None) -> int:
    calib = context.calibration_data(adapter)
    return calibrate_layers(adapter, modules, calib, lambda n, m: HessianCollector(), replace,
                            desc, context.progress, release=True, reference=reference)


def _choices(adapter: Adapter, factorizer: Factorizer, modules: dict[str, nn.Module],
             unfit: dict[str, int], context: StageContext
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choice per layer (absent: decided while factoring, by energy), and a summary; the
    `unfit` layers' weights (they stay dense) count in a ``param_ratio`` budget."""
    c = factorizer.config
    if c.rank is not None:
        choices = {n: factorizer.fixed(m) for n, m in modules.items()}
        if all(v is None for v in choices.values()):
            raise _saves_nothing(f"rank {c.rank}", "a smaller rank")
        return choices, {}
    if c.param_ratio is None:
        return {}, {}
    sizes = {n: factorizer.options(n, m, None) for n, m in modules.items()}  # weights, no loss
    sizes |= {n: LayerOptions(w) for n, w in unfit.items()}
    if c.allocation == "uniform":
        return uniform_ranks(sizes, c.param_ratio, factorizer.smallest)[0], {}
    check_reachable(sizes, c.param_ratio, factorizer.smallest)  # before calibrating
    options: dict[str, LayerOptions] = {}
    probe = Probe.reaching(adapter, context.data, c.sensitivity_samples, modules,
                           "rank sensitivity") \
        if c.sensitivity_samples and context.data is not None else None

    def measure(name: str, module: nn.Module, stats: HessianCollector) -> None:
        options[name] = factorizer.options(name, module, stats)
        if probe is not None:
            _weigh_by_probe(probe, factorizer, name, module, stats, options[name])

    _calibrate(adapter, modules, context, measure, "rank sensitivity")
    options |= {n: LayerOptions(w) for n, w in unfit.items()}
    choices, kept = allocate_ranks(options, c.param_ratio, factorizer.smallest)
    dense = sum(o.dense for o in options.values())
    return choices, {"predicted_param_ratio": round(kept / dense, 4)}


def _saves_nothing(setting: str, instead: str) -> RecipeError:
    return RecipeError(f"{setting} saves no weights on any selected layer; "
                       f"use {instead} or param_ratio")


def _weigh_by_probe(probe: Probe, factorizer: Factorizer, name: str, module: nn.Module,
                    stats: Any, layer: LayerOptions) -> None:
    """Scale the layer's output-error curve so that, at its uniform choice, it equals the
    model's measured fidelity loss with only this layer factored: errors in some layers
    (attention keys, say) matter far less to the output than equal errors in others."""
    ref = uniform_choice(layer, factorizer.config.param_ratio)
    trial = None if ref is None else factorizer.factor(name, module, ref, stats)
    if trial is None:
        return
    measured = probe.measure({name: module}, lambda n, m: trial)["fidelity_loss"]
    scale_to_measured(layer, ref, measured)


def apply_lowrank(adapter: Adapter, factorizer: Factorizer, context: StageContext,
                  desc: str) -> dict[str, Any]:
    """Choose ranks, then factor each selected layer where that saves weights."""
    found = plain_layers(adapter, factorizer.config, factorizer.kinds, desc,
                         "factor before quantizing")
    sparse = [n for n, m in found.items() if is_sparse(m)]
    if sparse:  # the factors would be dense: the pruning would be lost without a word
        raise RecipeError(f"{desc} cannot take {sparse[0]}, a pruned sparse layer: its factors "
                          "would be dense again; factor before unstructured pruning, or leave "
                          "it out with 'ignore:'")
    modules = {n: m for n, m in found.items() if factorizer.supports(m)}
    if not modules:
        raise RecipeError(f"{desc} found no layer it can factor among the selected modules")
    # selected layers this factorization cannot take (grouped convolutions, say, or layers no
    # rank makes smaller) stay dense, and count so in the budget and the summary
    unfit = {n: factorizer.dense(m) for n, m in found.items() if n not in modules}
    before, count = sum(factorizer.dense(m) for m in found.values()), len(found)
    choices, summary = _choices(adapter, factorizer, modules, unfit, context)
    new: dict[str, nn.Module] = {}

    def replace(name: str, module: nn.Module, stats: Any) -> nn.Module | None:
        if name in choices and choices[name] is None:
            return None
        out = factorizer.factor(name, module, choices.get(name), stats)
        if out is not None:
            new[name] = out
        return out

    if factorizer.needs_stats:
        # the model is unchanged while ranks are chosen; while factoring, the later layers see
        # the outputs of the factored ones, and an asymmetric fit compares them with a copy
        reference = copy.deepcopy(adapter.model) if factorizer.asymmetric else None
        _calibrate(adapter, modules, context, replace, desc, reference)
        del reference
    else:
        for name, module in progress_bar(modules.items(), desc=desc, enabled=context.progress):
            replace(name, module, None)
        replace_modules(adapter.model, new)
    energy = getattr(factorizer.config, "energy", None)
    if energy is not None and not new:  # every layer stayed dense: the model is unchanged
        raise _saves_nothing(f"energy {energy}", "a lower energy")
    after = sum(m.logical_params() - _bias(m) for m in new.values())
    # calibration removes replaced layers from `modules`: what is left stayed dense
    after += sum(factorizer.dense(m) for n, m in modules.items() if n not in new)
    after += sum(unfit.values())
    return {"modules": len(new), "kept_dense": count - len(new),
            "param_ratio": round(after / before, 4), **summary}


def _bias(module: nn.Module) -> int:
    bias = getattr(module, "bias", None)
    return 0 if bias is None else bias.numel()


def check_weight(name: str, module: nn.Module) -> None:
    """Refuse a layer whose weight holds NaN or Inf (it has no meaningful factorization)."""
    w = module.weight
    if not w.isfinite().all():
        raise UserError(f"layer {name!r}: the weight holds NaN or Inf values; cannot factor it")


def check_stats(name: str, stats: HessianCollector | None) -> None:
    if stats is not None and not stats.hessian.isfinite().all():
        raise DataError(f"layer {name!r}: the calibration inputs give a non-finite XᵀX "
                        "(NaN or Inf activations); check the data")


class SVDFactorizer(Factorizer):
    kinds = (nn.Linear,)

    def __init__(self, config: SVDConfig) -> None:
        super().__init__(config)
        self.scaling = getattr(config, "whiten", "none")
        self.needs_stats = self.scaling != "none"
        self.asymmetric = self.needs_stats and getattr(config, "asymmetric", False)
        self._last: tuple[tuple, ScaledSVD] | None = None  # measuring, then probing, one layer

    def supports(self, module: nn.Module) -> bool:
        return max_useful_rank(*module.weight.shape) >= 1

    def fixed(self, module: nn.Module) -> int | None:
        return self.config.rank if self.config.rank <= max_useful_rank(*module.weight.shape) \
            else None

    def _svd(self, name: str, module: nn.Module, stats: HessianCollector | None) -> ScaledSVD:
        key = (name, module, stats)  # held, so that no later object reuses these ids
        if self._last is not None and all(a is b for a, b in zip(self._last[0], key)):
            return self._last[1]
        check_weight(name, module)
        check_stats(name, stats)
        c = self.config
        weight = module.weight
        if stats is not None and self.asymmetric:
            weight = reference_fit(weight, stats.hessian, stats.cross, c.damp)
        try:
            svd = scaled_svd(weight, None if stats is None else stats.hessian,
                             self.scaling if stats is not None else "none",
                             None if stats is None else stats.abs_mean,
                             getattr(c, "alpha", 0.5), getattr(c, "damp", 0.01))
        except ValueError as exc:
            raise DataError(f"layer {name!r}: {exc}") from None
        self._last = (key, svd)
        return svd

    def options(self, name: str, module: nn.Module, stats: Any) -> LayerOptions:
        m, n = module.weight.shape
        ranks = range(1, max_useful_rank(m, n) + 1)
        error = self._svd(name, module, stats).error.tolist() if stats is not None else None
        return LayerOptions(m * n, [(r * (m + n), error[r] if error else 0.0, r) for r in ranks])

    def factor(self, name: str, module: nn.Module, choice: int | None,
               stats: HessianCollector | None) -> LowRankLinear | None:
        svd = self._svd(name, module, stats)  # plain SVD's factors ignore the statistics
        rank = choice if choice is not None else svd.energy_rank(self.config.energy)
        if rank > max_useful_rank(*module.weight.shape):
            return None
        up, down = svd.factors(rank)
        bias = None if module.bias is None else module.bias.detach()
        if stats is not None and getattr(self.config, "bias_correction", False):
            # the part of the output error a bias can absorb: E[W·x_ref − W_r·x], where x_ref
            # is the input in the uncompressed model (x itself unless a reference ran)
            shift = module.weight.detach().float() @ stats.reference_mean.float() \
                - up @ (down @ stats.mean.float())
            bias = shift if bias is None else bias + shift
        return LowRankLinear.from_factors(up, down, bias)


@register_method("lowrank", "svd", SVDConfig)
def apply_svd(adapter: Adapter, config: SVDConfig, context: StageContext) -> dict[str, Any]:
    """Truncated SVD of linear layers (the best rank-r approximation of each weight)."""
    return apply_lowrank(adapter, SVDFactorizer(config), context, "svd")


@register_method("lowrank", "svd-whiten", SVDWhitenConfig)
def apply_svd_whiten(adapter: Adapter, config: SVDWhitenConfig,
                     context: StageContext) -> dict[str, Any]:
    """Activation-aware SVD of linear layers (SVD-LLM whitening or ASVD scaling)."""
    return apply_lowrank(adapter, SVDFactorizer(config), context, "svd-whiten")
