"""Bit widths per layer: uniform, or allocated from measured sensitivity to meet a size budget.

The budget greedily lowers, one step at a time, the layer whose next lower width costs the
least fidelity per byte saved, until the whole model's `model.safetensors` would be at most
`size_ratio` × its size before the stage, or (``same_size_as_bits: B``) at most the size the
same layers would take at a uniform B bits, so a budget can be compared with a uniform width
at equal size.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ..adapters import Adapter
from ..errors import RecipeError
from ..evaluation.evaluate import saved_size_bytes
from ..modules.quantized import quantized_bytes
from ..quantization.grid import QuantGrid
from ..selection import tower_of
from ..sensitivity import Probe, layer_sensitivity


class BitBudget(BaseModel):
    """``budget: {size_ratio: R | same_size_as_bits: B, bits: [4, 8]}`` on any
    weight-quantization method."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size_ratio: float | None = Field(None, gt=0, le=1,
                                     description="target size / size before the stage")
    same_size_as_bits: int | None = Field(None, ge=2, le=8, description="target: the size of "
                                          "the same layers at this uniform width")
    bits: list[int] = Field([4, 8], description="widths to choose from")
    samples: int = Field(64, ge=4, description="examples used to measure sensitivity")

    @field_validator("bits")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(not 2 <= b <= 8 for b in v):
            raise ValueError("give at least two widths between 2 and 8")
        return sorted(set(v))

    @model_validator(mode="after")
    def _one_target(self) -> BitBudget:
        if (self.size_ratio is None) == (self.same_size_as_bits is None):
            raise ValueError("give exactly one of size_ratio and same_size_as_bits")
        return self

    def target_bytes(self, fp32_total: int, shapes: dict[str, tuple[int, int]],
                     grid: QuantGrid) -> float:
        """The size to meet; `grid` is the method's own (its group size and symmetry)."""
        if self.size_ratio is not None:
            return self.size_ratio * fp32_total
        uniform = QuantGrid(self.same_size_as_bits, grid.group_size, grid.symmetric)
        return fp32_total - sum(4 * r * c - quantized_bytes(r, c, uniform)
                                for r, c in shapes.values())


def _shape(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return w.shape[0], w.numel() // w.shape[0]


def allocate_bits(fp32_total: int, shapes: dict[str, tuple[int, int]],
                  loss: dict[int, dict[str, float]], grids: dict[int, QuantGrid],
                  target: float) -> tuple[dict[str, int], int]:
    """Greedy allocation to at most `target` bytes: (bits per layer, predicted total bytes)."""
    widths = sorted(grids)
    size = {b: {n: quantized_bytes(*shapes[n], grids[b]) for n in shapes} for b in widths}
    level = {n: len(widths) - 1 for n in shapes}
    total = fp32_total - sum(4 * r * c for r, c in shapes.values())
    total += sum(size[widths[-1]][n] for n in shapes)
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
            raise RecipeError(f"budget size ratio {target / fp32_total:.4f} is out of reach: "
                              f"{widths[0]} bits on every targeted layer gives "
                              f"{total / fp32_total:.4f}")
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
    target = budget.target_bytes(fp32_total, shapes, grid)
    bits, total = allocate_bits(fp32_total, shapes, loss, grids, target)
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
