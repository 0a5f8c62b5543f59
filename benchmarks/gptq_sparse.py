"""GPTQ after pruning, layer by layer, on one MiniLM block.

``python -m benchmarks.gptq_sparse [--block 2] [--samples 2048] [--sparsity 0.5]``

Collects the Gram matrix H = 2·XᵀX/n of every linear layer of one encoder block from the
unpruned model on STS-B train (as ``benchmarks.prune_layer_error``), prunes each layer with
Wanda's mask (|W|·‖x‖ per output row), then quantizes the kept weights three ways and reports
the relative output error tr((W − Ŵ)H(W − Ŵ)ᵀ) / tr(WHWᵀ) against the unpruned layer:
``rtn`` (round to nearest), ``gptq-unaware`` (GPTQ on the pruned matrix, its codes at pruned
positions then dropped, as before the mask was passed in) and ``gptq`` (pruned weights held at
zero, their updates compensated: what a quantize stage after a prune stage does now).
Writes ``benchmarks/results/gptq_sparse.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmcompress.quantization.gptq import gptq_quantize
from mmcompress.quantization.grid import QuantGrid, dequantize, fake_quantize
from mmcompress.sparsity import keep_mask

from .prune_layer_error import block_statistics, relative_error
from .results_file import store

RESULTS = Path(__file__).resolve().parent / "results" / "gptq_sparse.json"


def errors(w: torch.Tensor, h: torch.Tensor, keep: torch.Tensor, grid: QuantGrid
           ) -> dict[str, float]:
    """Relative output error of the pruned layer `w · keep`, and of each way of quantizing it."""
    pruned = w * keep

    def gptq(mask: torch.Tensor | None) -> torch.Tensor:
        codes, scale, zero = gptq_quantize(pruned, h, grid, keep=mask)
        return dequantize(codes, grid, scale, zero) * keep

    return {"pruned_fp32": relative_error(w, pruned, h),
            "rtn": relative_error(w, fake_quantize(pruned, grid) * keep, h),
            "gptq-unaware": relative_error(w, gptq(None), h),
            "gptq": relative_error(w, gptq(keep), h)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", type=int, default=2)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    grid = QuantGrid(a.bits, a.group_size)
    rows = []
    columns = ("pruned_fp32", "rtn", "gptq-unaware", "gptq")
    print(f"{'layer':<28} " + " ".join(f"{c:>13}" for c in columns), flush=True)
    for name, (w, stats) in block_statistics(a.block, a.samples).items():
        keep = keep_mask(w.abs() * stats.norm, a.sparsity, None, per_row=True)
        row = {"layer": name, **errors(w, stats.hessian, keep, grid)}
        rows.append(row)
        short = name.split(f".layer.{a.block}.")[1]
        print(f"{short:<28} " + " ".join(f"{row[c]:>13.5f}" for c in columns), flush=True)
    store(a.out, {"model": "minilm", "calibration": "stsb-train", "block": a.block,
                  "samples": a.samples, "sparsity": a.sparsity, "mask": "wanda",
                  "bits": a.bits, "group_size": a.group_size, "threads": a.threads,
                  "command": "python -m benchmarks.gptq_sparse", "rows": rows})


if __name__ == "__main__":
    main()
