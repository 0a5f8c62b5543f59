"""Training: the shared trainer, task and distillation losses, students by inheritance."""

from .. import methods as _methods  # noqa: F401  (first: its distill imports training.stage)
from .callbacks import TrainCallback
from .settings import TrainSettings
from .trainer import Objective, Trainer, train

__all__ = ["Objective", "TrainCallback", "TrainSettings", "Trainer", "train"]
