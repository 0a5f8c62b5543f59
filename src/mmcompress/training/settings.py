"""The trainer's settings: one validated model shared by the `finetune` and `distill` stages."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, PositiveInt, field_validator

from ..settings_base import Settings


class TrainSettings(Settings):
    """How to train: optimizer, schedule, batches, seeds, checkpoints."""


    epochs: PositiveInt = Field(1, description="passes over the training examples")
    max_steps: PositiveInt | None = Field(None, description="stop after this many steps")
    batch_size: PositiveInt = Field(32, description="global batch (split across processes)")
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup: int | float = Field(
        0.05, description="linear warm-up: steps, or a fraction of all steps")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null = no clip")
    seed: int = Field(0, description="seed of the example order and of any random choice")
    freeze_norm: bool = Field(
        False, description="keep BatchNorm statistics fixed (normalisation layers in eval mode)")
    max_examples: PositiveInt | None = Field(
        None, description="train on this many evenly spaced examples of the data")
    checkpoint_dir: str | None = Field(
        None, description="folder for resumable checkpoints, one stage-<i> subfolder per "
        "training stage; default: beside the output")
    checkpoint_every: PositiveInt = Field(50, description="steps between checkpoints")
    resume: Literal["auto", "never", "must"] = Field(
        "auto", description="auto: resume when a checkpoint exists; must: fail without one")
    evaluate: bool = Field(True, description="evaluate at the end of each epoch")

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, v: Any) -> Any:
        if isinstance(v, bool) or v < 0 or (isinstance(v, float) and v >= 1):
            raise ValueError(f"warmup is a step count (≥ 0) or a fraction in [0, 1), got {v!r}")
        return v

    @classmethod
    def from_config(cls, config: BaseModel) -> TrainSettings:
        """The training fields of a stage config that inherits them."""
        return cls(**{k: getattr(config, k) for k in cls.model_fields})
