"""Adapter for the built-in fusion classifiers (early, late, hybrid) over image, text, audio;
trains and caches them on first use."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..calibration.engine import CalibrationBatch, CalibrationData
from ..data.dataset import Dataset
from ..errors import DataError
from ..models.fusion import MODALITIES, FusionClassifier
from ..progress import progress_bar
from .base import Adapter, stored_inputs
from .frozen_text import cache_key, load_or_train
from .preprocess import images_to_tensor

IMAGE_SIZE = 8
MEAN, STD = (0.3,), (0.35,)
CHARS = " abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-"  # id = index + 2; 0 pad, 1 unknown
BATCH = "multimodal"  # the one calibration input: whole examples
LATENCY_TEXT = "the number seven please"  # the text of the latency inputs


class CharTokenizer:
    """Lower-cased characters → ids (0 padding, 1 unknown), cut to `max_len`."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def __call__(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[CHARS.index(c) + 2 if c in CHARS else 1 for c in (t or "").lower()]
                [: self.max_len] for t in texts]
        width = max([1, *map(len, rows)])
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids > 0


class FusionAdapter(Adapter):
    """Towers: ``vision``, ``text``, ``audio`` (the encoders) and ``fusion``."""

    name = "fusion"
    tasks = frozenset({"multimodal"})
    default_data = "trimodal"
    input_modalities = (BATCH,)

    def __init__(self, model: FusionClassifier) -> None:
        super().__init__(model)
        self.tokenizer = CharTokenizer(model.arch["max_text_len"])

    def towers(self) -> dict[str, list[str]]:
        return {"vision": ["vision"], "text": ["text"], "audio": ["audio"], "fusion": ["fusion"]}

    def tower_modalities(self) -> dict[str, tuple[str, ...]]:
        return {t: (BATCH,) for t in ("vision", "text", "audio", "fusion", "*")}

    def architecture(self) -> dict[str, Any]:
        return self.model.architecture()

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> FusionAdapter:
        return cls(FusionClassifier(**arch))

    # --- inputs -------------------------------------------------------------------------
    def batch(self, images: Sequence[np.ndarray | None], texts: Sequence[str | None],
              audio: Sequence[np.ndarray | None], drop: Sequence[str] = ()) -> dict[str, Any]:
        """Model inputs for examples given per modality (None = missing); modalities in
        `drop` are treated as missing for every example."""
        n = len(images)
        present = torch.tensor([[x is not None and m not in drop and (m != "text" or bool(x))
                                 for m, x in zip(MODALITIES, row, strict=True)]
                                for row in zip(images, texts, audio, strict=True)],
                               dtype=torch.bool).reshape(n, 3)
        blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
        pixels = images_to_tensor([blank if x is None else x for x in images], IMAGE_SIZE,
                                  MEAN, STD)
        ids, text_mask = self.tokenizer(texts)
        samples = self.model.arch["audio_samples"]
        wave = torch.zeros(n, samples)
        for i, a in enumerate(audio):
            if a is not None:
                clip = torch.as_tensor(a[:samples], dtype=torch.float32)
                if not torch.isfinite(clip).all():
                    raise DataError("a recording holds NaN or Inf values")
                wave[i, : len(clip)] = clip
        return {"pixels": pixels, "ids": ids, "text_mask": text_mask, "wave": wave,
                "present": present}

    def dataset_batch(self, data: Dataset, index: Sequence[int],
                      drop: Sequence[str] = ()) -> dict[str, Any]:
        def col(values: list) -> list:
            return [values[i] for i in index] if values else [None] * len(index)

        return self.batch(col(data.images), col(data.texts), col(data.audio), drop)

    def preprocess(self, modality: str, items: Sequence[Any]) -> dict[str, Any]:
        """`items` are (image, text, audio) triples."""
        images, texts, audio = zip(*items, strict=True) if items else ((), (), ())
        return self.batch(list(images), list(texts), list(audio))

    def forward_modality(self, modality: str, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(**batch)

    # --- running ------------------------------------------------------------------------
    @torch.inference_mode()
    def classify(self, data: Dataset, index: Sequence[int] | None = None,
                 drop: Sequence[str] = (), batch_size: int = 256,
                 progress: bool = False) -> torch.Tensor:
        """Fused class scores [N, classes] of examples `index` (all by default)."""
        index = list(range(len(data))) if index is None else list(index)
        out = [torch.zeros(0, self.model.arch["classes"])]
        for i in progress_bar(range(0, len(index), batch_size), desc="examples",
                              enabled=progress):
            out.append(self.model(**self.dataset_batch(data, index[i : i + batch_size], drop)))
        return torch.cat(out)

    def calibration_data(self, data: Dataset, samples: int, batch_size: int,
                         seed: int, text_tokens: int = 0) -> CalibrationData:
        """`samples` tri-modal examples (`text_tokens` is not used: an example's text is one
        input of three, drawn with its image and audio)."""
        if data.task not in self.tasks:
            raise DataError(f"calibrating a fusion model needs tri-modal data, but "
                            f"{data.name!r} is a {data.task} set")
        order = np.random.default_rng(seed).permutation(len(data))[:samples]
        batches: list[Callable[[], Any]] = []
        for i in range(0, len(order), batch_size):
            batch = self.dataset_batch(data, order[i : i + batch_size].tolist())
            batches.append(CalibrationBatch(  # statistics of real tokens and present inputs
                functools.partial(self.forward_modality, BATCH),
                functools.partial(stored_inputs, batch),
                self.model.input_masks(batch["text_mask"], batch["present"])))
        if not batches:
            raise DataError(f"calibration data {data.name!r} is empty")
        return CalibrationData({BATCH: batches}, {BATCH: {"examples": len(order)}})

    def latency_text_tokens(self) -> int | None:
        return int(self.tokenizer([LATENCY_TEXT])[0].shape[1])

    def latency_inputs(self, batch_size: int) -> dict[str, Callable[[], Any]]:
        rng = np.random.default_rng(0)
        images = [rng.random((IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)] * batch_size
        texts = [LATENCY_TEXT] * batch_size
        audio = [rng.normal(0, 0.1, self.model.arch["audio_samples"]).astype(np.float32)
                 ] * batch_size
        b = self.batch(images, texts, audio)
        m = self.model
        return {"image": lambda: m.vision(b["pixels"]),
                "text": lambda: m.text(b["ids"], b["text_mask"]),
                "audio": lambda: m.audio(b["wave"]),
                "model": lambda: m(**b)}

    @classmethod
    def pretrained(cls, fusion: str = "late", progress: bool = True) -> FusionAdapter:
        """The trained model on the built-in tri-modal data, from the cache or trained now
        (fixed seed, the shared trainer; under a minute on one core for early fusion; late and
        hybrid fusion first train four cross-validation twins to fit their modality weights,
        about 1.5-2.5 minutes in all)."""
        from ..data.trimodal import audio_source
        from ..models.fusion_training import (
            AUGMENT,
            MODALITY_WEIGHTS,
            TRAINING,
            train_fusion_model,
        )

        torch.manual_seed(TRAINING["seed"])  # the initial weights are part of the recipe
        adapter = cls(FusionClassifier(fusion=fusion))
        source = audio_source()

        def train() -> None:
            train_fusion_model(adapter, source, progress=progress)

        key = cache_key(TRAINING, AUGMENT, MODALITY_WEIGHTS, adapter.model.arch, source)
        load_or_train(adapter.model, f"fusion-{fusion}", key, train, frozen=())
        adapter.model.eval()
        return adapter
