"""ONNX Runtime peers: each tower exported to ONNX, run fp32 and dynamically quantized to int8.

Towers are exported from the adapter's own tower methods (image: pixels → embedding; text:
input_ids + attention_mask → embedding) with the dynamo exporter and dynamic batch and sequence
axes, falling back to the TorchScript exporter; every export is checked against PyTorch on two
input shapes before it is used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .variants import TOWER_METHODS, BuildContext, Variant, with_towers

TEXT_INPUTS = ("input_ids", "attention_mask")
OUTPUT = "tower_output"  # not "embedding": that can clash with a weight's name in the graph
MAX_ABS_DIFF = 1e-3  # exported fp32 graph vs PyTorch, on L2-normalised embeddings


def available() -> str | None:
    """None when ONNX Runtime and the exporter's dependencies import, else why not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'mmcompress[bench]')"
    return None


class _ImageTower(nn.Module):
    def __init__(self, adapter: Any) -> None:
        super().__init__()
        self.model, self.adapter = adapter.model, adapter

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.adapter.embed_image_tensor(pixels)


class _TextTower(nn.Module):
    def __init__(self, adapter: Any) -> None:
        super().__init__()
        self.model, self.adapter = adapter.model, adapter

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.adapter.embed_text_tensors(
            {"input_ids": input_ids, "attention_mask": attention_mask}
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' and quantizer's progress lines and advice."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _tower_args(key: str, sample: Any) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    if key == "image":
        return (sample,), ["pixels"]
    if set(sample) != set(TEXT_INPUTS):
        raise ValueError(f"text tower takes {sorted(sample)}; only {TEXT_INPUTS} is exported")
    return tuple(sample[k] for k in TEXT_INPUTS), list(TEXT_INPUTS)


def _onnx_export(module: nn.Module, args: tuple, names: list[str], path: Path,
                 **options: Any) -> None:
    with _quiet():
        torch.onnx.export(module, args, str(path), input_names=names, output_names=[OUTPUT],
                          **options)


def _export(module: nn.Module, args: tuple, names: list[str], path: Path) -> str:
    """Export with dynamic batch (and sequence) axes; returns the exporter that worked."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=4096)
    shapes = tuple({0: batch} if a.dim() == 4 else {0: batch, 1: seq} for a in args)
    try:
        _onnx_export(module, args, names, path, dynamic_shapes=shapes, dynamo=True,
                     external_data=False)
        return "dynamo"
    except Exception:  # noqa: BLE001 - any exporter failure falls back to TorchScript
        axes = {
            n: ({0: "batch"} if a.dim() == 4 else {0: "batch", 1: "seq"})
            for n, a in zip(names, args)
        }
        _onnx_export(module, args, names, path, dynamic_axes={**axes, OUTPUT: {0: "batch"}},
                     dynamo=False)
        return "torchscript"


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _runner(session: Any, key: str) -> Callable[[Any], torch.Tensor]:
    """A tower function with the adapter's signature that runs an ORT session."""
    if key == "image":
        return lambda pixels: torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0])
    return lambda inputs: torch.from_numpy(
        session.run(None, {k: inputs[k].numpy() for k in TEXT_INPUTS})[0]
    )


def _check(adapter: Any, key: str, sample: Any, run: Callable[[Any], torch.Tensor]) -> float:
    """Largest |ORT − PyTorch| on the sample and on a smaller batch (shorter text)."""
    small = sample[:3] if key == "image" else {k: v[:3, :7] for k, v in sample.items()}
    worst = 0.0
    with torch.inference_mode():
        for x in (sample, small):
            ref = getattr(adapter, TOWER_METHODS[key])(x)
            worst = max(worst, float((run(x) - ref).abs().max()))
    return worst


def export_towers(adapter: Any, ctx: BuildContext) -> dict[str, Any]:
    """Export and check every tower once per model (shared by the ORT fp32 and int8 rows)."""
    if "onnx" in ctx.cache:
        return ctx.cache["onnx"]
    folder = ctx.workdir / "onnx-fp32"
    folder.mkdir()
    paths, exporters, start = {}, {}, time.perf_counter()
    for key, sample in ctx.samples.items():
        args, names = _tower_args(key, sample)
        tower = _ImageTower(adapter) if key == "image" else _TextTower(adapter)
        paths[key] = folder / f"{key}.onnx"
        exporters[key] = _export(tower.eval(), args, names, paths[key])
        diff = _check(adapter, key, sample, _runner(_session(paths[key], ctx.threads), key))
        if diff > MAX_ABS_DIFF:
            raise ValueError(f"{key} tower export differs from PyTorch by {diff:.2g}")
    info = {"paths": paths, "exporters": exporters, "seconds": time.perf_counter() - start}
    ctx.cache["onnx"] = info
    return info


def _variant(
    adapter: Any,
    ctx: BuildContext,
    name: str,
    system: str,
    paths: dict[str, Path],
    build_s: float,
    notes: str,
) -> Variant:
    towers = {k: _runner(_session(p, ctx.threads), k) for k, p in paths.items()}
    size = sum(p.stat().st_size for p in paths.values())
    return Variant(name, "peer", system, with_towers(adapter, towers), size, build_s, notes=notes)


def build_ort_fp32(adapter: Any, ctx: BuildContext) -> Variant:
    """ONNX Runtime, fp32 graphs of each tower."""
    import onnxruntime as ort

    info = export_towers(adapter, ctx)
    exporters = ", ".join(f"{k}: {v}" for k, v in info["exporters"].items())
    return _variant(
        adapter,
        ctx,
        "ort-fp32",
        f"ONNX Runtime {ort.__version__} fp32",
        info["paths"],
        info["seconds"],
        f"exporter {exporters}",
    )


def build_ort_dynamic_int8(adapter: Any, ctx: BuildContext) -> Variant:
    """`onnxruntime.quantization.quantize_dynamic` (QInt8 weights, per tensor; activations
    quantized at run time) on the fp32 exports; build time includes the export."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    info = export_towers(adapter, ctx)
    folder = ctx.workdir / "onnx-int8"
    folder.mkdir()
    paths, start = {}, time.perf_counter()
    for key, fp32 in info["paths"].items():
        paths[key] = folder / fp32.name
        with _quiet():
            quantize_dynamic(str(fp32), str(paths[key]), weight_type=QuantType.QInt8)
    build_s = info["seconds"] + time.perf_counter() - start
    return _variant(
        adapter,
        ctx,
        "ort-dynamic-int8",
        f"ONNX Runtime {ort.__version__} quantize_dynamic int8",
        paths,
        build_s,
        "weights QInt8 per tensor, ORT defaults otherwise",
    )
