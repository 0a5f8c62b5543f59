"""Built-in demo data: scikit-learn's handwritten digits (real 8×8 scans), split once."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Captions used to train the demo model. Evaluation uses EVAL_TEMPLATES, which share no wording.
TRAIN_TEMPLATES = [
    "a handwritten digit {word}",
    "the number {num}",
    "a drawing of the digit {word}",
    "the digit {num}",
    "a picture of the number {word}",
    "handwriting showing {num}",
    "{word}",
    "a written {num}",
]
EVAL_TEMPLATES = ["an image of a handwritten {}", "a scan of the numeral {}", "this is {}"]

SPLIT_SEED = 0
TEST_FRACTION = 0.3


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, test x, test y); images are float32 [N, 8, 8, 1] in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        digits.target,
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=digits.target,
    )
    return x_train, y_train, x_test, y_test


def train_captions(label: int) -> list[str]:
    """Every training caption of a digit class."""
    return [t.format(word=DIGIT_WORDS[label], num=label) for t in TRAIN_TEMPLATES]


def _digits_set(name: str, images, labels, templates: list[str]) -> Dataset:
    return Dataset(name=name, task="classification", images=list(images),
                   labels=[int(y) for y in labels], class_names=list(DIGIT_WORDS),
                   templates=templates)


def demo_train_dataset() -> Dataset:
    """The digits the demo model was trained on (70%), with the training prompts: data for
    calibration, never for evaluation."""
    x_train, y_train, _, _ = digits_split()
    templates = [t.replace("{word}", "{}") for t in TRAIN_TEMPLATES if "{word}" in t]
    return _digits_set("demo-train", x_train, y_train, templates)


def demo_dataset() -> Dataset:
    """Held-out digits as a zero-shot classification set with unseen prompt wordings."""
    _, _, x_test, y_test = digits_split()
    return _digits_set("demo", x_test, y_test, list(EVAL_TEMPLATES))
