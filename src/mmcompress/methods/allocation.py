"""Bit widths per layer: uniform, or allocated from measured sensitivity to meet a size budget.

The budget greedily lowers, one step at a time, the layer whose next lower width costs the
least fidelity per byte saved, until the whole model's `model.safetensors` would be at most
`size_ratio` × its size before the stage, or (``same_size_as_bits: B``) at most the size the
same layers would take at a uniform B bits, so a budget can be compared with a uniform width
at equal size.

Sizes are each layer's stored bytes, before the stage and as the method would store it at each
width (a pruned layer: its mask plus its kept values). The file's header, which grows by an
entry per stored tensor (scales, zero points), is not modelled: on models under a megabyte it
can put the file a percent or two above the target; on real models it is negligible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator, model_validator
from torch import nn

from ..adapters import Adapter
from ..errors import RecipeError
from ..evaluation.evaluate import saved_size_bytes
from ..quantization.grid import QuantGrid
from ..selection import tower_of
from ..sensitivity import Compress, Probe, layer_sensitivity
from ..settings_base import Settings

#: a layer as the method stores it at a grid (round-to-nearest codes)
Layout = Callable[[nn.Module, QuantGrid], nn.Module]


class BitBudget(Settings):
    """``budget: {size_ratio: R | same_size_as_bits: B, bits: [4, 8]}`` on any
    weight-quantization method."""

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

    def target_bytes(self, total: int, saved_at: Callable[[int], int]) -> float:
        """The size to meet for a model of `total` bytes; `saved_at(B)`: the bytes the targeted
        layers save at a uniform B bits."""
        if self.size_ratio is not None:
            return self.size_ratio * total
        return total - saved_at(self.same_size_as_bits)


def stored_bytes(module: nn.Module) -> int:
    """Bytes of the tensors `module` saves (weights or codes, scales, masks, bias)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _shape(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return w.shape[0], w.numel() // w.shape[0]


def allocate_bits(total: int, before: dict[str, int], size: dict[int, dict[str, int]],
                  loss: dict[int, dict[str, float]], target: float) -> tuple[dict[str, int], int]:
    """Greedy allocation to at most `target` bytes for a model of `total` bytes whose layers
    take `before[name]` bytes now and `size[bits][name]` once quantized: (bits per layer,
    predicted total bytes)."""
    widths = sorted(size)
    level = {n: len(widths) - 1 for n in before}
    now = total + sum(size[widths[-1]][n] - b for n, b in before.items())
    while now > target:
        moves = []
        for n, lv in level.items():
            if lv == 0:
                continue
            hi, lo = widths[lv], widths[lv - 1]
            saved = size[hi][n] - size[lo][n]
            cost = max(loss[lo][n] - loss[hi][n], 0.0)
            moves.append((cost / max(saved, 1), n, saved))
        if not moves:
            raise RecipeError(f"budget size ratio {target / total:.4f} is out of reach: "
                              f"{widths[0]} bits on every targeted layer gives "
                              f"{now / total:.4f}")
        _, name, saved = min(moves)
        level[name] -= 1
        now -= saved
    return {n: widths[lv] for n, lv in level.items()}, now


def _sized(layout: Layout, grid: QuantGrid, sizes: dict[str, int]) -> Compress:
    """`layout` at `grid`, noting in `sizes` the stored bytes of each layer it builds."""

    def compress(name: str, module: nn.Module) -> nn.Module:
        stored = layout(module, grid)
        sizes[name] = stored_bytes(stored)
        return stored

    return compress


def layer_grids(adapter: Adapter, modules: dict[str, nn.Module], config: Any,
                context: Any) -> tuple[dict[str, QuantGrid], dict[str, Any]]:
    """Grid per module, and a summary for the report."""
    grid = config.grid()
    budget: BitBudget | None = config.budget
    if budget is None:
        return {n: grid for n in modules}, {}
    if context.data is None:
        raise RecipeError("a bit budget needs data to measure sensitivity; pass --data")

    def grid_at(b: int) -> QuantGrid:
        return QuantGrid(b, config.group_size, config.symmetric)

    total = saved_size_bytes(adapter.model)
    before = {n: stored_bytes(m) for n, m in modules.items()}
    size: dict[int, dict[str, int]] = {b: {} for b in budget.bits}
    probe = Probe.reaching(adapter, context.data, budget.samples, modules,
                           "the budget's sensitivity")
    loss = {b: layer_sensitivity(probe, modules, _sized(config.layout, grid_at(b), sizes),
                                 context.progress) for b, sizes in size.items()}

    def saved_at(b: int) -> int:
        after = size.get(b) or {n: stored_bytes(config.layout(m, grid_at(b)))
                                for n, m in modules.items()}
        return sum(before[n] - after[n] for n in modules)

    bits, predicted = allocate_bits(total, before, size, loss, budget.target_bytes(total, saved_at))
    counts = {str(b): sum(v == b for v in bits.values()) for b in budget.bits}
    shapes = {n: _shape(m) for n, m in modules.items()}
    return {n: grid_at(b) for n, b in bits.items()}, {
        "bits_per_layer": counts, "predicted_size_ratio": round(predicted / total, 4),
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
