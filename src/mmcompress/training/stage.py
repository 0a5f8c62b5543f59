"""What the `finetune` and `distill` stages share: their config fields, training data,
trainable parameters, checkpoint folder and per-epoch evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from ..adapters import Adapter
from ..data import Dataset, load_data
from ..errors import DataError, UserError
from ..evaluation.evaluate import quality
from ..methods.base import MethodConfig, StageContext
from ..methods.training_hooks import take_armed
from ..selection import select_modules, tower_of
from .callbacks import TrainCallback
from .settings import TrainSettings
from .trainer import EvalFn, Objective, Trainer


class TrainStageConfig(MethodConfig, TrainSettings):
    """Fields of every training stage: `TrainSettings` plus the data and what is trained
    (``targets``/``ignore``: the parameters of those modules; default every tower and the
    parameters outside towers, such as a logit scale)."""

    data: str | None = Field(None, description="training data spec; default: the run's "
                             "calibration data (see the calibration section)")
    augment: bool = Field(False, description="random crops (4-pixel padding) and flips of "
                          "training images")


def training_data(config: TrainStageConfig, context: StageContext) -> Dataset:
    """The stage's `data:` (read before any work by `api.compress`), else the run's
    calibration data: `calibration.data`, else the training split of a named held-out
    evaluation split (``demo`` → ``demo-train``), else the evaluation data."""
    if config.data is not None:
        read = context.extra.get("stage_data", {}).get(context.extra.get("stage"))
        data = read if read is not None else load_data(config.data)
    elif context.data is not None:
        data = context.data
    else:
        raise DataError("this stage needs training data: name it with 'data:' or pass --data")
    return data.head(config.max_examples)


@contextmanager
def trainable(adapter: Adapter, config: MethodConfig) -> Iterator[list[str]]:
    """Make exactly the selected parameters trainable for the block; restore flags after."""
    model, towers = adapter.model, adapter.towers()
    chosen = set(select_modules(model, towers, (nn.Module,), config.targets,
                                config.ignore).values())
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    names = []
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            outside = config.targets is None and tower_of(full, towers) is None
            on = module in chosen or outside
            p.requires_grad_(on)
            if on:
                names.append(full)
    try:
        yield names
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved.get(n, True))


def checkpoint_dir(context: StageContext, chosen: str | None = None) -> Path | None:
    """This stage's own ``stage-<i>`` folder: under the recipe's `chosen` ``checkpoint_dir``,
    else under ``.<out>.training`` beside the output folder when the runner gives one. Each
    stage has its own, so that two training stages never read each other's checkpoints."""
    if chosen is not None and Path(chosen).exists() and not Path(chosen).is_dir():
        raise UserError(f"checkpoint_dir {chosen} is a file, not a folder")
    root = chosen or context.extra.get("train_dir")
    return Path(root) / f"stage-{context.extra.get('stage', 0)}" if root else None


def epoch_eval(context: StageContext) -> EvalFn | None:
    """Task metrics on the run's (quick) evaluation data, through the evaluation path."""
    data = context.extra.get("eval_data")
    if data is None:
        return None
    return lambda adapter: quality(adapter, data).metrics


def run_training(adapter: Adapter, objective: Objective, config: TrainStageConfig,
                 context: StageContext, callbacks: list[TrainCallback] | None = None
                 ) -> dict[str, Any]:
    """Train the selected parameters of `adapter` on `objective`; returns the summary."""
    with trainable(adapter, config) as names:
        count = sum(adapter.model.get_parameter(n).numel() for n in names)
        settings = TrainSettings.from_config(config)
        folder = checkpoint_dir(context, settings.checkpoint_dir)
        trainer = Trainer(adapter, objective, settings.model_copy(update={"checkpoint_dir": None}),
                          callbacks=callbacks if callbacks is not None else take_armed(context),
                          eval_fn=epoch_eval(context), checkpoint_dir=folder,
                          progress=context.progress)
        summary = trainer.fit()
    summary["trained_params"] = count
    described = trainer.objective_description
    if "data" in described:
        summary["training_data"] = {"name": described["data"],
                                    "examples": described.get("examples")}
    return summary
