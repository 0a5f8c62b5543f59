"""``finetune: {method: task}``: train the model on its own task loss (see `training`)."""

from __future__ import annotations

from typing import Any, Literal

from ..adapters import Adapter
from ..training.stage import TrainStageConfig, run_training, training_data
from ..training.tasks import TaskObjective, make_task
from .base import StageContext, register_method


class FinetuneConfig(TrainStageConfig):
    method: Literal["task"] = "task"


@register_method("finetune", "task", FinetuneConfig)
def apply_finetune(adapter: Adapter, config: FinetuneConfig,
                   context: StageContext) -> dict[str, Any]:
    """Fine-tune on the task loss (contrastive, cross-entropy or cosine-to-gold)."""
    task = make_task(adapter, training_data(config, context), config.augment)
    return run_training(adapter, TaskObjective(adapter, task), config, context)
