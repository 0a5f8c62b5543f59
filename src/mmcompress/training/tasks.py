"""Training tasks: per model kind, how a batch of example indices becomes model inputs, what
the model outputs on it, and the task loss.

- classifiers (adapters with ``classify``) on classification data: cross-entropy;
- dual encoders on classification data (each image paired with a prompt of its class, template
  drawn at random; same-class pairs are all positives) or caption data (a random caption of
  each image): symmetric InfoNCE at the model's logit scale;
- sentence encoders on STS pairs: MSE of the pair's cosine similarity to the gold score
  scaled to [0, 1] (divided by the largest score in the data).

Randomness (template or caption draws) uses the global RNG, which the trainer reseeds every
step, so batches repeat exactly on resume.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters import Adapter, DualEncoderAdapter
from ..data import Dataset
from ..errors import DataError
from . import losses

Batch = dict[str, Any]
Outputs = dict[str, torch.Tensor]
DEFAULT_SCALE = 1 / 0.07


class TrainingTask(ABC):
    """Batches and the task loss of one model kind on one dataset."""

    kind: str

    def __init__(self, data: Dataset, augment: bool = False) -> None:
        self.data = data
        self.augment = augment
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.data)

    def image(self, i: int) -> np.ndarray:
        """Decoded image `i`, kept in memory after the first epoch."""
        if i not in self._images:
            self._images[i] = self.data.load_image(i)
        return self._images[i]

    def images(self, idx: list[int]) -> list[np.ndarray]:
        """Images of a batch, randomly shifted and flipped when `augment` is on."""
        out = [self.image(i) for i in idx]
        return [_crop_flip(x) for x in out] if self.augment else out

    @abstractmethod
    def batch(self, adapter: Adapter, indices: torch.Tensor) -> Batch:
        """Preprocessed inputs and targets for the examples `indices`."""

    @abstractmethod
    def forward(self, adapter: Adapter, batch: Batch) -> Outputs:
        """The model's outputs on `batch` (with gradients unless called under no_grad)."""

    @abstractmethod
    def loss(self, out: Outputs, batch: Batch) -> torch.Tensor:
        """The task loss of `out` against the targets in `batch`."""

    def keys(self, batch: Batch) -> dict[str, list[Hashable]] | None:
        """Row keys of each cacheable output (same input ↔ same key); None: not cacheable."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"task": self.kind, "data": self.data.name, "examples": len(self),
                "content": self.data.digest(), "augment": self.augment}


class ClassifierTask(TrainingTask):
    """Cross-entropy against the model's index of each example's class (`label_indices`)."""

    kind = "classification"

    def __init__(self, data: Dataset, augment: bool, labels: torch.Tensor) -> None:
        super().__init__(data, augment)
        self.labels = labels

    def batch(self, adapter: Adapter, indices: torch.Tensor) -> Batch:
        idx = indices.tolist()
        pixels = adapter.preprocess("image", self.images(idx))
        labels = self.labels[indices.long()]
        return {"index": idx, "pixels": pixels, "labels": labels}

    def forward(self, adapter: Adapter, batch: Batch) -> Outputs:
        return {"logits": adapter.forward_modality("image", batch["pixels"])}

    def loss(self, out: Outputs, batch: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(out["logits"], batch["labels"])

    def keys(self, batch: Batch) -> dict[str, list[Hashable]] | None:
        return None if self.augment else {"logits": batch["index"]}


class MultimodalTask(TrainingTask):
    """Fused classification of examples holding image, text and audio (any may be missing):
    cross-entropy of the fused class scores."""

    kind = "multimodal"

    def __init__(self, data: Dataset, augment: bool = False) -> None:
        if augment:
            raise DataError("augment (random crops and flips) is for image classification; "
                            "multimodal examples are trained as given")
        super().__init__(data)

    def batch(self, adapter: Adapter, indices: torch.Tensor) -> Batch:
        idx = indices.tolist()
        labels = torch.as_tensor([self.data.labels[i] for i in idx], dtype=torch.long)
        return {"index": idx, "inputs": adapter.dataset_batch(self.data, idx), "labels": labels}

    def forward(self, adapter: Adapter, batch: Batch) -> Outputs:
        return {"logits": adapter.model(**batch["inputs"])}

    def loss(self, out: Outputs, batch: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(out["logits"], batch["labels"])

    def keys(self, batch: Batch) -> dict[str, list[Hashable]] | None:
        return {"logits": batch["index"]}


class ContrastiveTask(TrainingTask):
    kind = "contrastive"

    def __init__(self, data: Dataset, augment: bool = False) -> None:
        super().__init__(data, augment)
        if data.task == "classification" and not (data.templates and data.class_names):
            raise DataError(f"data {data.name!r} has no class names and prompt templates to "
                            "pair images with text")

    def _caption(self, i: int) -> str:
        if self.data.task == "retrieval":
            caps = self.data.captions[i]
            return caps[int(torch.randint(len(caps), ()))]
        template = self.data.templates[int(torch.randint(len(self.data.templates), ()))]
        return template.format(self.data.class_names[self.data.labels[i]])

    def batch(self, adapter: Adapter, indices: torch.Tensor) -> Batch:
        idx = indices.tolist()
        captions = [self._caption(i) for i in idx]
        unique = list(dict.fromkeys(captions))  # encode each distinct caption once
        where = torch.as_tensor([unique.index(c) for c in captions])
        labels = (torch.as_tensor([self.data.labels[i] for i in idx])
                  if self.data.task == "classification" else None)
        return {"index": idx, "pixels": adapter.image_tensor(self.images(idx)),
                "captions": unique, "text": adapter.text_tensors(unique), "where": where,
                "labels": labels}

    def forward(self, adapter: Adapter, batch: Batch) -> Outputs:
        scale = getattr(adapter.model, "logit_scale", None)
        scale = (scale.exp().clamp(max=100) if isinstance(scale, torch.Tensor)
                 else torch.tensor(DEFAULT_SCALE))
        return {"image": adapter.embed_image_tensor(batch["pixels"]),
                "text": adapter.embed_text_tensors(batch["text"]), "scale": scale}

    @staticmethod
    def paired_text(out: Outputs, batch: Batch) -> torch.Tensor:
        """The caption embedding of every image of the batch (rows follow the images)."""
        return out["text"][batch["where"]]

    def loss(self, out: Outputs, batch: Batch) -> torch.Tensor:
        return losses.info_nce(out["image"], self.paired_text(out, batch), out["scale"],
                               batch["labels"])

    def keys(self, batch: Batch) -> dict[str, list[Hashable]] | None:
        if self.augment:
            return None
        return {"image": batch["index"], "text": batch["captions"], "scale": [None]}


class SentencePairTask(TrainingTask):
    kind = "sts"

    def __init__(self, data: Dataset, augment: bool = False) -> None:
        super().__init__(data)
        if augment:
            raise DataError("augment applies to images; sentence pairs have none")
        top = max(data.scores)
        if not math.isfinite(top) or top <= 0:
            raise DataError(f"data {data.name!r}: scores must be positive to scale to [0, 1]")
        self.top = top

    def batch(self, adapter: Adapter, indices: torch.Tensor) -> Batch:
        idx = indices.tolist()
        a = adapter.text_tensors([self.data.texts[i] for i in idx])
        b = adapter.text_tensors([self.data.texts_b[i] for i in idx])
        target = torch.as_tensor([self.data.scores[i] / self.top for i in idx])
        return {"index": idx, "a": a, "b": b, "target": target.float()}

    def forward(self, adapter: Adapter, batch: Batch) -> Outputs:
        return {"a": adapter.embed_text_tensors(batch["a"]),
                "b": adapter.embed_text_tensors(batch["b"])}

    def loss(self, out: Outputs, batch: Batch) -> torch.Tensor:
        return losses.cosine_mse(out["a"], out["b"], batch["target"])

    def keys(self, batch: Batch) -> dict[str, list[Hashable]] | None:
        return {"a": batch["index"], "b": batch["index"]}


def model_device(adapter: Adapter) -> torch.device:
    p = next(adapter.model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device` (no copy when already there)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _crop_flip(image: np.ndarray, pad: int = 4) -> np.ndarray:
    """Random crop of the image zero-padded by `pad` pixels, flipped left-right half the time
    (the standard CIFAR augmentation); draws from the global RNG, which the trainer reseeds."""
    h, w = image.shape[:2]
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = padded[dy : dy + h, dx : dx + w]
    return out[:, ::-1].copy() if bool(torch.randint(0, 2, ())) else out


def make_task(adapter: Adapter, data: Dataset, augment: bool = False) -> TrainingTask:
    """The training task of this model kind on this data (`augment`: random crops and flips
    of the images).

    Raises:
        DataError: when the model cannot be trained on this kind of data.
    """
    if data.task not in adapter.tasks:
        raise DataError(f"cannot train a {adapter.name!r} model on data {data.name!r}: it is a "
                        f"{data.task} set, the model does {', '.join(sorted(adapter.tasks))}")
    if hasattr(adapter, "classify") and data.task == "classification":
        return ClassifierTask(data, augment, adapter.label_indices(data))
    if data.task == "multimodal" and hasattr(adapter, "dataset_batch"):
        return MultimodalTask(data, augment)
    if isinstance(adapter, DualEncoderAdapter) and data.task in ("classification", "retrieval"):
        return ContrastiveTask(data, augment)
    if data.task == "sts" and hasattr(adapter, "embed_text_tensors"):
        return SentencePairTask(data, augment)
    raise DataError(f"no training task for a {adapter.name!r} model on {data.task} data")


class TaskObjective:
    """The trainer's objective for plain fine-tuning: the task loss of the model."""

    def __init__(self, adapter: Adapter, task: TrainingTask) -> None:
        self.adapter, self.task = adapter, task
        self.modules: nn.Module = nn.ModuleDict()

    def __len__(self) -> int:
        return len(self.task)

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        batch = to_device(self.task.batch(self.adapter, indices), model_device(self.adapter))
        return self.task.loss(self.task.forward(self.adapter, batch), batch)

    def describe(self) -> dict[str, Any]:
        return {"objective": "task", **self.task.describe()}
