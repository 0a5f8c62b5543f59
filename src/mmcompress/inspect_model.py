"""`inspect`: towers, layers and parameter counts of a model."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from .adapters import Adapter
from .data import Dataset
from .errors import UserError
from .evaluation.evaluate import count_params
from .quantization.grid import QuantGrid
from .selection import select_modules, tower_of


def describe(adapter: Adapter) -> dict[str, Any]:
    """Per tower: parameters and layer counts by type; per layer: type and shape."""
    towers = adapter.towers()
    layers = []
    per_tower: dict[str, dict[str, Any]] = {t: {"params": 0, "layers": Counter()} for t in towers}
    per_tower["other"] = {"params": 0, "layers": Counter()}
    for name, module in adapter.model.named_modules():
        if list(module.children()):  # parameters of its own (a class embedding, a logit scale)
            own = sum(p.numel() for p in module.parameters(recurse=False))
            per_tower[tower_of(name, towers) or "other"]["params"] += own
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


def sensitivity(adapter: Adapter, data: Dataset, grid: QuantGrid, max_samples: int = 64,
                layers: bool = True, progress: bool = True) -> dict[str, Any]:
    """Quality drop and fidelity loss when each tower (and each layer) alone is quantized
    round-to-nearest on `grid`."""
    from .methods.weight_quant import WeightQuantConfig, quantized_module
    from .sensitivity import Probe, layer_sensitivity, tower_sensitivity

    kinds = WeightQuantConfig(method="rtn").kinds()
    modules = select_modules(adapter.model, adapter.towers(), kinds)
    if not modules:
        raise UserError(f"{adapter.name}: no plain linear or convolution layer left to probe "
                        "(the model is already quantized, sparse or factored); inspect the "
                        "model it came from")
    probe = Probe.on(adapter, data, max_samples)

    def compress(_: str, m: nn.Module) -> nn.Module:
        return quantized_module(m, grid)

    out: dict[str, Any] = {"grid": {"bits": grid.bits, "group_size": grid.group_size},
                           "examples": len(probe.data), "reference": probe.reference.metrics,
                           "towers": tower_sensitivity(probe, modules, compress)}
    if layers:
        out["layers"] = layer_sensitivity(probe, modules, compress, progress)
    return out
