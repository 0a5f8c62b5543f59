"""One evaluation path for every model: quality, fidelity, size, params, latency, memory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..adapters import Adapter
from ..data import Dataset
from ..errors import DataError
from ..io.checkpoint import state_for_saving, weights_metadata
from .config import METRICS, QUALITY, EvaluateConfig, put_in_metric_order
from .metrics import fidelity_cosine
from .speed import interleaved_latency_ms, median_latency_ms, peak_memory_mb
from .tasks import TASK_EVALUATORS, Embeddings


@dataclass
class Evaluation:
    metrics: dict[str, float]
    embeddings: Embeddings = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)


def check_data_fits(adapter: Adapter, data: Dataset) -> None:
    """Refuse data whose columns do not line up (`Dataset.check`), whose task the model
    cannot do (e.g. sentence pairs for an image model), whose metric would mean nothing (one
    class to choose from zero-shot, constant scores), or whose classes a classifier does not
    have."""
    data.check()
    if data.task not in adapter.tasks:
        raise DataError(
            f"data {data.name!r} is a {data.task} set, but a {adapter.name!r} model "
            f"supports {', '.join(sorted(adapter.tasks))}"
        )
    if (data.task == "classification" and not hasattr(adapter, "classify")
            and len(set(data.class_names)) == 1):  # zero-shot among one prompt class
        raise DataError(f"data {data.name!r} has one class: zero-shot top-1 would be 1.0 "
                        "whatever the model does")
    if data.task == "sts" and len(set(data.scores)) < 2:
        raise DataError(f"data {data.name!r} needs at least two pairs of different scores for "
                        "a rank correlation")
    if data.task == "classification" and hasattr(adapter, "label_indices"):
        adapter.label_indices(data)  # the model's classes, matched by name


def parameter_counts(model: nn.Module
                     ) -> Iterator[tuple[str, str | None, torch.Tensor | None, int]]:
    """(module name, parameter name, parameter, count) of every weight, as a dense network
    counts them: a module that keeps its weights in another form (quantized, sparse) once, as
    (name, None, None, its logical weights), without its own tensors."""
    skip: set[str] = set()
    for name, module in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if hasattr(module, "logical_params"):
            skip.add(name)
            yield name, None, None, module.logical_params()
            continue
        for pname, p in module.named_parameters(recurse=False):
            yield name, pname, p, p.numel()


def count_params(model: nn.Module) -> int:
    """Parameters of the model as a dense network would count them (quantized layers count
    their logical weights; physically removed units do not count)."""
    return sum(n for *_, n in parameter_counts(model))


def saved_size_bytes(model: nn.Module, weights_file: Path | None = None) -> int:
    """Bytes of `model.safetensors`: the file's size if saved, else the size of the same file
    written to a temporary folder (streamed from the tensors: serialising into memory would
    hold two extra copies of the model, the high-water mark of a whole compression run)."""
    if weights_file is not None and weights_file.is_file():
        return weights_file.stat().st_size
    with tempfile.TemporaryDirectory(prefix="mmc-size-") as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(state_for_saving(model), str(path), metadata=weights_metadata())
        return path.stat().st_size


def quality(
    adapter: Adapter, data: Dataset, reference: Embeddings | None = None, progress: bool = False
) -> Evaluation:
    """Task metrics (and fidelity to `reference` embeddings when given)."""
    check_data_fits(adapter, data)
    metrics, emb = TASK_EVALUATORS[data.task](adapter, data, progress)
    if reference is not None:
        metrics["fidelity_cosine"] = fidelity_cosine(emb, reference)
    return Evaluation(metrics, emb)


LATENCY_STATISTIC = "median after 3 warm-up runs"


def _alone_ms(run: Any, config: EvaluateConfig) -> float:
    """One tower's latency, timed alone."""
    return round(median_latency_ms(run, config.latency_repeats), 3)


def latency_metrics(adapter: Adapter, config: EvaluateConfig) -> dict[str, float]:
    """``latency_ms_<tower>`` of every tower `config` asks to time, each timed alone."""
    return {f"latency_ms_{tower}": _alone_ms(run, config)
            for tower, run in adapter.latency_inputs(config.latency_batch_size).items()
            if f"latency_ms_{tower}" in config.wanted}


def time_against_base(base: Adapter, adapter: Adapter, before: dict[str, Any],
                      after: Evaluation, config: EvaluateConfig) -> None:
    """Time every tower `config` asks to time in alternation with the same tower of `base`
    (the model before compression) and put the figures in `before` and `after.metrics`:
    timed apart, before and after the stages, their ratio moves with whatever else the machine
    runs in between. A tower `base` lacks is timed alone."""
    base_runs = base.latency_inputs(config.latency_batch_size)
    alone = False
    for tower, run in adapter.latency_inputs(config.latency_batch_size).items():
        key = f"latency_ms_{tower}"
        if key not in config.wanted:
            continue
        if tower in base_runs:
            ms = interleaved_latency_ms({"before": base_runs[tower], "after": run},
                                        config.latency_repeats)
            before[key], after.metrics[key] = round(ms["before"], 3), round(ms["after"], 3)
        else:
            after.metrics[key] = _alone_ms(run, config)
            alone = True
    put_in_metric_order(before)
    put_in_metric_order(after.metrics)
    after.measurement["latency_statistic"] = (
        f"{LATENCY_STATISTIC} of each, timed in alternation with the model before compression"
        + (" (towers it lacks: alone)" if alone else ""))


def evaluate_adapter(
    adapter: Adapter,
    data: Dataset,
    config: EvaluateConfig | None = None,
    reference: Embeddings | None = None,
    memory_spec: str | None = None,
    weights_file: Path | None = None,
    progress: bool = False,
    unpacked: bool = False,
    timed: bool = True,
) -> Evaluation:
    """Every metric that applies (or those in `config.metrics`), keys as in DESIGN.md.
    `unpacked`: the adapter's compact layers were unpacked after loading, so peak memory is
    measured the same way; `timed=False`: no latency (`time_against_base` times it later)."""
    config = config or EvaluateConfig()
    wanted = config.wanted
    data = data.head(config.max_samples)
    result = (
        quality(adapter, data, reference, progress)
        if wanted & (QUALITY | {"fidelity_cosine"})
        else Evaluation({})
    )
    for name, t in result.embeddings.items():  # reported figures only: probes score these
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"the model's {name} outputs on {data.name} hold NaN or Inf: the "
                            "data holds extreme values, or the model has diverged")
    m = result.metrics
    if "size_bytes" in wanted:
        m["size_bytes"] = saved_size_bytes(adapter.model, weights_file)
    if "params" in wanted:
        m["params"] = count_params(adapter.model)
    if timed:
        m.update(latency_metrics(adapter, config))
    if "peak_memory_mb" in wanted and memory_spec is not None:
        peak = peak_memory_mb(memory_spec, config.latency_batch_size, unpacked)
        if peak is not None:
            m["peak_memory_mb"] = peak
    result.metrics = {k: m[k] for k in METRICS if k in m and k in wanted}
    result.measurement = {
        "data": data.name,
        "task": data.task,
        "examples": len(data),
        "threads": torch.get_num_threads(),
        "latency_batch_size": config.latency_batch_size,
        "latency_text_tokens": adapter.latency_text_tokens(),
        "latency_repeats": config.latency_repeats,
        "latency_statistic": LATENCY_STATISTIC,
    }
    if unpacked:
        result.measurement["unpacked"] = True
    return result
