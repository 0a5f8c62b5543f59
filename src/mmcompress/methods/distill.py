"""``distill: {method: kd, teacher, losses, alpha, temperature, student}``: train the model
(optionally first shrunk into a student by weight inheritance) to match a frozen teacher."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, model_validator

from ..adapters import Adapter
from ..errors import RecipeError, UserError
from ..model_specs import load_model
from ..training.distill import LOSSES, DistillObjective, inherited_blocks
from ..training.stage import TrainStageConfig, run_training, training_data
from ..training.students import StudentConfig, build_student
from ..training.tasks import make_task
from .base import StageContext, register_method

DEFAULT_LOSSES = {"classification": ["logits"], "multimodal": ["logits"],
                  "contrastive": ["affinity"], "sts": ["clip_kd"]}
LossName = Literal["logits", "features", "attention", "affinity", "clip_kd"]


class DistillConfig(TrainStageConfig):
    method: Literal["kd"] = "kd"
    teacher: str = Field("original", description="'original' (the model before the recipe), "
                         "a model spec or an output folder")
    losses: list[LossName] | None = Field(None, description="default by model kind: logits "
                                          "(classifiers), affinity (dual), clip_kd (sentence)")
    weights: dict[LossName, NonNegativeFloat] = Field(
        {}, description="weight of each loss (default 1)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of distillation vs task loss")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of logits KD")
    student: StudentConfig | None = Field(None, description="shrink the model first")
    cache_teacher: bool = Field(True, description="reuse teacher outputs per example")

    def wants_original(self) -> bool:
        return self.teacher == "original"

    @model_validator(mode="after")
    def _known(self) -> DistillConfig:
        if self.losses is not None and not self.losses:
            raise ValueError(f"losses: give at least one of {', '.join(LOSSES)}")
        if self.losses is not None:
            _check_weights(self.weights, self.losses)
        return self


def _check_weights(weights: dict[str, float], losses: list[str]) -> None:
    """A weight for a loss the stage does not compute would be ignored without a word."""
    unused = sorted(set(weights) - set(losses))
    if unused:
        raise ValueError(f"weights name {', '.join(unused)}, which is not among the losses "
                         f"({', '.join(losses)}); add it to 'losses' or drop its weight")


def _teacher(config: DistillConfig, adapter: Adapter, context: StageContext) -> Adapter:
    if config.teacher != "original":
        return load_model(config.teacher, progress=context.progress)
    original = context.extra.get("original")
    # outside compress() no copy was kept: the model as this stage receives it
    return original if original is not None else copy.deepcopy(adapter)


@register_method("distill", "kd", DistillConfig)
def apply_distill(adapter: Adapter, config: DistillConfig,
                  context: StageContext) -> dict[str, Any]:
    """Distill from a frozen teacher (logits, features, attention, affinity, CLIP-KD)."""
    teacher = _teacher(config, adapter, context)
    if teacher is adapter or teacher.model is adapter.model:
        raise UserError("the teacher must be a separate model from the student")
    data = training_data(config, context)
    summary: dict[str, Any] = {}
    if config.student is not None:
        summary["student"] = build_student(adapter, config.student, context, teacher.model)
    # the blocks came from this teacher (some maybe removed, here or by an earlier stage):
    # compare each with the block it was
    layer_map = inherited_blocks(adapter.model, teacher.model) if config.wants_original() \
        else None
    task = make_task(adapter, data, config.augment)
    losses = config.losses or DEFAULT_LOSSES[task.kind]
    try:
        _check_weights(config.weights, losses)
    except ValueError as exc:
        raise RecipeError(f"distill: {exc}; those are this model's default losses") from None
    objective = DistillObjective(adapter, teacher, task, losses, config.alpha,
                                 config.temperature, dict(config.weights), layer_map,
                                 cache=config.cache_teacher, seed=config.seed)
    summary.update(run_training(adapter, objective, config, context))
    summary["losses"] = losses
    return summary
