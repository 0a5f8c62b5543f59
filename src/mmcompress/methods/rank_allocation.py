"""Ranks per layer under a global parameter budget: uniform, or from measured sensitivity.

Each layer offers options (fewer weights, more loss), its dense form costing nothing. The
sensitivity allocator takes, across all layers, the moves with the least loss per weight saved
until the budget is met — as the bit budget in `allocation.py` does — but along each layer's
lower convex hull: factoring a layer at all pays its whole spectral tail at once, so a plain
step-by-step greedy would never start on it. `sparsity_allocation` spends a pruning budget the
same way, each option a sparsity rather than a rank. Both allocations refuse a budget that even
the smallest option on every layer exceeds.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecipeError


@dataclass
class LayerOptions:
    """A layer's dense weight count and its factored options (weights, loss, choice)."""

    dense: int
    options: list[tuple[int, float, Any]] = field(default_factory=list)


def _hull(layer: LayerOptions) -> list[tuple[int, float, Any]]:
    """The lower convex hull of (weights, loss) from the dense point towards fewer weights."""
    points = sorted((o for o in layer.options if o[0] < layer.dense), key=lambda o: -o[0])
    hull = [(layer.dense, 0.0, None)]
    for p in points:
        hull.append(p)
        while len(hull) >= 3:  # drop the middle point if it lies above the chord
            (p0, l0, _), (p1, l1, _), (p2, l2, _) = hull[-3:]
            if (l1 - l0) * (p0 - p2) >= (l2 - l0) * (p0 - p1):
                del hull[-2]
            else:
                break
    return hull


SMALLEST = "the smallest ranks"


def _ladder(layer: LayerOptions) -> list[tuple[int, Any]]:
    """(weights, choice) of the options that save weights, fewest first (none: stay dense)."""
    return sorted(((p, c) for p, _, c in layer.options if p < layer.dense),
                  key=lambda o: o[0]) or [(layer.dense, None)]


def _within(ladder: list[tuple[int, Any]], limit: int) -> tuple[int, Any]:
    """The rung with the most weights keeping at most `limit`, else the smallest."""
    return ladder[max(bisect.bisect_right(ladder, limit, key=lambda o: o[0]) - 1, 0)]


def check_reachable(layers: dict[str, LayerOptions], param_ratio: float,
                    smallest: str = SMALLEST) -> None:
    """Refuse `param_ratio` if even the smallest option on every layer keeps more weights;
    `smallest` names those options in the message.

    Raises:
        RecipeError: naming the smallest fraction the options reach.
    """
    total = sum(layer.dense for layer in layers.values())
    floor = sum(_ladder(layer)[0][0] for layer in layers.values())
    if floor > param_ratio * total:
        raise RecipeError(f"param_ratio {param_ratio} is out of reach: {smallest} keep "
                          f"{floor / total:.4g} of the selected layers' weights")


def allocate_ranks(layers: dict[str, LayerOptions], param_ratio: float,
                   smallest: str = SMALLEST) -> tuple[dict[str, Any], int]:
    """(choice per layer, None = stay dense; predicted weights) with at most `param_ratio` of
    the dense weights.

    Raises:
        RecipeError: if even the smallest option on every layer keeps too many weights.
    """
    check_reachable(layers, param_ratio, smallest)
    total = sum(layer.dense for layer in layers.values())
    target = param_ratio * total
    hulls = {n: _hull(layer) for n, layer in layers.items()}
    level = dict.fromkeys(layers, 0)
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        h, i = hulls[name], level[name]
        if i + 1 < len(h):
            saved = h[i][0] - h[i + 1][0]
            heapq.heappush(heap, (max(h[i + 1][1] - h[i][1], 0.0) / saved, name))

    for name in layers:
        push(name)
    kept = total
    while kept > target:  # each hull ends at the layer's smallest option: the heap lasts
        _, name = heapq.heappop(heap)
        h, i = hulls[name], level[name]
        kept -= h[i][0] - h[i + 1][0]
        level[name] = i + 1
        push(name)
    choices = {n: hulls[n][i][2] for n, i in level.items()}
    return _fill(layers, choices, kept, target)


def _fill(layers: dict[str, LayerOptions], choices: dict[str, Any], kept: int,
          target: float) -> tuple[dict[str, Any], int]:
    """Spend what the last hull step overshot: raise ranks (any option, not only hull points)
    where that lowers the loss most per weight, while the budget holds; a layer whose loss
    stays flat takes what is left (it costs nothing, and the model keeps closer to the
    budget)."""
    ladders = {n: sorted(layer.options, key=lambda o: o[0]) + [(layer.dense, 0.0, None)]
               for n, layer in layers.items()}
    pos = {n: next(i for i, o in enumerate(ladders[n]) if o[2] == choices[n]) for n in layers}
    while True:
        best = None
        for n, i in pos.items():
            if i + 1 < len(ladders[n]):
                (p0, l0, _), (p1, l1, _) = ladders[n][i], ladders[n][i + 1]
                if kept + p1 - p0 <= target and l0 >= l1:
                    gain = (l0 - l1) / max(p1 - p0, 1)
                    if best is None or gain > best[0]:
                        best = (gain, n)
        if best is None:
            return {n: ladders[n][i][2] for n, i in pos.items()}, kept
        n = best[1]
        kept += ladders[n][pos[n] + 1][0] - ladders[n][pos[n]][0]
        pos[n] += 1


def scale_to_measured(layer: LayerOptions, choice: Any, measured: float) -> None:
    """Rescale the layer's losses so that option `choice` costs `measured` (the model's loss
    with only that option applied, from a probe): the curve's shape comes from the layer, its
    height from the model."""
    predicted = next(loss for _, loss, c in layer.options if c == choice)
    scale = max(measured, 0.0) / max(predicted, 1e-12)
    layer.options = [(p, loss * scale, c) for p, loss, c in layer.options]


def uniform_choice(layer: LayerOptions, param_ratio: float) -> Any:
    """The option with the most weights that keeps at most `param_ratio` of the layer's (else
    the smallest; None if no option saves weights)."""
    return _within(_ladder(layer), math.floor(param_ratio * layer.dense))[1]


def uniform_ranks(layers: dict[str, LayerOptions], param_ratio: float,
                  smallest: str = SMALLEST) -> tuple[dict[str, Any], int]:
    """(choice per layer, kept weights): every layer keeps the same fraction of its weights,
    `param_ratio` unless layers that cannot go that low (they keep their smallest option) would
    overshoot the budget; then the largest fraction that meets it.

    Raises:
        RecipeError: if even the smallest option on every layer keeps too many weights.
    """
    check_reachable(layers, param_ratio, smallest)
    ladders = {n: _ladder(layer) for n, layer in layers.items()}
    target = param_ratio * sum(layer.dense for layer in layers.values())

    def at(share: float) -> dict[str, tuple[int, Any]]:
        return {n: _within(ladders[n], math.floor(share * layer.dense))
                for n, layer in layers.items()}

    def kept(share: float) -> int:
        return sum(p for p, _ in at(share).values())

    share = param_ratio
    if kept(share) > target:  # kept(share) only grows with share; at 0 it is the floor, which fits
        lo, hi = 0.0, param_ratio
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if kept(mid) <= target else (lo, mid)
        share = lo
    picks = at(share)
    return {n: c for n, (_, c) in picks.items()}, sum(p for p, _ in picks.values())
