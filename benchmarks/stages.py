"""Running recipe stages in a benchmark: the one way every benchmark applies them, as
`mmcompress.compress` does (without its evaluation after each stage)."""

from __future__ import annotations

import time
from typing import Any

import torch

from mmcompress.data import Dataset
from mmcompress.methods import StageContext, run_stages
from mmcompress.recipe import load_recipe


def apply_stages(adapter, stages: list[dict[str, Any]], data: Dataset | None,
                 calibration: dict[str, Any] | None = None, original=None,
                 threads: int | None = None) -> tuple[list[dict[str, Any]], float]:
    """Run the recipe `stages` on `adapter` in place; (their summaries, seconds taken).

    `calibration`: the recipe's calibration section (its defaults when None). `original`: the
    model a stage compares with or learns from (a BatchNorm correction, a distillation
    teacher); by default a copy of the model before the stages, made when one needs it.
    `threads`: torch's thread count while the stages run (unchanged when None)."""
    recipe = load_recipe({"stages": stages, "calibration": calibration or {}})
    context = StageContext(data=data, calibration=recipe.calibration, progress=False)
    if original is not None:
        context.extra["original"] = original
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    start = time.perf_counter()
    try:
        summaries = run_stages(adapter, recipe.stages, context)
    finally:
        torch.set_num_threads(before)
    return summaries, time.perf_counter() - start
