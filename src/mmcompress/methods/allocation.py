"""Bit widths per layer: uniform, or allocated from measured sensitivity to meet a size budget.

The budget greedily lowers, one step at a time, the layer whose next lower width costs the
least fidelity per byte saved, until the whole model's `model.safetensors` would be at most
`size_ratio` × its size before the stage.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..adapters import Adapter
from ..errors import RecipeError
from ..evaluation.evaluate import saved_size_bytes
from ..modules.quantized import quantized_bytes
from ..quantization.grid import QuantGrid
from ..selection import tower_of
from ..sensitivity import Probe, layer_sensitivity


class BitBudget(BaseModel):
    """``budget: {size_ratio: R, bits: [4, 8]}`` on any weight-quantization method."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size_ratio: float = Field(gt=0, le=1, description="target size / size before the stage")
    bits: list[int] = Field([4, 8], description="widths to choose from")
    samples: int = Field(64, ge=4, description="examples used to measure sensitivity")

    @field_validator("bits")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(not 2 <= b <= 8 for b in v):
            raise ValueError("give at least two widths between 2 and 8")
        return sorted(set(v))


def _shape(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return w.shape[0], w.numel() // w.shape[0]


def allocate_bits(fp32_total: int, shapes: dict[str, tuple[int, int]],
                  loss: dict[int, dict[str, float]], grids: dict[int, QuantGrid],
                  size_ratio: float) -> tuple[dict[str, int], int]:
    """Greedy allocation: (bits per layer, predicted total bytes)."""
    widths = sorted(grids)
    size = {b: {n: quantized_bytes(*shapes[n], grids[b]) for n in shapes} for b in widths}
    level = {n: len(widths) - 1 for n in shapes}
    total = fp32_total - sum(4 * r * c for r, c in shapes.values())
    total += sum(size[widths[-1]][n] for n in shapes)
    target = size_ratio * fp32_total
    while total > target:
        moves = []
        for n, lv in level.items():
            if lv == 0:
                continue
            hi, lo = widths[lv], widths[lv - 1]
            saved = size[hi][n] - size[lo][n]
            cost = max(loss[lo][n] - loss[hi][n], 0.0)
            moves.append((cost / max(saved, 1), n, saved))
        if not moves:
            raise RecipeError(f"budget size_ratio {size_ratio} is out of reach: {widths[0]} bits "
                              f"on every targeted layer gives {total / fp32_total:.3f}")
        _, name, saved = min(moves)
        level[name] -= 1
        total -= saved
    return {n: widths[lv] for n, lv in level.items()}, total


def layer_grids(adapter: Adapter, modules: dict[str, nn.Module], config: Any,
                context: Any) -> tuple[dict[str, QuantGrid], dict[str, Any]]:
    """Grid per module, and a summary for the report."""
    grid = config.grid()
    budget: BitBudget | None = config.budget
    if budget is None:
        return {n: grid for n in modules}, {}
    if context.data is None:
        raise RecipeError("a bit budget needs data to measure sensitivity; pass --data")
    from .weight_quant import quantized_module

    grids = {b: QuantGrid(b, config.group_size, config.symmetric) for b in budget.bits}
    probe = Probe.on(adapter, context.data, budget.samples)
    loss = {b: layer_sensitivity(probe, modules, lambda n, m, g=g: quantized_module(m, g),
                                 context.progress) for b, g in grids.items()}
    fp32_total = saved_size_bytes(adapter.model)
    shapes = {n: _shape(m) for n, m in modules.items()}
    bits, total = allocate_bits(fp32_total, shapes, loss, grids, budget.size_ratio)
    counts = {str(b): sum(v == b for v in bits.values()) for b in budget.bits}
    return {n: grids[b] for n, b in bits.items()}, {
        "bits_per_layer": counts, "predicted_size_ratio": round(total / fp32_total, 4),
        "mean_bits_per_tower": _mean_bits_per_tower(adapter, bits, shapes)}


def _mean_bits_per_tower(adapter: Adapter, bits: dict[str, int],
                         shapes: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Weight-count-weighted mean width per tower: where the budget was spent."""
    towers, sums = adapter.towers(), {}
    for n, b in bits.items():
        t = sums.setdefault(tower_of(n, towers) or "other", [0, 0])
        t[0] += b * shapes[n][0] * shapes[n][1]
        t[1] += shapes[n][0] * shapes[n][1]
    return {t: round(w / max(c, 1), 2) for t, (w, c) in sums.items()}
