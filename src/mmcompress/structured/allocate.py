"""Which units to remove: the same ratio in every layer of every tower, or one global ranking.

``tower`` scope removes ``round(f × units)`` (or the given count) of each layer's units, the
lowest-scored ones, so every tower — and every layer in it — keeps the same ratio.

``global`` scope leaves the parameters ``tower`` scope would (to the nearest unit, counted
as pruning leaves them: `structured.groups.params_after`), but lets the data choose where
(UPop-style): every unit of every targeted tower goes into one list. Raw scores are not
comparable across towers or unit kinds (different activation scales, different unit sizes),
so scores are normalised within *pools* of comparable units — a unit's key is its share of its
pool's total score divided by its share of the pool's parameters. A unit of exactly average
importance per parameter thus has key 1 everywhere, and the units furthest below that are
removed first until the parameter budget is met. Pools are chosen by the caller: one for
everything when scores measure the same thing everywhere (Taylor: the relative change of the
model's output, so a sensitive tower keeps more), one per tower for block influence, one per
layer for local scores (magnitude, activation), as Torch-Pruning's group normaliser does.
Every group keeps at least one unit, every layer list at least one block. A parameter target
(``params_ratio``) replaces what ``tower`` scope would leave; the asked amounts then cap what
each layer may lose. `global_plan` counts each unit's parameters alone, so where pruned groups
chain (a convolution's outputs feeding another's inputs) the caller frees more until the exact
count meets the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RecipeError

Amount = float | int


@dataclass(frozen=True)
class Candidate:
    group: int  # index of the group (unit group or layer list)
    unit: int  # unit (or block) index within it
    kind: str
    score: float
    params: int
    pool: tuple = ()  # units whose scores are comparable (normalised together)


def unit_amount(v: Any) -> Any:
    """Check an amount of units to remove: a fraction in [0, 1) or a whole count (or None)."""
    if v is None:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a fraction in [0, 1) or a whole count, got {v!r}")
    if isinstance(v, int) and v < 0:
        raise ValueError(f"a count must be 0 or more, got {v}")
    if isinstance(v, float) and not 0 <= v < 1:
        raise ValueError(f"a fraction must be in [0, 1), got {v} (use a whole number "
                         "for a count)")
    return v


def how_many(amount: Amount, size: int) -> int:
    """Units a fraction or a count asks to remove from `size`: a count as given (refused by
    `check_counts` when it takes every unit), a fraction to the nearest unit (halves round
    up, not to even) but never every unit (0.5 of a one-layer list removes none)."""
    if isinstance(amount, int):
        return amount
    return min(math.floor(amount * size + 0.5), max(size - 1, 0))


def check_counts(kind: str, where: str, remove: int, size: int, noun: str) -> None:
    if remove >= size:
        advice = (f"ask for a count below {size}, or a fraction" if size > 1 else
                  "it has only one: leave it out with 'targets' or 'ignore'")
        raise RecipeError(
            f"prune {kind}: removing {remove} of the {size} {noun} of {where} would remove "
            f"all of them; {advice}")


def uniform_plan(cands: Sequence[Candidate], remove: dict[int, int]) -> dict[int, list[int]]:
    """The `remove[g]` lowest-scored units of each group g."""
    by_group: dict[int, list[Candidate]] = {}
    for c in cands:
        by_group.setdefault(c.group, []).append(c)
    plan = {}
    for g, cs in by_group.items():
        low = sorted(cs, key=lambda c: (c.score, c.unit))[: remove.get(g, 0)]
        plan[g] = sorted(c.unit for c in low)
    return plan


def normalised_keys(cands: Sequence[Candidate]) -> list[float]:
    """Score share over parameter share, within each candidate's pool."""
    score_sum: dict[tuple, float] = {}
    param_sum: dict[tuple, int] = {}
    for c in cands:
        score_sum[c.pool] = score_sum.get(c.pool, 0.0) + c.score
        param_sum[c.pool] = param_sum.get(c.pool, 0) + c.params
    keys = []
    for c in cands:
        share = c.params / param_sum[c.pool]
        total = score_sum[c.pool]
        keys.append((c.score / total if total > 0 else share) / share)
    return keys


def global_plan(cands: Sequence[Candidate], sizes: dict[int, int], budget: int,
                caps: dict[int, int] | None = None) -> dict[int, list[int]]:
    """Remove the lowest-key units until `budget` parameters are freed (to the nearest unit),
    keeping at least one unit in each group and removing at most ``caps[g]`` from group g."""
    keys = normalised_keys(cands)
    order = sorted(range(len(cands)), key=lambda i: (keys[i], cands[i].group, cands[i].unit))
    floor = {g: max(1, n - caps[g]) if caps else 1 for g, n in sizes.items()}
    left = dict(sizes)
    plan: dict[int, list[int]] = {g: [] for g in sizes}
    freed = 0
    for i in order:
        c = cands[i]
        if left[c.group] <= floor[c.group] or freed + c.params > budget + c.params // 2:
            continue
        plan[c.group].append(c.unit)
        left[c.group] -= 1
        freed += c.params
    return {g: sorted(u) for g, u in plan.items()}
