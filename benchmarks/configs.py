"""What the benchmark runs: the models, and the compression configurations as a recipe table.

Later methods (GPTQ, AWQ, pruning, low-rank) join by adding rows to `CONFIGS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcompress.adapters import Adapter
from mmcompress.data import Dataset

# ../shared/data beside the repository (read only).
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Name → recipe (as a mapping, the same schema as recipe YAML); None is the uncompressed model.
CONFIGS: dict[str, dict[str, Any] | None] = {
    "fp32": None,
    "rtn-int8": {"stages": [{"quantize": {"method": "rtn", "bits": 8}}]},
    "rtn-int4-g128": {"stages": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 128}}]},
}


@dataclass
class ModelCase:
    """One model of the benchmark and the data its quality is measured on.

    Attributes:
        spec: a model spec (``demo``, ``minilm``, ``random:NAME``) or a label when `load` is set.
        data: a data spec or `Dataset`; None means the adapter's own default data.
        quality: measure task quality and fidelity (False: size, speed and memory only).
        quick_samples: examples evaluated in quick mode (None: all).
        load: builds the adapter in-process instead of resolving `spec` (tests).
        data_note: how the evaluation data is chosen, for the report.
    """

    spec: str
    data: str | Path | Dataset | None = None
    quality: bool = True
    quick_samples: int | None = None
    load: Callable[[], Adapter] | None = None
    data_note: str = ""


MODELS: dict[str, ModelCase] = {
    "demo": ModelCase(
        "demo", "demo", data_note="held-out sklearn digits (30%), prompts unseen in training"
    ),
    "minilm": ModelCase(
        "minilm",
        DATA_ROOT / "stsb" / "sts-dev.csv",
        quick_samples=500,
        data_note="STS-B dev (1,500 pairs); quick mode: the first 500 pairs",
    ),
    "lit-cifar": ModelCase(
        "lit-cifar",
        None,
        quick_samples=1000,
        data_note=(
            "`lit-cifar-eval`: the last 400 images of each class of cifar10/test (the first 400"
            " trained the projection), 4,000 in all; quick mode: 1,000 of them, every 4th"
        ),
    ),
    "random:clip-vit-base-patch32": ModelCase(
        "random:clip-vit-base-patch32",
        "demo",
        quality=False,
        data_note="random weights: size, latency and memory only",
    ),
}
