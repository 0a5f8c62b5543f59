"""Wall time and peak memory of one compression run, in a fresh process.

``python -m benchmarks.compression_cost [--model random:clip-vit-base-patch32] [--method gptq]
[--bits 4] [--group-size 128] [--samples 128] [--threads 2]``

Peak memory is the process's high-water RSS (``VmHWM``) above what it held before the model
was built, compared with the fp32 model's own size (its parameters and buffers). Calibration
data: the built-in demo images and prompts (the weights are random; only the cost matters).
Writes ``benchmarks/results/compression_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmcompress import compress
from mmcompress.evaluation.memory_probe import import_model_code, max_rss_mb
from mmcompress.model_specs import load_model

from .results_file import store

RESULTS = Path(__file__).resolve().parent / "results" / "compression_cost.json"


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compression_cost")
    p.add_argument("--model", default="random:clip-vit-base-patch32")
    p.add_argument("--method", default="gptq")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import_model_code()
    baseline = max_rss_mb()
    adapter = load_model(args.model, progress=False)
    fp32_mb = model_bytes(adapter.model) / 2**20
    recipe = {
        "calibration": {"samples": args.samples, "batch_size": 16},
        "evaluate": {"metrics": ["size_bytes"], "max_samples": 8},
        "stages": [{"quantize": {"method": args.method, "bits": args.bits,
                                 "group_size": args.group_size}}],
    }
    start = time.perf_counter()
    result = compress(adapter, recipe, data="demo", progress=True)
    wall = time.perf_counter() - start
    stage_s = sum(s["seconds"] for s in result.report["stages"])
    peak = max_rss_mb() - baseline
    row = {
        "model": args.model, "method": args.method, "bits": args.bits,
        "group_size": args.group_size, "calibration_samples": args.samples,
        "threads": args.threads, "stage_seconds": round(stage_s, 1),
        "compress_seconds": round(wall, 1), "fp32_model_mb": round(fp32_mb, 1),
        "peak_extra_rss_mb": round(peak, 1), "peak_over_model": round(peak / fp32_mb, 3),
    }
    print(json.dumps(row, indent=1))
    store(RESULTS, row)


if __name__ == "__main__":
    main()
