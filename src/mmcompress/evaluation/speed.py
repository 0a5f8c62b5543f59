"""Latency (warm-up, repeats, median) and peak memory of a model in a fresh process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

WARMUP = 3


@torch.inference_mode()
def median_latency_ms(fn: Callable[[], Any], repeats: int = 10, warmup: int = WARMUP) -> float:
    """Median wall time of `fn()` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def interleaved_times_ms(runs: dict[str, Callable[[], Any]], repeats: int,
                         warmup: int = WARMUP) -> dict[str, list[float]]:
    """Wall times (ms) of `repeats` calls of each run, after `warmup` untimed calls each.

    The timed calls go round-robin (one call of every run per round), so a burst of load from
    other processes slows every run rather than whichever was being timed at the moment;
    ratios between runs are then steadier than their absolute times.
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
    return times


def interleaved_latency_ms(runs: dict[str, Callable[[], Any]], repeats: int,
                           warmup: int = WARMUP) -> dict[str, float]:
    """Median wall time (ms) of each run, timed round-robin (`interleaved_times_ms`)."""
    return {key: statistics.median(t)
            for key, t in interleaved_times_ms(runs, repeats, warmup).items()}


def peak_memory_mb(spec: str, batch_size: int, unpacked: bool = False) -> float | None:
    """Peak resident memory (MiB) that loading `spec` (its compact layers unpacked if
    `unpacked`) and running each tower once adds to a fresh Python process that has already
    imported torch and mmcompress. None if it fails."""
    cmd = [sys.executable, "-m", "mmcompress.evaluation.memory_probe", spec, str(batch_size)]
    cmd += ["unpack"] if unpacked else []
    env = dict(os.environ, TQDM_DISABLE="1")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=True)
        return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_memory_mb"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return None
