"""Stages that finish during training: quantization-aware training and gradual pruning.

``quantize: {method: rtn|gptq|awq, ..., qat: true}`` quantizes as usual, then turns the quantized
layers back into trainable fake-quantized ones; ``prune: {method: ..., schedule: {...}}`` adds
pruning masks instead of pruning at once. Either stage *arms* a training callback in the
run's `StageContext`; the next ``finetune`` or ``distill`` stage takes the armed callbacks
(`take_armed`) and hands them to its trainer, which calls them while it trains. When training
ends they convert the model to the saved format of the one-shot method (`QuantLinear`,
`SparseLinear`, physically smaller layers). A recipe with such a stage and no training stage
after it is refused when it is parsed.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
)

from ..settings_base import Settings
from .activations import ActivationQuantConfig
from .base import ApplyFn, MethodConfig, StageContext

TRAINING_KINDS = ("finetune", "distill")
_ARMED = "train_callbacks"


class QATOptions(Settings):
    """``qat: true`` or ``qat: {scales: minmax|learned, activations: {...}}``."""

    scales: Literal["minmax", "learned"] = Field(
        "minmax", description="minmax: recomputed from the weights at every step; learned: "
        "trained with the weights (LSQ), starting from the post-training scales")
    activations: ActivationQuantConfig | None = Field(
        None, description="also fake-quantize linear layers' inputs (static int8, range from "
        "calibration); they become W8A8Linear (needs rtn, bits 8, per channel, symmetric, "
        "no budget)")


def parse_qat(value: Any) -> bool | QATOptions:
    """``qat:`` as written: true, false, or a mapping of `QATOptions` (errors name the key)."""
    if isinstance(value, bool | QATOptions):
        return value
    if isinstance(value, dict):
        try:
            return QATOptions.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise ValueError(f"qat.{where}: {err['msg']} (options: "
                             f"{', '.join(QATOptions.model_fields)})") from None
    raise ValueError(f"qat is true, false or a mapping like {{scales: learned}}, got {value!r}")


def qat_options(value: bool | QATOptions | None) -> QATOptions | None:
    """The QAT options a ``qat:`` field asks for, or None when QAT is off."""
    if value is True:
        return QATOptions()
    return value or None


class Schedule(Settings):
    """``schedule: {kind: cubic, start, end, every, initial}`` (Zhu & Gupta 2017).

    `start` and `end` are step numbers (integers) or fractions of the training stage's steps
    (numbers with a decimal point, in [0, 1]).
    """

    kind: Literal["cubic"] = Field("cubic", description="the schedule's shape (Zhu & Gupta's "
                                   "cubic, the only one)")
    start: NonNegativeInt | float = Field(0, description="first pruning step (t0)")
    end: NonNegativeInt | float = Field(0.75, description="step where the final sparsity is "
                                        "reached (t0 + nΔt)")
    every: int = Field(10, ge=1, description="steps between pruning events (Δt)")
    initial: float = Field(0.0, ge=0, lt=1, description="sparsity at t0 (s_i)")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _step_or_fraction(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a step number or a fraction in [0, 1], got {v!r}")
        if isinstance(v, float) and not 0 <= v <= 1:
            raise ValueError(f"a fraction of the training steps must be in [0, 1], got {v} "
                             "(write a step number without a decimal point)")
        return v

    def steps(self, total_steps: int) -> tuple[int, int]:
        """(t0, t_end) as step numbers for a training run of `total_steps`."""

        def resolve(v: int | float) -> int:
            return round(v * total_steps) if isinstance(v, float) else v

        return resolve(self.start), resolve(self.end)


def arm(context: StageContext, callback: Any) -> None:
    """Leave a training callback for the next training stage."""
    context.extra.setdefault(_ARMED, []).append(callback)


def take_armed(context: StageContext) -> list[Any]:
    """The callbacks earlier stages armed (and forget them): a training stage passes them to
    its trainer."""
    return context.extra.pop(_ARMED, [])


def with_qat(apply: ApplyFn) -> ApplyFn:
    """Wrap a weight-quantization method: with ``qat`` set, quantize, then make the quantized
    layers trainable and arm the conversion callback."""

    @functools.wraps(apply)
    def run(adapter: Any, config: MethodConfig, context: StageContext) -> dict[str, Any]:
        options = qat_options(getattr(config, "qat", None))
        if options is None:
            return apply(adapter, config, context)
        from ..training.qat import prepare_qat  # the training package imports the methods

        return prepare_qat(apply, adapter, config, context, options)

    return run


def with_schedule(apply: ApplyFn) -> ApplyFn:
    """Wrap a pruning method: with ``schedule`` set, add masks and arm gradual pruning
    instead of pruning at once."""

    @functools.wraps(apply)
    def run(adapter: Any, config: MethodConfig, context: StageContext) -> dict[str, Any]:
        if getattr(config, "schedule", None) is None:
            return apply(adapter, config, context)
        from ..training.gradual import prepare_gradual

        return prepare_gradual(adapter, config, context)

    return run
