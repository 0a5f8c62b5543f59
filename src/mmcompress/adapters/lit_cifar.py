"""Adapter for lit-cifar (ResNet-56 + MiniLM, aligned by a trained projection); trains and
caches the projection on first use."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.cifar import LIT_TRAIN_PER_CLASS, LIT_TRAIN_TEMPLATES, lit_cifar_split
from ..models.lit_cifar import (
    DEPTH,
    TRAINING,
    LitCifarDualEncoder,
    train_projection,
)
from ..models.sentence_encoder import SentenceEncoder, minilm_path
from ..shared_data import shared_data_dir
from .classifier import IMAGE_SIZE, ImageClassifierAdapter, cifar_tensor
from .frozen_text import FrozenTextAdapter, cache_key, load_or_train


class LitCifarAdapter(FrozenTextAdapter):
    """Frozen CIFAR ResNet-56 image tower + projection, frozen MiniLM text tower."""

    name = "lit-cifar"
    default_data = "lit-cifar-eval"

    @property
    def image_size(self) -> int:
        return IMAGE_SIZE

    def image_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return cifar_tensor(images)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> LitCifarAdapter:
        return cls(LitCifarDualEncoder.from_architecture(arch), cls.tokenizer_for(folder))

    @classmethod
    def pretrained(cls, progress: bool = True) -> LitCifarAdapter:
        """The trained model, from the cache or trained now (fixed seed, about a minute)."""
        resnet_file = shared_data_dir("resnet_cifar10") / f"resnet{DEPTH}.safetensors"
        adapter = cls(
            LitCifarDualEncoder(SentenceEncoder.from_folder(minilm_path())),
            cls.tokenizer_for(None),
        )
        model = adapter.model
        key = cache_key(
            TRAINING,
            LIT_TRAIN_TEMPLATES,
            LIT_TRAIN_PER_CLASS,
            model.hparams,
            hashlib.sha256(resnet_file.read_bytes()).hexdigest(),
        )

        def train() -> None:
            resnet = ImageClassifierAdapter.from_file(resnet_file).model.state_dict()
            model.vision.load_state_dict(
                {k: v for k, v in resnet.items() if not k.startswith("linear.")}, strict=True
            )
            torch.manual_seed(TRAINING["seed"])
            model.visual_projection.reset_parameters()
            with torch.no_grad():
                model.logit_scale.fill_(math.log(1 / 0.07))
            data, _ = lit_cifar_split()
            images = [data.load_image(i) for i in range(len(data))]
            train_projection(
                model,
                images,
                data.labels,
                data.class_names,
                adapter.image_tensor,
                adapter.text_tensors,
                progress=progress,
            )

        load_or_train(model, "lit-cifar", key, train)
        return adapter
