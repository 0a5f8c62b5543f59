"""Adapter for the built-in demo dual encoder; trains and caches it on first use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.demo import IMAGE_SIZE, DemoDualEncoder
from ..models.sentence_encoder import SentenceEncoder, minilm_path
from .frozen_text import FrozenTextAdapter, cache_key, load_or_train
from .preprocess import images_to_tensor

MEAN, STD = (0.3,), (0.35,)


class DemoAdapter(FrozenTextAdapter):
    """Digits CNN image tower + frozen MiniLM text tower."""

    name = "demo"

    @property
    def image_size(self) -> int:
        return IMAGE_SIZE

    def image_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return images_to_tensor(images, IMAGE_SIZE, MEAN, STD)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> DemoAdapter:
        return cls(DemoDualEncoder.from_architecture(arch), cls.tokenizer_for(folder))

    @classmethod
    def pretrained(cls, progress: bool = True) -> DemoAdapter:
        """The trained demo model, from the cache or trained now (fixed seed) and cached."""
        from ..models.demo_training import TRAINING, train_demo

        adapter = cls(DemoDualEncoder(SentenceEncoder.from_folder(minilm_path())),
                      cls.tokenizer_for(None))
        model = adapter.model

        def train() -> None:
            torch.manual_seed(TRAINING["seed"])
            model.vision.apply(_reset)
            model.visual_projection.reset_parameters()
            train_demo(model, adapter.text_tensors, adapter.image_tensor, progress=progress)

        load_or_train(model, "demo", cache_key(TRAINING, model.hparams), train)
        return adapter


def _reset(module: torch.nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
