"""Latency of many variants, interleaved so that load on a shared machine hits them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mmcompress.evaluation.speed import WARMUP


@torch.inference_mode()
def interleaved_latency_ms(
    runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = WARMUP
) -> dict[str, float]:
    """Median wall time (ms) of each run after `warmup` untimed calls each.

    The timed calls go round-robin (one call of every run per round), so a burst of load from
    other processes slows every variant rather than whichever was being timed at the moment;
    ratios between variants are then steadier than their absolute times.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - start) * 1e3)
    return {key: statistics.median(t) for key, t in times.items()}
