"""`inspect`: towers, layers and parameter counts of a model."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from .adapters import Adapter
from .evaluation.evaluate import count_params
from .selection import tower_of


def describe(adapter: Adapter) -> dict[str, Any]:
    """Per tower: parameters and layer counts by type; per layer: type and shape."""
    towers = adapter.towers()
    layers = []
    per_tower: dict[str, dict[str, Any]] = {t: {"params": 0, "layers": Counter()} for t in towers}
    per_tower["other"] = {"params": 0, "layers": Counter()}
    for name, module in adapter.model.named_modules():
        if not name or list(module.children()):
            continue
        tower = tower_of(name, towers) or "other"
        params = count_params(module)
        per_tower[tower]["params"] += params
        per_tower[tower]["layers"][type(module).__name__] += 1
        layers.append(
            {
                "name": name,
                "tower": tower,
                "type": type(module).__name__,
                "shape": _shape(module),
                "params": params,
            }
        )
    direct = sum(
        p.numel() for n, p in adapter.model.named_parameters(recurse=True) if "." not in n
    )  # parameters held by the root (e.g. logit scale)
    per_tower["other"]["params"] += direct
    return {
        "adapter": adapter.name,
        "params": count_params(adapter.model),
        "towers": {
            t: {"params": v["params"], "layers": dict(v["layers"])}
            for t, v in per_tower.items()
            if v["params"] or v["layers"]
        },
        "layers": layers,
    }


def _shape(module: nn.Module) -> list[int]:
    for attr in ("weight", "qweight"):
        t = getattr(module, attr, None)
        if t is not None and hasattr(t, "shape"):
            return list(t.shape)
    return []
