"""CIFAR-10 test images from the shared data, and the fixed split used by ``lit-cifar``.

The split: in every class folder of ``cifar10/test`` (800 images), the first
`LIT_TRAIN_PER_CLASS` files by sorted name train lit-cifar's projection (captioned with
`LIT_TRAIN_TEMPLATES`); the rest are held out for evaluation (data spec ``lit-cifar-eval``,
with the class-folder prompts).
"""

from __future__ import annotations

from dataclasses import replace

from ..shared_data import shared_data_dir
from .dataset import Dataset
from .readers import read_class_folder

LIT_TRAIN_PER_CLASS = 400
# captions of the training part; the evaluation prompts (class-folder templates) share none
LIT_TRAIN_TEMPLATES = [
    "a {}",
    "the {}",
    "a blurry shot of the {}",
    "a low-resolution snapshot of a {}",
    "a close-up of a {}",
    "a small {} in the frame",
    "this shows a {}",
    "a cropped view of the {}",
]


def cifar10_test() -> Dataset:
    """All of ``cifar10/test`` (8,000 images, 10 classes) with the class-folder prompts."""
    return replace(read_class_folder(shared_data_dir("cifar10/test")), name="cifar10")


def split_per_class(data: Dataset, first: int, names: tuple[str, str]) -> tuple[Dataset, Dataset]:
    """(the first `first` examples of each class, the rest), named `names`, order kept."""
    seen: dict[int, int] = {}
    head, rest = [], []
    for i, label in enumerate(data.labels):
        seen[label] = seen.get(label, 0) + 1
        (head if seen[label] <= first else rest).append(i)

    def take(name: str, idx: list[int]) -> Dataset:
        return replace(
            data,
            name=name,
            images=[data.images[i] for i in idx],
            labels=[data.labels[i] for i in idx],
        )

    return take(names[0], head), take(names[1], rest)


def lit_cifar_split() -> tuple[Dataset, Dataset]:
    """(training part, held-out part) of ``cifar10/test`` for lit-cifar. The training part is
    captioned with `LIT_TRAIN_TEMPLATES`, so that calibrating on it never sees the prompts the
    held-out part is scored with."""
    train, held_out = split_per_class(
        cifar10_test(), LIT_TRAIN_PER_CLASS, ("lit-cifar-train", "lit-cifar-eval")
    )
    return replace(train, templates=list(LIT_TRAIN_TEMPLATES)), held_out


def lit_cifar_eval() -> Dataset:
    """The held-out part: the last 400 images of each class, with the class-folder prompts."""
    return lit_cifar_split()[1]
