"""What every method shares: a validated config, a registry, and the context it runs in."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator
from torch import nn

from ..adapters import Adapter
from ..calibration import CalibrationData
from ..data import Dataset
from ..errors import DataError, RecipeError
from ..evaluation.config import CalibrationConfig
from ..modules.half import HalfWeight
from ..modules.int8 import W8A8Linear, W8A8PatchConv2d
from ..modules.lowrank import CPConv2d, TuckerConv2d
from ..modules.quantized import QuantConv2d, QuantEmbedding, QuantLinear
from ..modules.registry import MODULE_TYPES
from ..modules.replace import not_reproducible
from ..modules.sparse import SparseQuantConv2d, SparseQuantEmbedding, SparseQuantLinear
from ..progress import warn
from ..selection import check_tokens, select_modules, token_pattern
from ..settings_base import Settings

if TYPE_CHECKING:
    from ..recipe import Stage

STAGE_KINDS = ("prune", "quantize", "lowrank", "distill", "finetune")
#: the order stages that replace layers take on the same layers: each later one can take what
#: the earlier ones made (a quantized layer nothing else; a layer is quantized once)
LAYER_ORDER = ("structured pruning", "low-rank factorisation", "unstructured pruning",
               "quantization")


def layer_types(convolutions: bool, embeddings: bool) -> tuple[type[nn.Module], ...]:
    """Linear layers, with convolutions and embedding tables when asked for."""
    return (nn.Linear,) + ((nn.Conv2d,) if convolutions else ()) + \
        ((nn.Embedding,) if embeddings else ())


class MethodConfig(Settings):
    """Fields every method takes. Subclasses add theirs; unknown keys are refused."""

    method: str = Field(description="the method's name")
    targets: list[str] | None = Field(None, min_length=1, description="towers, module names "
                                      "or re:regexes to act on; null = every tower")
    ignore: list[str] = Field([], description="modules (same grammar) left out of `targets`")
    # a finetune/distill method that runs the trainer (what `qat` and `schedule` wait for)
    runs_trainer: ClassVar[bool] = True
    #: where a stage that replaces layers comes among those acting on the same layers
    #: (`LAYER_ORDER`); None: it replaces none (training)
    layer_order: ClassVar[int | None] = None

    def kinds(self) -> tuple[type[nn.Module], ...]:
        """Layer types this stage replaces."""
        return ()

    @field_validator("targets", "ignore")
    @classmethod
    def _patterns_compile(cls, tokens: list[str] | None) -> list[str] | None:
        for token in tokens or ():
            try:
                token_pattern(token)
            except RecipeError as exc:
                raise ValueError(str(exc)) from None
        return tokens

    def wants_original(self) -> bool:
        """Whether this stage reads the model before the recipe (``extra['original']``, a
        copy the recipe pipeline then keeps)."""
        return False

    def trains_later(self) -> str | None:
        """The option (``qat``, ``schedule``) that makes this stage finish while a later
        finetune/distill stage trains, when it is set (`methods.training_hooks`)."""
        return next((k for k in ("qat", "schedule") if getattr(self, k, None)), None)


@dataclass
class StageContext:
    """What a method may use besides the model: the data, calibration settings, progress."""

    data: Dataset | None = None  # calibration (and default training) examples
    calibration: Any = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: what the running stage last drew for calibration (`CalibrationData.drawn`), if anything
    drawn: dict[str, dict[str, int]] | None = None

    def calibration_data(self, adapter: Adapter,
                         batch_size: int | None = None) -> CalibrationData:
        """Calibration batches drawn from the calibration data with the recipe's settings
        (`batch_size`: instead of the recipe's)."""
        if self.data is None:
            raise DataError("this method needs calibration data; pass --data (or use the "
                            "model's default data)")
        config = self.calibration if self.calibration is not None else CalibrationConfig()
        samples, text_tokens = config.amounts()
        calibration = adapter.calibration_data(self.data, samples,
                                               batch_size or config.batch_size, config.seed,
                                               text_tokens)
        self.drawn = calibration.drawn
        return calibration


ApplyFn = Callable[[Adapter, MethodConfig, StageContext], dict[str, Any]]


@dataclass(frozen=True)
class Method:
    kind: str
    name: str
    config_cls: type[MethodConfig]
    apply: ApplyFn
    summary: str


METHODS: dict[tuple[str, str], Method] = {}


def register_method(
    kind: str, name: str, config_cls: type[MethodConfig]
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: register `apply(adapter, config, context) -> stage summary` under kind/name."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}")

    def wrap(fn: ApplyFn) -> ApplyFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METHODS[(kind, name)] = Method(kind, name, config_cls, fn, summary)
        return fn

    return wrap


def run_stage(adapter: Adapter, stage: Stage, context: StageContext) -> dict[str, Any]:
    """Apply one recipe stage with the method registered for it; its summary, with what the
    stage calibrated on (``calibration``: examples, and real tokens of text, per modality;
    ``calibration_data``: the data set's name)."""
    context.drawn = None
    low_bit_before = _low_bit_factors(adapter) if stage.kind == "quantize" else set()
    summary = METHODS[(stage.kind, stage.config.method)].apply(adapter, stage.config, context)
    if stage.kind == "quantize" and isinstance(summary, dict):
        _warn_of_low_bit_factors(_low_bit_factors(adapter) - low_bit_before, summary)
    if context.drawn and isinstance(summary, dict):
        summary.setdefault("calibration", context.drawn)
        if context.data is not None:
            summary.setdefault("calibration_data", context.data.name)
    return summary


def _low_bit_factors(adapter: Adapter) -> set[str]:
    """Names of the factors of CP and Tucker convolutions that hold fewer than 8 bits."""
    return {f"{name}.{child}" for name, m in adapter.model.named_modules()
            if isinstance(m, CPConv2d | TuckerConv2d)
            for child, part in m.named_children()
            if getattr(getattr(part, "grid", None), "bits", 16) < 8}


def _warn_of_low_bit_factors(new: set[str], summary: dict[str, Any]) -> None:
    """Convolution factors (CP, Tucker) a stage took below 8 bits: their terms partly cancel,
    so rounding each factor can wreck the kernel they compose (ResNet-20: CP then int4 top-1
    0.830 → 0.091; docs/methods.md). Counted in the summary, and said on stderr (once: a later
    stage that leaves them as they are does not repeat it)."""
    n = len(new)
    if n:
        summary["factor_layers_below_8_bits"] = n
        warn(f"{n} factors of CP or Tucker convolutions now hold fewer than 8 bits: "
             "their terms partly cancel, so rounding them can cost much more accuracy than "
             "either step alone; quantize them at 8 bits or leave them out with 'ignore:'")


def keep_original(adapter: Adapter, stages: Sequence[Stage], context: StageContext) -> None:
    """Copy the model before the stages into ``context.extra['original']`` when one of them
    reads it and no original was given."""
    if "original" not in context.extra and any(s.config.wants_original() for s in stages):
        context.extra["original"] = copy.deepcopy(adapter)


def run_stages(adapter: Adapter, stages: Sequence[Stage],
               context: StageContext) -> list[dict[str, Any]]:
    """Apply recipe stages in order, as the recipe pipeline does (without its evaluation
    after each); their summaries."""
    keep_original(adapter, stages, context)
    summaries = []
    for i, stage in enumerate(stages):
        context.extra["stage"] = i
        summaries.append(run_stage(adapter, stage, context))
    return summaries


def check_targets(adapter: Adapter, stages: Sequence[Stage]) -> None:
    """Refuse, before any work, a stage's `targets`/`ignore` entry that names nothing in this
    model (`selection.check_tokens`)."""
    for i, stage in enumerate(stages):
        for key in ("targets", "ignore"):
            check_tokens(adapter.model, adapter.towers(), getattr(stage.config, key) or (),
                         f"stage {i} ({stage.kind}: {stage.config.method}) {key} entry")


def methods_for(kind: str) -> list[str]:
    return sorted(name for k, name in METHODS if k == kind)


def selected(
    adapter: Adapter, config: MethodConfig, kinds: tuple[type[nn.Module], ...]
) -> dict[str, nn.Module]:
    """The modules of `kinds` a method config's `targets`/`ignore` choose in this model."""
    return select_modules(adapter.model, adapter.towers(), kinds, config.targets, config.ignore)


def plain_layers(adapter: Adapter, config: MethodConfig, kinds: tuple[type[nn.Module], ...],
                 action: str, advice: str) -> dict[str, nn.Module]:
    """`selected`, after refusing targeted layers of `kinds` that an earlier stage made compact
    (quantized, half precision, W8A8), which `kinds` would pass over without a word, and layers
    no compact layer reproduces (`not_reproducible`). A factored layer is a container of plain
    layers, not a compact one."""
    compact = [(n, m) for n, m in selected(adapter, config, tuple(MODULE_TYPES.values())).items()
               if (stood_for := compact_kind(m)) is not None and issubclass(stood_for, kinds)]
    if compact:
        name, module = compact[0]
        more = f" (and {len(compact) - 1} more layers like it)" if len(compact) > 1 else ""
        raise RecipeError(f"{action} cannot take {name}, a {type(module).__name__}{more}; "
                          f"{advice}, or leave it out with 'ignore:'")
    chosen = selected(adapter, config, kinds)
    odd = [(n, why) for n, m in chosen.items() if (why := not_reproducible(m))]
    if odd:
        name, why = odd[0]
        more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
        raise RecipeError(f"{action} cannot take {name}{more}: {why}; leave it out with "
                          "'ignore:'")
    if not chosen:  # the stage would change nothing without a word
        kinds_named = "/".join(k.__name__ for k in kinds)
        targets = "every tower" if config.targets is None else ", ".join(config.targets)
        raise RecipeError(f"{action}: no {kinds_named} layer of this model is left to take "
                          f"(targets: {targets}; ignore: {', '.join(config.ignore)})")
    return chosen


_COMPACT_KINDS: dict[type[nn.Module], type[nn.Module]] = {
    QuantLinear: nn.Linear, SparseQuantLinear: nn.Linear, W8A8Linear: nn.Linear,
    QuantConv2d: nn.Conv2d, SparseQuantConv2d: nn.Conv2d, W8A8PatchConv2d: nn.Conv2d,
    QuantEmbedding: nn.Embedding, SparseQuantEmbedding: nn.Embedding,
}
_HALF_KINDS = {"linear": nn.Linear, "conv2d": nn.Conv2d, "embedding": nn.Embedding}


def compact_kind(module: nn.Module) -> type[nn.Module] | None:
    """The plain layer type a compact (quantized, half or W8A8) module stands in for; None for
    anything else, plain, sparse or factored."""
    if isinstance(module, HalfWeight):
        return _HALF_KINDS[module.args["kind"]]
    return _COMPACT_KINDS.get(type(module))


def split_embeddings(modules: dict[str, nn.Module]) -> tuple[dict, dict]:
    """(embedding tables, everything else): tables have no input activations to calibrate."""
    tables = {n: m for n, m in modules.items() if isinstance(m, nn.Embedding)}
    return tables, {n: m for n, m in modules.items() if n not in tables}
