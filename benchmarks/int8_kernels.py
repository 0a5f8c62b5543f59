"""Integer kernels on this CPU: per-layer W8A8 candidates and whole CLIP towers vs fp32.

``python -m benchmarks.int8_kernels OUT.json [--threads 2] [--repeats 30] [--ort]
[--omp-wait-policy passive|default] [--skip-layers] [--skip-towers] [--signed]``

Layers: CLIP ViT-B/32 linear shapes (vision 8×50 tokens, text 8×32 tokens). Every
candidate runs interleaved with fp32 ``F.linear`` (one call of each per round), and the
speedup is the median over rounds of fp32 time / candidate time in the same round, so load
from other processes hits both alike; ``min`` speedups (best call of each) are printed too.
Towers: ``random:clip-vit-base-patch32`` at batch 8, fp32 eager vs PyTorch dynamic int8
(vs ONNX Runtime dynamic int8 with ``--ort``) vs mmcompress SmoothQuant W8A8, saved and
reloaded, so the timed model is the loaded one.

On a shared machine, OpenMP threads that spin while waiting for a descheduled peer make
every parallel op cost a scheduler time slice (~15 ms here, whatever its size), which
swamps int8 kernels that take well under a millisecond. The script therefore re-executes
itself with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) unless told
``--omp-wait-policy default``; the policy is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.evaluation.speed import interleaved_times_ms
from mmcompress.modules import W8A8Linear
from mmcompress.modules.int8 import (
    build_kernel,
    fastest_kernel,
    prepacked_weight,
    quantize_activation,
)

from .results_file import store

SHAPES = {  # name: (tokens, in, out)
    "vision qkv/out 768x768": (400, 768, 768),
    "vision fc1 768x3072": (400, 768, 3072),
    "vision fc2 3072x768": (400, 3072, 768),
    "text qkv/out 512x512": (256, 512, 512),
    "text fc1 512x2048": (256, 512, 2048),
    "text fc2 2048x512": (256, 2048, 512),
}


def interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Per run: median and min ms, and speedup vs the 'fp32' run (median of per-round ratios
    and ratio of minima)."""
    times = interleaved_times_ms(runs, repeats, warmup)
    base = times["fp32"]
    return {
        k: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "speedup": statistics.median(b / x for b, x in zip(base, t)),
            "speedup_min": min(base) / min(t),
        }
        for k, t in times.items()
    }


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def layer_candidates(x: torch.Tensor, lin: nn.Linear,
                     signed: bool = False) -> dict[str, Callable[[], Any]]:
    """Every int8 path that runs this layer on this CPU (absent ones are skipped); with
    `signed`, also oneDNN's GEMM given signed activation codes (see `U8_ZERO`: on the AMD
    EPYC this was measured on, seconds per call)."""
    w, b = lin.weight.detach(), lin.bias.detach()
    act_scale = float(x.abs().max()) / 127
    mod = W8A8Linear.from_linear(lin, act_scale)
    qw, ws = mod.qweight, mod.weight_scale
    runs: dict[str, Callable[[], Any]] = {"fp32": lambda: F.linear(x, w, b)}
    dyn = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, torch.qint8)
    runs["pytorch dynamic int8 (fbgemm)"] = lambda: dyn(x)
    fbgemm = build_kernel("fbgemm", mod)
    if fbgemm is not None:
        runs["fbgemm static (q/dq fp32 op)"] = lambda: fbgemm(x)
    on = prepacked_weight(mod, "onednn")
    runs["onednn dynamic int8"] = lambda: torch.ops.quantized.linear_dynamic(x, on)
    auto = fastest_kernel(lin.in_features, lin.out_features)
    runs[f"mmcompress W8A8Linear (auto: {auto})"] = lambda: mod(x)
    smooth = torch.rand(lin.in_features) + 0.5
    smoothed = W8A8Linear.from_linear(lin, act_scale, smooth)
    runs["  same, with smoothing scales"] = lambda: smoothed(x)
    for name in ("onednn", "fbgemm"):
        forced = copy.deepcopy(mod)
        forced.kernel = name
        if name != auto and forced._kernel() is not None:
            runs[f"  same, kernel {name}"] = lambda f=forced: f(x)
    kernel = build_kernel("onednn", mod)
    if kernel is not None:
        qx = quantize_activation(x, kernel.x_scale, unsigned=True)
        runs["  onednn qlinear GEMM only"] = lambda: kernel.gemm(qx)
        if signed:
            qs = quantize_activation(x, kernel.x_scale)
            runs["  same GEMM, signed activations"] = lambda: kernel.gemm(qs, 0)
        runs["  activation quantize only"] = lambda: quantize_activation(x, kernel.x_scale,
                                                                        unsigned=True)
        wt, scale = qw.t().contiguous(), ws * act_scale
        x2 = x.reshape(-1, x.shape[-1])

        def int_mm() -> torch.Tensor:
            acc = torch._int_mm(quantize_activation(x2, kernel.x_scale), wt)
            return (acc * scale + b).view(*x.shape[:-1], -1)

        runs["torch._int_mm + rescale"] = int_mm
    ref = mod.reference_forward
    runs["dequantize reference (fallback)"] = lambda: ref(x)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        ao = nn.Sequential(copy.deepcopy(lin))
        quantize_(ao, Int8DynamicActivationInt8WeightConfig())
        runs["torchao int8 dyn-act/int8-weight"] = lambda: ao(x)
    except Exception as exc:  # noqa: BLE001 - absent or incompatible torchao is reported
        print(f"(torchao skipped: {type(exc).__name__}: {str(exc)[:80]})")
    return runs


def bench_layers(repeats: int, signed: bool = False) -> dict[str, Any]:
    out = {}
    for name, (tokens, cin, cout) in SHAPES.items():
        torch.manual_seed(0)
        lin = nn.Linear(cin, cout)
        x = torch.randn(8, tokens // 8, cin)
        runs = layer_candidates(x, lin, signed)
        with torch.inference_mode():
            ref = lin(x)
            cos = {k: _cos(r(), ref) if "only" not in k else None for k, r in runs.items()}
        res = interleaved(runs, repeats)
        for k in res:
            res[k]["cosine"] = cos[k]
        out[name] = res
        print(
            f"\n{name} (tokens {tokens}): fp32 median {res['fp32']['median_ms']:.3f} ms, "
            f"min {res['fp32']['min_ms']:.3f} ms"
        )
        print(f"  {'candidate':40s} {'speedup':>8s} {'(min)':>7s} {'min ms':>8s} {'cosine':>8s}")
        for k, r in res.items():
            c = "" if r["cosine"] is None else f"{r['cosine']:.5f}"
            print(
                f"  {k:40s} {r['speedup']:7.2f}x {r['speedup_min']:6.2f}x "
                f"{r['min_ms']:8.3f} {c:>8s}"
            )
    return out


def _calibration_data(size: int, n: int = 16):
    from mmcompress.data import Dataset

    rng = np.random.default_rng(0)
    return Dataset(
        "random",
        "classification",
        images=[rng.random((size, size, 3), dtype=np.float32) for _ in range(n)],
        labels=[i % 4 for i in range(n)],
        class_names=["dog", "cat", "small bird", "red car"],
        templates=["a photo of a {}.", "a blurry photo of the {} on the grass."],
    )


def smoothquant_clip(adapter, alpha: float | None, observer: str) -> tuple[Any, float]:
    """SmoothQuant W8A8 of `adapter` (in place); returns it and the seconds it took."""
    from .stages import apply_stages

    cfg = {"method": "smoothquant", "alpha": alpha, "activations": {"observer": observer}}
    _, seconds = apply_stages(adapter, [{"quantize": cfg}], _calibration_data(adapter.image_size),
                              {"samples": 16, "batch_size": 8})
    return adapter, seconds


def _ort_dynamic_int8(fp32, batch: int, threads: int, workdir: Path) -> Any:
    """ONNX Runtime dynamic int8 of both towers (the benchmark suite's peer), or None."""
    from benchmarks.onnx_peers import available, build_ort_dynamic_int8
    from benchmarks.variants import BuildContext, capture_tower_inputs

    if available() is not None:
        print(f"(ONNX Runtime skipped: {available()})")
        return None
    ctx = BuildContext(workdir, threads, batch, _calibration_data(fp32.image_size, 2),
                       samples=capture_tower_inputs(fp32, batch))
    return build_ort_dynamic_int8(fp32, ctx).adapter


def bench_towers(repeats: int, batch: int, threads: int, ort: bool) -> dict[str, Any]:
    import mmcompress
    from mmcompress.adapters.random_specs import random_model
    from mmcompress.io.checkpoint import save_checkpoint

    fp32 = random_model("clip-vit-base-patch32")
    dyn = copy.deepcopy(fp32)
    torch.ao.quantization.quantize_dynamic(dyn.model, {nn.Linear}, torch.qint8, inplace=True)
    w8a8, calib_s = smoothquant_clip(copy.deepcopy(fp32), 0.5, "minmax")
    variants = {"fp32": fp32, "pytorch dynamic int8": dyn}
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(w8a8, Path(tmp), "random:clip-vit-base-patch32", [])
        start = time.perf_counter()
        variants["mmcompress W8A8 (loaded)"] = mmcompress.load(tmp)
        load_s = time.perf_counter() - start
        if ort:
            peer = _ort_dynamic_int8(fp32, batch, threads, Path(tmp))
            if peer is not None:
                variants["onnxruntime dynamic int8"] = peer
        out: dict[str, Any] = {"smoothquant_seconds": calib_s, "load_seconds": load_s}
        for tower in ("image", "text"):
            out[tower] = _bench_tower(variants, tower, batch, repeats, out)
    return out


def _bench_tower(variants: dict[str, Any], tower: str, batch: int, repeats: int,
                 out: dict[str, Any]) -> dict[str, Any]:
    runs = {k: a.latency_inputs(batch)[tower] for k, a in variants.items()}
    start = time.perf_counter()
    with torch.inference_mode():
        first = runs["mmcompress W8A8 (loaded)"]()  # packs every weight once
    out[f"first_call_seconds_{tower}"] = time.perf_counter() - start
    with torch.inference_mode():
        ref = runs["fp32"]()
        cos = {k: float(F.cosine_similarity(r(), ref).mean()) for k, r in runs.items()}
        assert torch.equal(first, runs["mmcompress W8A8 (loaded)"]())
    res = interleaved(runs, repeats, warmup=2)
    for k in res:
        res[k]["cosine"] = cos[k]
    print(f"\n{tower} tower, batch {batch}: fp32 median {res['fp32']['median_ms']:.1f} ms")
    for k, r in res.items():
        print(f"  {k:28s} {r['speedup']:5.2f}x (min {r['speedup_min']:5.2f}x) "
              f"median {r['median_ms']:8.1f} ms  cosine {r['cosine']:.4f}")
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_kernels", description=__doc__)
    p.add_argument("out", type=Path, help="JSON file to write")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30, help="timed rounds per layer")
    p.add_argument("--tower-repeats", type=int, default=10, help="timed rounds per tower")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ort", action="store_true", help="also ONNX Runtime dynamic int8 towers")
    p.add_argument("--omp-wait-policy", choices=["passive", "default"], default="passive")
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--skip-towers", action="store_true")
    p.add_argument("--signed", action="store_true", help="also time oneDNN's GEMM on signed "
                   "activation codes (seconds per call where oneDNN has no fast path for them: "
                   "use few --repeats)")
    args = p.parse_args(argv)
    if args.omp_wait_policy == "passive" and os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        # OpenMP reads the policy once, when it starts: set it and start afresh
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        cmd = [sys.executable, "-m", "benchmarks.int8_kernels", *(argv or sys.argv[1:])]
        os.execve(sys.executable, cmd, env)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "torch": torch.__version__, "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average_start": list(os.getloadavg())}
    if not args.skip_layers:
        result["layers"] = bench_layers(args.repeats, args.signed)
    if not args.skip_towers:
        result["towers"] = bench_towers(args.tower_repeats, args.batch, args.threads, args.ort)
    result["load_average_end"] = list(os.getloadavg())
    store(args.out, result)
    print(f"\nload average {result['load_average_start']} -> {result['load_average_end']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
