"""Fusion benchmark: ``python -m benchmarks.fusion [--out JSON] [--doc MD] [--kinds ...]``.

For each built-in fusion classifier (early, late, hybrid; trained on first use, cached):

- accuracy (as given, all modalities, each one missing, each one alone), size and latency
  before and after int8 RTN, int4 (RTN group 32 and GPTQ per channel) and 50% structured
  pruning (heads, MLP neurons, conv channels; no fine-tuning) on every tower;
- per-modality sensitivity: the accuracy drop when one tower alone is quantized (RTN 4/3/2 bits);
- budgeted vs uniform widths at equal size: uniform = one width (the widest whose model is at
  most 1/4 of fp32, and 3 bits); budgeted = `budget: {size_ratio: that size}`, widths
  2-8 chosen per layer from sensitivity measured on the *training* split. Both are scored on
  `WIDE_SEEDS` pairings of the held-out items (2,000 examples): near-lossless widths differ by
  a few examples, which one pairing of 500 cannot resolve.

Evaluation uses the held-out split (data spec ``trimodal``); calibration and the budget's
sensitivity use ``trimodal-train``. Writes JSON, then the Markdown page docs/fusion.md
(rendered by `benchmarks.fusion_page`, which ``--render`` alone reruns), and prints the page.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmcompress.data import Dataset, load_data
from mmcompress.data.trimodal import build_split
from mmcompress.evaluation.config import METRICS, EvaluateConfig
from mmcompress.evaluation.evaluate import evaluate_adapter, saved_size_bytes
from mmcompress.evaluation.multimodal import complete_examples
from mmcompress.inspect_model import sensitivity
from mmcompress.model_specs import load_model
from mmcompress.models.fusion import FUSIONS as KINDS
from mmcompress.models.fusion import MODALITIES
from mmcompress.quantization.grid import QuantGrid

from . import fusion_page
from .results_file import load, store
from .stages import apply_stages
from .stats import paired_bootstrap

RECIPES: dict[str, list[dict]] = {
    "int8": [{"quantize": {"method": "rtn", "bits": 8}}],
    "int4 g32": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}],
    "int4 gptq": [{"quantize": {"method": "gptq", "bits": 4}}],
    "prune 50%": [{"prune": {"method": "structured", "heads": 0.5, "neurons": 0.5,
                             "channels": 0.5}}],
}
ACCURACY = [m for m in METRICS if m.startswith("top1")]
EVAL = EvaluateConfig(metrics=[*ACCURACY, "size_bytes", "params", "fidelity_cosine",
                               "latency_ms_image", "latency_ms_text", "latency_ms_audio",
                               "latency_ms_model"],
                      latency_batch_size=8, latency_repeats=30)
BUDGET_WIDTHS = [2, 3, 4, 6, 8]
WIDE_SEEDS = (1, 2, 3, 4)  # 1 is the standard evaluation split


def wide_eval() -> Dataset:
    """The held-out items (speaker, images, phrasings) paired once per `WIDE_SEEDS` seed."""
    parts = [build_split("eval", seed=s).data for s in WIDE_SEEDS]
    return Dataset(name=f"{parts[0].name}, {len(parts)} pairings", task="multimodal",
                   images=[x for p in parts for x in p.images],
                   texts=[x for p in parts for x in p.texts],
                   audio=[x for p in parts for x in p.audio],
                   labels=[x for p in parts for x in p.labels], class_names=parts[0].class_names)


def compared_widths(quarter: int) -> list[int]:
    """Uniform widths compared: the widest within 1/4 of fp32, and 3 bits."""
    return sorted({quarter, 3}, reverse=True)
CALIBRATION = {"samples": 256, "batch_size": 32, "seed": 0}


def compressed(adapter, stages: list[dict], calib,
               teacher=None) -> tuple[Any, list[dict], float]:
    """A copy of `adapter` with `stages` applied (as `mmcompress.compress` runs them; a
    `distill` stage learns from `teacher`, by default `adapter` as given)."""
    out = copy.deepcopy(adapter)
    summaries, seconds = apply_stages(out, stages, calib, CALIBRATION, original=teacher)
    return out, summaries, seconds


def no_larger(size: int, fp32_bytes: int, ratio: float,
              build: Callable[[float], tuple[Any, Any]]) -> tuple[Any, Any, float]:
    """`build(ratio)` → (model, info), the asked ratio of fp32 lowered until the saved file is
    at most `size` bytes (a method's own size prediction leaves out the file's header); the
    model, its info and the ratio it was built with.

    Raises:
        RuntimeError: if five tries leave the file larger than `size` (a comparison at equal
            size would not be one).
    """
    got = None
    for _ in range(5):
        if ratio <= 0:
            break
        asked = round(ratio, 4)
        model, info = build(asked)
        got = saved_size_bytes(model.model)
        if got <= size:
            return model, info, asked
        ratio -= (got - size) / fp32_bytes + 2e-4
    raise RuntimeError(f"no model of at most {size} bytes: the last asked ratio gave {got} "
                       "bytes")


def recipe_rows(adapter, data, calib, base) -> dict[str, dict]:
    rows = {}
    for name, stages in RECIPES.items():
        model, summaries, seconds = compressed(adapter, stages, calib)
        after = evaluate_adapter(model, data, EVAL, reference=base.embeddings).metrics
        rows[name] = {"metrics": after, "seconds": round(seconds, 2), "summaries": summaries}
    return rows


def modality_sensitivity(adapter, data) -> dict[str, dict]:
    """Per bit width: per tower, the accuracy drops with that tower alone quantized."""
    return {str(b): sensitivity(adapter, data, QuantGrid(b, None), len(data), layers=False,
                                progress=False)["towers"] for b in (4, 3, 2)}


def budget_vs_uniform(adapter, data, calib, base, fp32_bytes: int) -> dict[str, dict]:
    """At the size of uniform int-b (b: the widest within 1/4 of fp32, then 3 bits):
    uniform b bits vs the sensitivity budget, whose model is kept no larger than uniform's."""
    sizes, uniform = {}, {}
    for bits in range(8, 1, -1):
        model, _, _ = compressed(adapter, [{"quantize": {"method": "rtn", "bits": bits}}], calib)
        sizes[bits] = (saved_size_bytes(model.model), model)
    quarter = max(b for b, (size, _) in sizes.items() if size <= 0.25 * fp32_bytes)
    for bits in compared_widths(quarter):
        uniform[bits] = evaluate_adapter(sizes[bits][1], data, _quality_and_size(),
                                         base.embeddings)
    out = {}
    for bits in compared_widths(quarter):
        size = uniform[bits].metrics["size_bytes"]

        def build(ratio: float) -> tuple[Any, tuple[list[dict], float]]:
            stages = [{"quantize": {"method": "rtn", "budget": {
                "size_ratio": ratio, "bits": BUDGET_WIDTHS, "samples": 32}}}]
            model, summaries, seconds = compressed(adapter, stages, calib)
            return model, (summaries, seconds)

        model, (summaries, seconds), target = no_larger(size, fp32_bytes, size / fp32_bytes,
                                                        build)
        budgeted = evaluate_adapter(model, data, _quality_and_size(), base.embeddings)
        out[str(bits)] = {"quarter": bits == quarter,
                          "uniform": {"bits": bits, "metrics": uniform[bits].metrics},
                          "budgeted": {"metrics": budgeted.metrics, "summary": summaries[0],
                                       "size_ratio_asked": round(target, 4),
                                       "seconds": round(seconds, 1)},
                          "gain_ci95": gain_intervals(budgeted, uniform[bits], data)}
    return out


def gain_intervals(first, second, data: Dataset) -> dict[str, list[float]]:
    """95% paired bootstrap intervals of `first`'s accuracy minus `second`'s (evaluations of
    `data`): as given, and on the complete examples (``top1_all``)."""
    labels = torch.as_tensor(data.labels)
    right = [e.embeddings["logits"].argmax(1) == labels for e in (first, second)]
    gain = (right[0].double() - right[1].double())
    complete = torch.as_tensor(complete_examples(data))
    return {key: paired_bootstrap(len(g), lambda i, g=g: float(g[i].mean()))
            for key, g in (("top1", gain), ("top1_all", gain[complete]))}


def budget_section(adapter, calib, wide: Dataset) -> dict[str, Any]:
    """fp32 on the wide evaluation (``budget_fp32``) and `budget_vs_uniform` (``budget``)."""
    wide_base = evaluate_adapter(adapter, wide, _quality_and_size())
    return {"budget_fp32": wide_base.metrics,
            "budget": budget_vs_uniform(adapter, wide, calib, wide_base,
                                        saved_size_bytes(adapter.model))}


def _load_results(path: Path) -> dict[str, Any]:
    """Results so far: runs of some kinds update the others' (one kind fits a ten-minute slot)."""
    return load(path, {"kinds": {}})


def _store_results(path: Path, results: dict[str, Any]) -> None:
    results["kinds"] = {k: results["kinds"][k] for k in KINDS if k in results["kinds"]}
    store(path, results)


def _quality_and_size() -> EvaluateConfig:
    return EvaluateConfig(metrics=[*ACCURACY, "size_bytes", "fidelity_cosine"])


def run_kind(kind: str, retrain: bool) -> dict[str, Any]:
    start = time.perf_counter()
    if retrain:  # train into an empty cache, to time the training
        with tempfile.TemporaryDirectory() as cache:
            os.environ["MMCOMPRESS_CACHE"], before = cache, os.environ.get("MMCOMPRESS_CACHE")
            try:
                adapter = load_model(f"fusion-{kind}", progress=False)
            finally:
                os.environ.pop("MMCOMPRESS_CACHE")
                if before is not None:
                    os.environ["MMCOMPRESS_CACHE"] = before
    else:
        adapter = load_model(f"fusion-{kind}", progress=False)
    loaded = time.perf_counter() - start
    data, calib = load_data("trimodal"), load_data("trimodal-train")
    base = evaluate_adapter(adapter, data, EVAL)
    print(f"[{kind}] fp32 {base.metrics}", flush=True)
    key = "train_seconds" if retrain else "load_seconds"
    result = {key: round(loaded, 1), "fp32": base.metrics,
              "recipes": recipe_rows(adapter, data, calib, base),
              "sensitivity": modality_sensitivity(adapter, data),
              **budget_section(adapter, calib, wide_eval())}
    weights = getattr(adapter.model.fusion, "modality_weights", None)
    if weights is not None:
        result["modality_weights"] = dict(zip(MODALITIES, [round(w, 4) for w in weights.tolist()],
                                              strict=True))
    result["load_average_end"] = [round(v, 1) for v in os.getloadavg()]
    print(f"[{kind}] done in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def budget_only(kinds: list[str], out: Path) -> None:
    """Budgeted vs uniform widths alone (as in `run_kind`), with the budget's accuracy gain
    over uniform and its 95% paired bootstrap interval on the 2,000 examples."""
    calib, wide = load_data("trimodal-train"), wide_eval()
    results = _load_results(out)
    results.update({"command": f"python -m benchmarks.fusion --budget-only {out} --kinds KIND",
                    "data": wide.name})
    for kind in kinds:
        section = budget_section(load_model(f"fusion-{kind}", progress=False), calib, wide)
        results["kinds"][kind] = section
        for bits, b in section["budget"].items():
            u, g = b["uniform"]["metrics"], b["budgeted"]["metrics"]
            print(f"[{kind}] int{bits}{' (1/4 of fp32)' if b['quarter'] else ''}: budget − "
                  f"uniform top1_all {g['top1_all'] - u['top1_all']:+.4f} "
                  f"{b['gain_ci95']['top1_all']}, as given {g['top1'] - u['top1']:+.4f} "
                  f"{b['gain_ci95']['top1']}", flush=True)
    _store_results(out, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fusion.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/fusion.md"))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--retrain", action="store_true",
                        help="train each model afresh (in a temporary cache) and time it")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the Markdown page from the JSON")
    parser.add_argument("--budget-only", type=Path, default=None, metavar="JSON",
                        help="only the budgeted-vs-uniform comparison, with paired intervals, "
                        "on the cached models; written to JSON")
    args = parser.parse_args()
    if args.render:
        args.doc.write_text(fusion_page.render(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(1)
    if args.budget_only is not None:
        budget_only(args.kinds, args.budget_only)
        return
    data = load_data("trimodal")
    results = _load_results(args.out)
    results.update({
        "command": "python -m benchmarks.fusion --retrain --kinds KIND (once per kind)",
        "data": data.name,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread",
    })
    for kind in args.kinds:
        results["kinds"][kind] = run_kind(kind, args.retrain)
    _store_results(args.out, results)
    page = fusion_page.render(results)
    args.doc.write_text(page)
    print(page)


if __name__ == "__main__":
    main()
