"""Named training splits (data specs), each the complement of an evaluation split:

- ``lit-cifar-train``: the first 400 images per class of ``cifar10/test`` (``lit-cifar-eval``
  holds the rest), captioned with lit-cifar's training templates, never the evaluation prompts;
- ``stsb-train``: STS Benchmark train pairs (``stsb-dev`` is the evaluation split);
- ``demo-train``: the 70% of the digits the demo model was trained on (``demo`` holds the
  rest), with training caption wordings.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import DataError
from ..shared_data import shared_data_dir
from . import Dataset, register_data_spec
from .cifar import lit_cifar_split
from .demo import demo_train_dataset
from .sts import read_sts


def lit_cifar_train() -> Dataset:
    return lit_cifar_split()[0]


def stsb_train() -> Dataset:
    try:
        folder = shared_data_dir("stsb")
    except DataError as exc:
        raise DataError(f"data 'stsb-train': {exc}") from None
    return replace(read_sts(folder / "sts-train.csv"), name="stsb-train")


# each held-out evaluation split → its training complement: where calibration draws when the
# run evaluates on the split and no calibration data is named
TRAINING_SPLIT = {"demo": "demo-train", "stsb-dev": "stsb-train",
                  "lit-cifar-eval": "lit-cifar-train", "trimodal": "trimodal-train"}

register_data_spec("lit-cifar-train", lit_cifar_train)
register_data_spec("stsb-train", stsb_train)
register_data_spec("demo-train", demo_train_dataset)
