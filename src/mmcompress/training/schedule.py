"""Learning-rate schedule: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math


def warmup_steps(warmup: int | float, total_steps: int) -> int:
    """`warmup` as a step count: a float in [0, 1) is a fraction of `total_steps`."""
    if isinstance(warmup, float):
        return int(round(warmup * total_steps))
    return int(warmup)


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the base learning rate for the optimizer step taken after `step` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
