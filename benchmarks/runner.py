"""Run every model × configuration × peer, measure each row alike, write JSON and Markdown."""

from __future__ import annotations

import gc
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import mmcompress
from mmcompress.adapters import Adapter
from mmcompress.adapters.base import LATENCY_SEQ_LEN
from mmcompress.data import Dataset, load_data
from mmcompress.evaluation.evaluate import check_data_fits, count_params, quality
from mmcompress.evaluation.speed import WARMUP, interleaved_latency_ms, peak_memory_mb
from mmcompress.io.atomic import write_text_atomic
from mmcompress.model_specs import NAMED_SPECS, load_model

from . import onnx_peers
from .configs import COMPILED, CONFIGS, ModelCase
from .markdown import render_markdown
from .results_file import store
from .variants import (
    BuildContext,
    Variant,
    build_compiled,
    build_fp32,
    build_recipe,
    build_torch_dynamic_int8,
    capture_tower_inputs,
)

# Peer systems: name → (builder, check that returns why it cannot run here, or None).
PEERS: dict[str, tuple[Callable[[Adapter, BuildContext], Variant], Callable[[], str | None]]] = {
    "torch-dynamic-int8": (build_torch_dynamic_int8, lambda: None),
    "ort-fp32": (onnx_peers.build_ort_fp32, onnx_peers.available),
    "ort-dynamic-int8": (onnx_peers.build_ort_dynamic_int8, onnx_peers.available),
}
PRIMARY_METRICS = ("zeroshot_top1", "top1", "stsb_spearman", "recall_t2i@1", "recall_i2t@1")


@dataclass
class Settings:
    """How one run measures. Quick mode: fewer examples (per model) and fewer repeats."""

    quick: bool = False
    threads: int = 2
    batch_size: int = 8
    repeats: int = 20
    warmup: int = WARMUP
    memory: bool = True
    configs: dict[str, dict[str, Any] | None] = field(default_factory=lambda: dict(CONFIGS))
    peers: tuple[str, ...] = tuple(PEERS)
    per_model: dict[str, list[str]] = field(default_factory=dict)  # model → its configs only


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _subset(data: Dataset, n: int) -> Dataset:
    """Quick-mode data: `n` examples spread evenly (`Dataset.head`; class folders are stored
    class by class, so the first `n` would be a few classes only)."""
    return data.head(n)


def _load(case: ModelCase, quick: bool) -> tuple[Adapter, Dataset]:
    if case.load is not None:
        adapter = case.load()
    elif case.spec in NAMED_SPECS or case.spec.startswith("random:"):
        adapter = load_model(case.spec, progress=False)
    else:
        known = ", ".join(NAMED_SPECS)
        raise LookupError(f"model spec {case.spec!r} is not available yet (named specs: {known})")
    data = load_data(case.data if case.data is not None else adapter.default_data)
    if not case.quality:
        data = data.head(8)  # only the recipe runner's per-stage check runs on it
    elif quick and case.quick_samples:
        data = _subset(data, case.quick_samples)
    check_data_fits(adapter, data)
    return adapter, data


def _build_all(adapter: Adapter, ctx: BuildContext, s: Settings,
               only: list[str] | None) -> tuple[list[Variant], list]:
    """Every configuration (or those in `only`) and peer; failures become rows with their
    reason."""
    variants, failed = [], []

    def attempt(name: str, kind: str, build: Callable[[], Variant]) -> None:
        start = time.perf_counter()
        try:
            variants.append(build())
            print(f"  built {name} in {time.perf_counter() - start:.1f}s", flush=True)
        except Exception as exc:  # noqa: BLE001 - one broken row must not end the benchmark
            failed.append({"name": name, "kind": kind, "status": "error", "reason": _error(exc)})
            print(f"  {name}: error: {_error(exc)}", flush=True)

    for name, recipe in s.configs.items():
        if recipe is None or (only is not None and name not in only):
            continue
        attempt(name, "mmcompress", lambda n=name, r=recipe: build_recipe(adapter, ctx, n, r))
    built = {v.name: v for v in variants}
    for name, source in COMPILED.items():
        if name in (only or ()) and source in built:
            attempt(name, "mmcompress",
                    lambda n=name, v=built[source]: build_compiled(v, ctx, n))
    for name in s.peers:
        builder, check = PEERS[name]
        why = check() or ctx.cache.get("no_samples")
        if why:
            failed.append({"name": name, "kind": "peer", "status": "skipped", "reason": why})
            print(f"  {name}: skipped: {why}", flush=True)
            continue
        attempt(name, "peer", lambda b=builder: b(adapter, ctx))
    return variants, failed


def _row(v: Variant, fp32: dict[str, Any], lat: dict, mem: float | None, q: dict) -> dict:
    towers = sorted(t for (name, t) in lat if name == v.name)
    latency = {t: round(lat[(v.name, t)], 3) for t in towers}
    base = fp32.get("latency_ms", latency)
    return {
        "name": v.name,
        "kind": v.kind,
        "system": v.system,
        "status": "ok",
        "quality": q,
        "size_bytes": v.size_bytes,
        "size_ratio": round(v.size_bytes / fp32["size_bytes"], 4) if fp32 else 1.0,
        "params": count_params(v.adapter.model) if v.kind == "mmcompress" else None,
        "latency_ms": latency,
        "latency_ratio": {t: round(latency[t] / base[t], 3) for t in towers if t in base},
        "build_s": None if v.build_s is None else round(v.build_s, 2),
        "peak_memory_mb": mem,
        "notes": v.notes,
    }


def _qualities(adapter: Adapter, data: Dataset, variants: list[Variant], failed: list) -> dict:
    """Task metrics of every variant, with fidelity to the fp32 embeddings; a variant whose
    evaluation fails moves to `failed`."""
    base = quality(adapter, data)
    out = {"fp32": base.metrics}
    for v in list(variants[1:]):
        try:
            out[v.name] = quality(v.adapter, data, base.embeddings).metrics
        except Exception as exc:  # noqa: BLE001 - e.g. a peer runtime refusing an input
            variants.remove(v)
            failed.append(
                {"name": v.name, "kind": v.kind, "status": "error", "reason": _error(exc)}
            )
    return out


def _measure(variants: list[Variant], qualities: dict, metric: str | None, s: Settings) -> list:
    """Latency (all variants interleaved), then memory, into one row per variant."""
    runs = {
        (v.name, tower): fn
        for v in variants
        for tower, fn in v.adapter.latency_inputs(s.batch_size).items()
    }
    latency = interleaved_latency_ms(runs, s.repeats, s.warmup)
    rows: list[dict] = []
    for v in variants:
        probe = s.memory and v.memory_source is not None
        mem = peak_memory_mb(v.memory_source, s.batch_size) if probe else None
        rows.append(_row(v, rows[0] if rows else {}, latency, mem, qualities.get(v.name, {})))
        _print_row(rows[-1], metric)
    return rows


def run_model(case: ModelCase, s: Settings) -> dict[str, Any]:
    """All rows of one model; a model that cannot be loaded is skipped with the reason."""
    entry: dict[str, Any] = {"model": case.spec, "data_note": case.data_note, "rows": []}
    print(f"[{case.spec}]", flush=True)
    start = time.perf_counter()
    try:
        adapter, data = _load(case, s.quick)
    except Exception as exc:  # noqa: BLE001 - report and go on with the other models
        entry["skipped"] = _error(exc)
        print(f"  skipped: {entry['skipped']}", flush=True)
        return entry
    entry.update(data=data.name, task=data.task, examples=len(data) if case.quality else 0)
    phases, clock = {"load": time.perf_counter() - start}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        phases[name], clock = time.perf_counter() - clock, time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="mmc-bench-") as tmp:
        ctx = BuildContext(Path(tmp), s.threads, s.batch_size, data,
                           case.calibration() if case.calibration else None)
        try:
            ctx.samples = capture_tower_inputs(adapter, s.batch_size)
        except ValueError as exc:
            ctx.cache["no_samples"] = _error(exc)  # peers need the towers' inputs
        variants, failed = _build_all(adapter, ctx, s, s.per_model.get(case.spec))
        variants.insert(0, build_fp32(adapter, ctx))
        lap("build")
        qualities = _qualities(adapter, data, variants, failed) if case.quality else {}
        lap("quality")
        metric = next((m for m in PRIMARY_METRICS if m in qualities.get("fp32", {})), None)
        entry["quality_metric"] = metric
        entry["rows"] = _measure(variants, qualities, metric, s) + failed
        lap("latency_and_memory")
        del variants, ctx
        gc.collect()
    entry["seconds"] = round(time.perf_counter() - start, 1)
    entry["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    return entry


def _print_row(row: dict, metric: str | None) -> None:
    q = row["quality"].get(metric) if metric else None
    lat = ", ".join(
        f"{t} {ms:.1f}ms ×{row['latency_ratio'].get(t, 1):.2f}"
        for t, ms in row["latency_ms"].items()
    )
    qual = f"{metric} {q:.4f}, " if q is not None else ""
    print(f"  {row['name']:<20} {qual}{row['size_bytes'] / 1e6:.1f} MB, {lat}", flush=True)


def machine_info() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), core counts and platform."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": names[0] if names else platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _warn_if_oversubscribed(threads: int) -> None:
    """PyTorch's OpenMP threads wait on each other at every op: when other processes keep the
    CPUs busy, a run with threads > 1 measures that waiting more than the model."""
    load = _load_average()
    cpus = machine_info()["usable_cpus"] or 1
    if threads > 1 and load and load[0] + threads > cpus:
        print(
            f"warning: load average {load[0]:.1f} on {cpus} CPUs; with {threads} threads PyTorch "
            "latency is inflated by waiting for descheduled threads (try --threads 1)",
            flush=True,
        )
    if threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        print("warning: OMP_WAIT_POLICY=PASSIVE puts OpenMP threads to sleep after every op; "
              "models of many small ops (the int8 paths) are measured slower than they run "
              "(unset it for latency)", flush=True)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (memory probes)."""
    own, kids = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 1)


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other processes competing for the CPUs."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"mmcompress": mmcompress.__version__, "torch": torch.__version__}
    for name in ("transformers", "onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def run_benchmark(
    cases: Sequence[ModelCase],
    settings: Settings,
    json_path: Path,
    markdown_path: Path | None,
    command: str,
) -> dict[str, Any]:
    """Run `cases`, write the results to `json_path` and the report to `markdown_path`."""
    torch.set_num_threads(settings.threads)
    _warn_if_oversubscribed(settings.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": _versions(),
        "settings": {
            "quick": settings.quick,
            "threads": settings.threads,
            "batch_size": settings.batch_size,
            "text_tokens": LATENCY_SEQ_LEN,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "configs": settings.configs,
            "configs_per_model": settings.per_model,
            "peers": list(settings.peers),
        },
        "load_average_start": _load_average(),
        "models": [run_model(case, settings) for case in cases],
    }
    results["load_average_end"] = _load_average()
    results["total_s"] = round(time.perf_counter() - start, 1)
    results["cpu_s"] = _cpu_seconds()
    store(json_path, results)
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        json_ref = os.path.relpath(json_path, markdown_path.parent)
        write_text_atomic(markdown_path, render_markdown(results, json_ref))
    return results
