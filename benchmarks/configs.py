"""What the benchmark runs: the models, the compression configurations as a recipe table,
and named suites (which configurations and models one invocation runs).

Later methods join by adding rows to `CONFIGS` and naming them in a suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcompress.adapters import Adapter
from mmcompress.data import Dataset, load_data
from mmcompress.data.cifar import lit_cifar_split
from mmcompress.data.demo import demo_train_dataset

# ../shared/data beside the repository (read only).
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Name → recipe (as a mapping, the same schema as recipe YAML); None is the uncompressed model.
def _quant(method: str, bits: int, group_size: int | None = None, **extra: Any) -> dict:
    return {"stages": [{"quantize": {"method": method, "bits": bits, "group_size": group_size,
                                     **extra}}]}


CONFIGS: dict[str, dict[str, Any] | None] = {
    "fp32": None,
    "rtn-int8": _quant("rtn", 8),
    "rtn-int4-g128": _quant("rtn", 4, 128),
    "gptq-int4-g128": _quant("gptq", 4, 128),
    "awq-int4-g128": _quant("awq", 4, 128),
    "rtn-int3-g128": _quant("rtn", 3, 128),
    "gptq-int3-g128": _quant("gptq", 3, 128),
    "awq-int3-g128": _quant("awq", 3, 128),
    # alpha searched per layer (the default, `alpha: auto`)
    "smoothquant-w8a8": {"stages": [{"quantize": {"method": "smoothquant"}}]},
    # 3, 4 or 8 bits per layer from measured sensitivity, no larger than uniform int4 g128
    "gptq-budget-int4": _quant("gptq", 4, 128,
                               budget={"same_size_as_bits": 4, "bits": [3, 4, 8]}),
}

# Compiled rows: name → the configuration whose saved output is loaded with
# `mmcompress.load(..., compiled=True)` (towers through torch.compile). Built only for models
# whose suite names them; the compile time is the row's build time, apart from its latency.
COMPILED: dict[str, str] = {"smoothquant-w8a8+compile": "smoothquant-w8a8"}

# Named suites: configurations and models; a suite may restrict a model to some of its
# configurations. `core` is the default (and `--quick`'s) run.
@dataclass(frozen=True)
class Suite:
    configs: list[str]
    models: list[str]
    per_model: dict[str, list[str]] = field(default_factory=dict)


_WEIGHT_QUANT = ["rtn-int8", "smoothquant-w8a8", "rtn-int4-g128", "gptq-int4-g128",
                 "awq-int4-g128", "rtn-int3-g128", "gptq-int3-g128", "awq-int3-g128"]
SUITES: dict[str, Suite] = {
    "core": Suite(["rtn-int8", "rtn-int4-g128"],
                  ["demo", "minilm", "lit-cifar", "random:clip-vit-base-patch32"]),
    "quantization": Suite(
        [*_WEIGHT_QUANT, "gptq-budget-int4"],
        ["minilm", "lit-cifar", "random:clip-vit-base-patch32"],
        {"minilm": _WEIGHT_QUANT,
         # random weights: speed, size and memory of the int8 and int4 paths only
         "random:clip-vit-base-patch32": ["rtn-int8", "smoothquant-w8a8",
                                          "smoothquant-w8a8+compile", "rtn-int4-g128",
                                          "gptq-int4-g128"]}),
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
        calibration: loads the data calibrated methods draw from (never the evaluation split);
            None: the evaluation data (random-weight models only measure speed).
    """

    spec: str
    data: str | Path | Dataset | None = None
    quality: bool = True
    quick_samples: int | None = None
    load: Callable[[], Adapter] | None = None
    data_note: str = ""
    calibration: Callable[[], Dataset] | None = None


MODELS: dict[str, ModelCase] = {
    "demo": ModelCase(
        "demo", "demo", data_note="held-out sklearn digits (30%), prompts unseen in training",
        calibration=demo_train_dataset,
    ),
    "minilm": ModelCase(
        "minilm",
        DATA_ROOT / "stsb" / "sts-dev.csv",
        quick_samples=500,
        data_note="STS-B dev (1,500 pairs); quick mode: 500 evenly spaced pairs (every third)",
        calibration=lambda: load_data(DATA_ROOT / "stsb" / "sts-train.csv"),
    ),
    "lit-cifar": ModelCase(
        "lit-cifar",
        None,
        quick_samples=1000,
        data_note=(
            "`lit-cifar-eval`: the last 400 images of each class of cifar10/test (the first 400"
            " trained the projection), 4,000 in all; quick mode: 1,000 of them, every 4th"
        ),
        calibration=lambda: lit_cifar_split()[0],
    ),
    "random:clip-vit-base-patch32": ModelCase(
        "random:clip-vit-base-patch32",
        "demo",
        quality=False,
        data_note="random weights: size, latency and memory only",
    ),
}
