"""Training: the shared trainer, task and distillation losses, students by inheritance."""

from .callbacks import TrainCallback
from .settings import TrainSettings
from .trainer import Objective, Trainer, train

__all__ = ["Objective", "TrainCallback", "TrainSettings", "Trainer", "train"]
