"""Layer-wise reconstruction error of the calibrated pruning methods on one MiniLM block.

``python -m benchmarks.prune_layer_error [--block 2] [--samples 2048] [--settings 0.6,2:4,0.7]``

Collects the Gram matrix H = 2·XᵀX/n of every linear layer of one encoder block from the
unpruned model on STS-B train (2,048 sentences), then prunes each layer alone with each
method's mask and reports the relative error tr((W − Ŵ)H(W − Ŵ)ᵀ) / tr(WHWᵀ): the objective
Wanda, SparseGPT and ADMM all approximate. Every mask is followed by the same exact refit
(`refit_kept`), so the rows compare masks, not updates. No model is pruned end to end: see
``benchmarks.prune_unstructured`` for STS quality.
Writes ``benchmarks/results/prune_layer_error.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmcompress.calibration import HessianCollector, calibrate_layers
from mmcompress.data import load_data
from mmcompress.methods import StageContext
from mmcompress.model_specs import load_model
from mmcompress.recipe import CalibrationConfig
from mmcompress.sparsity import keep_mask, parse_pattern, sparsegpt_prune
from mmcompress.sparsity.admm import admm_prune
from mmcompress.sparsity.masks import NM
from mmcompress.sparsity.refit import refit_kept
from mmcompress.sparsity.swaps import refine_by_swaps

from .results_file import store

RESULTS = Path(__file__).resolve().parent / "results" / "prune_layer_error.json"
STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-train.csv"

# (weight, the layer's input statistics, sparsity, N:M) -> keep-mask
Mask = Callable[[torch.Tensor, HessianCollector, float, NM | None], torch.Tensor]


def _wanda(w: torch.Tensor, c: HessianCollector, sparsity: float, nm: NM | None) -> torch.Tensor:
    return keep_mask(w.abs() * c.norm, sparsity, nm, per_row=True)


MASKS: dict[str, Mask] = {
    "wanda-noswap": _wanda,
    "wanda": lambda w, c, s, nm: refine_by_swaps(w, _wanda(w, c, s, nm), c.hessian, nm)[0],
    "sparsegpt": lambda w, c, s, nm: sparsegpt_prune(w, c.hessian, s, nm, per_row=True)[1],
    "admm": lambda w, c, s, nm: admm_prune(
        w, c.hessian, s, None if nm is None else lambda scores: keep_mask(scores, s, nm))[1],
}


def relative_error(w: torch.Tensor, pruned: torch.Tensor, h: torch.Tensor) -> float:
    d, w, h = (w - pruned).double(), w.double(), h.double()
    return float(((d @ h) * d).sum() / ((w @ h) * w).sum())


def block_statistics(block: int, samples: int
                     ) -> dict[str, tuple[torch.Tensor, HessianCollector]]:
    """(weight, input statistics) of every linear layer of MiniLM's encoder block `block`."""
    adapter = load_model("minilm", progress=False)
    context = StageContext(data=load_data(str(STSB)), progress=False,
                           calibration=CalibrationConfig(samples=samples, batch_size=32))
    layers = {n: m for n, m in adapter.model.named_modules()
              if isinstance(m, torch.nn.Linear) and f".layer.{block}." in n}
    stats: dict[str, tuple[torch.Tensor, HessianCollector]] = {}

    def record(name: str, module: torch.nn.Module, collector: HessianCollector) -> None:
        stats[name] = (module.weight.detach().float().clone(), collector)

    calibrate_layers(adapter, dict(layers), context.calibration_data(adapter),
                     lambda n, m: HessianCollector(), record, "statistics", False)
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", type=int, default=2)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--settings", default="0.6,2:4,0.7")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    stats = block_statistics(a.block, a.samples)
    print(f"{'layer':<28} {'setting':>7} " + " ".join(f"{m:>13}" for m in MASKS), flush=True)
    rows = []
    for name, (w, collector) in stats.items():
        h = collector.hessian
        for setting in a.settings.split(","):
            nm = parse_pattern(setting) if ":" in setting else None
            sparsity = 1 - nm[0] / nm[1] if nm else float(setting)
            row = {"layer": name, "setting": setting, "seconds": {}}
            for method, mask in MASKS.items():
                start = time.perf_counter()
                keep = mask(w, collector, sparsity, nm)
                refit = refit_kept(w, keep, h) * keep
                row["seconds"][method] = round(time.perf_counter() - start, 2)
                row[method] = relative_error(w, refit, h)
            rows.append(row)
            short = name.split(f".layer.{a.block}.")[1]
            print(f"{short:<28} {setting:>7} "
                  + " ".join(f"{row[m]:>13.5f}" for m in MASKS), flush=True)
    store(a.out, {"model": "minilm", "calibration": "stsb-train", "block": a.block,
                  "samples": a.samples, "threads": a.threads, "refit": True, "rows": rows})


if __name__ == "__main__":
    main()
