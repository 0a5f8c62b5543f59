"""Variants of one model: each row of the benchmark is an adapter whose towers run one system.

Every variant is measured through the project's own evaluation path: a peer system (ONNX
Runtime, PyTorch dynamic int8) is plugged in as a *backend* by giving a shallow copy of the
adapter new tower functions, so `quality()` and `latency_inputs()` run that system on exactly
the inputs they give the fp32 model.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress import compress
from mmcompress.adapters import Adapter
from mmcompress.data import Dataset
from mmcompress.io.checkpoint import WEIGHTS, save_checkpoint

# Latency key (as in `Adapter.latency_inputs`) → the adapter method that runs that tower.
TOWER_METHODS = {"image": "embed_image_tensor", "text": "embed_text_tensors"}
STAGE_CHECK = 16  # examples `compress` evaluates after each stage (the runner measures quality)


@dataclass
class Variant:
    """One row: an adapter running this system, what it saves, and what building it took."""

    name: str
    kind: str  # "mmcompress" (fp32 baseline and recipes) or "peer"
    system: str
    adapter: Adapter
    size_bytes: int | None
    build_s: float | None = None
    memory_source: str | None = None  # a folder the fresh-process memory probe can load
    notes: str = ""


@dataclass
class BuildContext:
    """What builders share for one model: a work folder, threads, data, sample tower inputs."""

    workdir: Path
    threads: int
    batch_size: int
    data: Dataset
    calibration: Dataset | None = None  # what calibrated methods draw from (None: `data`)
    samples: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # e.g. ONNX exports shared by two peers


def with_towers(adapter: Adapter, towers: dict[str, Callable[..., torch.Tensor]]) -> Adapter:
    """A shallow copy of `adapter` whose tower methods are replaced (latency key → function)."""
    proxy = copy.copy(adapter)
    for key, fn in towers.items():
        setattr(proxy, TOWER_METHODS[key], fn)
    return proxy


def with_model(adapter: Adapter, model: nn.Module) -> Adapter:
    """A shallow copy of `adapter` running `model` (adapters reach weights only via `.model`)."""
    proxy = copy.copy(adapter)
    proxy.model = model
    return proxy


def capture_tower_inputs(adapter: Adapter, batch_size: int) -> dict[str, Any]:
    """The exact inputs `latency_inputs(batch_size)` feeds each tower (for export and checks)."""
    captured: dict[str, Any] = {}

    def recorder(key: str) -> Callable[[Any], torch.Tensor]:
        def record(x: Any) -> torch.Tensor:
            captured[key] = x
            return torch.zeros(1)

        return record

    runs = adapter.latency_inputs(batch_size)
    missing = [k for k in runs if k not in TOWER_METHODS or not hasattr(adapter, TOWER_METHODS[k])]
    if missing:
        raise ValueError(f"{adapter.name}: no tower method for latency input(s) {missing}")
    proxy = with_towers(adapter, {k: recorder(k) for k in runs})
    for run in proxy.latency_inputs(batch_size).values():
        run()
    if set(captured) != set(runs):
        raise ValueError(f"{adapter.name}: latency_inputs does not call its tower methods")
    return captured


def build_fp32(adapter: Adapter, ctx: BuildContext) -> Variant:
    """The uncompressed model, saved like an mmcompress output so size and memory compare."""
    folder = ctx.workdir / "fp32"
    folder.mkdir(parents=True)
    save_checkpoint(adapter, folder, adapter.name, [])
    size = (folder / WEIGHTS).stat().st_size
    system = f"PyTorch {torch.__version__.split('+')[0]} fp32 (baseline)"
    return Variant("fp32", "mmcompress", system, adapter, size, memory_source=str(folder))


def build_recipe(adapter: Adapter, ctx: BuildContext, name: str, recipe: dict) -> Variant:
    """Run a recipe with `mmcompress.compress` on a copy of the model; save to the work folder.

    `compress` measures only the saved size here (quality and speed are measured by the runner
    for every row alike), and its per-stage check runs on the first few examples only;
    calibration draws from `ctx.calibration` (the model's training data), else `ctx.data`.
    """
    recipe = {**recipe, "evaluate": {"metrics": ["size_bytes"], "max_samples": STAGE_CHECK}}
    work = with_model(adapter, copy.deepcopy(adapter.model))
    result = compress(work, recipe, out=ctx.workdir / name, data=ctx.data, progress=False,
                      calibration_data=ctx.calibration)
    report = result.report
    return Variant(
        name,
        "mmcompress",
        f"mmcompress {report['mmcompress_version']} "
        + " + ".join(f"{s['kind']}: {s['method']}" for s in report["stages"]),
        result.adapter,
        report["after"].get("size_bytes"),
        build_s=sum(s["seconds"] for s in report["stages"]),
        memory_source=str(result.out),
    )


def build_compiled(source: Variant, ctx: BuildContext, name: str) -> Variant:
    """`source`'s saved output loaded with its towers compiled (`mmcompress.compiled`). Its
    build time is the first call of each tower at the benchmark batch, which compiles it."""
    from mmcompress import load
    from mmcompress.compiled import warm_up

    if source.memory_source is None:
        raise ValueError(f"{source.name} has no saved output to load")
    adapter = load(source.memory_source, compiled=True)
    seconds = warm_up(adapter.latency_inputs(ctx.batch_size))
    per_tower = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    return Variant(
        name,
        "mmcompress",
        f"{source.system}, loaded with torch.compile (inductor, freezing)",
        adapter,
        source.size_bytes,
        build_s=sum(seconds.values()),
        notes=f"build time = compile on first call ({per_tower}); same saved file as {source.name}",
    )


def build_torch_dynamic_int8(adapter: Adapter, ctx: BuildContext) -> Variant:
    """`torch.ao.quantization.quantize_dynamic` on every `nn.Linear` (int8 weights, per tensor;
    activations quantized at run time). Deprecated in favour of torchao, which is not installed
    here; the size is that of its saved state dict (`torch.save`: packed params are not tensors
    safetensors can hold)."""
    from torch.ao.quantization import quantize_dynamic

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = quantize_dynamic(copy.deepcopy(adapter.model), {nn.Linear}, dtype=torch.qint8)
        build_s = time.perf_counter() - start
        path = ctx.workdir / "torch-dynamic-int8.pt"
        torch.save(qmodel.state_dict(), path)
    return Variant(
        "torch-dynamic-int8",
        "peer",
        f"PyTorch {torch.__version__.split('+')[0]} quantize_dynamic (torch.ao, nn.Linear, qint8)",
        with_model(adapter, qmodel),
        path.stat().st_size,
        build_s=build_s,
        notes="torch.ao.quantization is deprecated in this torch (torchao not installed)",
    )
