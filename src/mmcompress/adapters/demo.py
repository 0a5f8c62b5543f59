"""Adapter for the built-in demo dual encoder; trains and caches it on first use."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..models.demo import IMAGE_SIZE, DemoDualEncoder
from ..models.sentence_encoder import SentenceEncoder, minilm_path
from ..paths import cache_dir
from .base import DualEncoderAdapter
from .tokenizers import load_tokenizer, tokenize

MEAN, STD = (0.3,), (0.35,)


class DemoAdapter(DualEncoderAdapter):
    """Digits CNN image tower + frozen MiniLM text tower."""

    name = "demo"
    max_text_len = 32

    def __init__(self, model: DemoDualEncoder, tokenizer) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer

    def towers(self) -> dict[str, list[str]]:
        return {"vision": ["vision"], "text": ["text"], "projector": ["visual_projection"]}

    @property
    def image_size(self) -> int:
        return IMAGE_SIZE

    def image_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        from .preprocess import images_to_tensor

        return images_to_tensor(images, IMAGE_SIZE, MEAN, STD)

    def text_tensors(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.max_text_len, pad_to)

    def embed_image_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def embed_text_tensors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(inputs["input_ids"], inputs["attention_mask"])

    def architecture(self) -> dict[str, Any]:
        return self.model.architecture()

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> DemoAdapter:
        tok_dir = (
            folder / "tokenizer" if folder and (folder / "tokenizer").is_dir() else minilm_path()
        )
        return cls(DemoDualEncoder.from_architecture(arch), load_tokenizer(tok_dir))

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))

    @classmethod
    def pretrained(cls, progress: bool = True) -> DemoAdapter:
        """The trained demo model, from the cache or trained now (fixed seed) and cached."""
        from ..models.demo_training import TRAINING, train_demo

        text = SentenceEncoder.from_folder(minilm_path())
        adapter = cls(DemoDualEncoder(text), load_tokenizer(minilm_path()))
        key = hashlib.sha256(
            json.dumps([TRAINING, adapter.model.hparams], sort_keys=True).encode()
        ).hexdigest()[:12]
        path = cache_dir() / f"demo-{key}.safetensors"
        trained = {n: t for n, t in adapter.model.state_dict().items() if not n.startswith("text.")}
        if path.is_file():
            try:
                adapter.model.load_state_dict(load_file(str(path)), strict=False)
                return adapter
            except Exception:  # a broken cache is rebuilt, never trusted
                path.unlink(missing_ok=True)
        torch.manual_seed(TRAINING["seed"])
        adapter.model.vision.apply(_reset)
        adapter.model.visual_projection.reset_parameters()
        train_demo(adapter.model, adapter.text_tensors, adapter.image_tensor, progress=progress)
        trained = {
            n: t.contiguous()
            for n, t in adapter.model.state_dict().items()
            if not n.startswith("text.")
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(trained, tmp)
        os.replace(tmp, path)
        return adapter


def _reset(module: torch.nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
