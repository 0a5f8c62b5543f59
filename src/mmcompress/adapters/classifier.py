"""Adapter for image classifiers: the CIFAR ResNets (from a ``.safetensors`` state dict)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..data import Dataset
from ..errors import CheckpointError, DataError
from ..models.resnet_cifar import CifarResNet, depth_from_keys
from ..progress import progress_bar
from .base import Adapter
from .preprocess import images_to_tensor

IMAGE_SIZE = 32
CIFAR_MEAN, CIFAR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def cifar_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """HxWxC [0, 1] images → normalised [B, 3, 32, 32], as the CIFAR ResNets were trained."""
    return images_to_tensor(images, IMAGE_SIZE, CIFAR_MEAN, CIFAR_STD)


class ImageClassifierAdapter(Adapter):
    """A CIFAR ResNet: the convolutional trunk is the vision tower, ``linear`` the head."""

    name = "cifar-resnet"
    tasks = frozenset({"classification"})
    default_data = "cifar10"
    input_modalities = ("image",)

    def preprocess(self, modality: str, items: Sequence[Any]) -> torch.Tensor:
        return cifar_tensor(items)

    def forward_modality(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def towers(self) -> dict[str, list[str]]:
        return {"vision": ["conv1", "bn1", "layer1", "layer2", "layer3"], "head": ["linear"]}

    @torch.inference_mode()
    def classify(
        self, images: Sequence[np.ndarray], progress: bool = False, batch_size: int = 256
    ) -> torch.Tensor:
        """Class logits [N, classes] for HxWxC images in [0, 1]."""
        out = []
        for i in progress_bar(range(0, len(images), batch_size), desc="images", enabled=progress):
            out.append(self.model(cifar_tensor(images[i : i + batch_size])))
        return torch.cat(out)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The output classes by name: CIFAR-10's for a 10-way head, else unnamed."""
        return CIFAR10_CLASSES if self.model.num_classes == 10 else None

    def label_indices(self, data: Dataset) -> torch.Tensor:
        """The model's output index of each example's class: classes named by number are that
        output; others are matched by name (a folder of cats and dogs is labelled 0 and 1 by
        position, CIFAR-10's 3 and 5). Refuses classes the model does not have."""
        heads, given = self.model.num_classes, data.class_names
        if all(c.isdecimal() and int(c) < heads for c in given):
            lookup = [int(c) for c in given]
        elif self.class_names is None:
            raise DataError(f"data {data.name!r} names its classes, but the model's "
                            f"{heads} outputs are unnamed: name the classes 0 to {heads - 1}")
        else:
            index = {n: i for i, n in enumerate(self.class_names)}
            unknown = [c for c in given if c.lower() not in index]
            if unknown:
                raise DataError(
                    f"data {data.name!r} has classes the model does not classify: "
                    f"{', '.join(map(repr, unknown[:5]))} (it knows "
                    f"{', '.join(self.class_names)}, or 0 to {heads - 1})")
            lookup = [index[c.lower()] for c in given]
        return torch.tensor(lookup)[torch.as_tensor(data.labels, dtype=torch.long)]

    def architecture(self) -> dict[str, Any]:
        return {"depth": self.model.depth, "num_classes": self.model.num_classes}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> ImageClassifierAdapter:
        return cls(CifarResNet(arch["depth"], arch["num_classes"]))

    @classmethod
    def from_file(cls, path: str | Path) -> ImageClassifierAdapter:
        """Load a CIFAR ResNet state dict (keys as in `models.resnet_cifar`), strictly."""
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} cannot be read as safetensors: {exc}") from None
        depth = depth_from_keys(state)
        if depth is None:
            raise CheckpointError(
                f"{path} is not a CIFAR ResNet-20/32/44/56 state dict (expected keys conv1, "
                "bn1, layer{1,2,3}.N.{conv1,bn1,conv2,bn2}, linear)"
            )
        model = CifarResNet(depth, num_classes=state["linear.weight"].shape[0])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).splitlines()[:2])
            raise CheckpointError(f"{path} does not fit a CIFAR ResNet-{depth}: {first}") from None
        return cls(model)

    def latency_inputs(self, batch_size: int) -> dict[str, Callable[[], Any]]:
        rng = np.random.default_rng(0)
        images = [rng.random((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)] * batch_size
        pixels = cifar_tensor(images)
        return {"image": lambda: self.model(pixels)}
