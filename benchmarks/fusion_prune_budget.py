"""Fusion classifiers at 1/4 of fp32 by structured pruning: the parameter budget spread by
sensitivity vs the same ratio in every tower, at equal size.

``python -m benchmarks.fusion_prune_budget [--out JSON] [--kinds early late hybrid]``

- Uniform: ``scope: tower``, the same fraction f of every layer's heads, MLP neurons and conv
  channels in every tower (of each layer's four heads at most three); f is the smallest whole
  percent whose saved model is at most 1/4 of fp32. Both per-tower importances are run
  (activation, the default, and Taylor).
- Budgeted: ``scope: global`` with ``params_ratio`` = uniform's share of parameters left: one
  Taylor ranking (the relative output change when a unit goes) over every tower's units, each
  layer losing at most 95% of its units; tightened until its file is no larger than uniform's.
- Each is scored as pruned (one shot) and after recovery: logits distillation from the fp32
  model (the recipe's ``distill`` stage, 3 epochs on the training split).

Calibration and recovery use the training split (``trimodal-train``); every score is on the
2,000 held-out examples of `benchmarks.fusion.wide_eval`, with 95% paired bootstrap intervals
of budget − uniform. Prints a line per model and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from mmcompress.data import load_data
from mmcompress.evaluation.evaluate import count_params, evaluate_adapter, saved_size_bytes
from mmcompress.model_specs import load_model
from mmcompress.models.fusion import FUSIONS as KINDS

from .fusion import _quality_and_size, compressed, gain_intervals, no_larger, wide_eval
from .results_file import load, store

OUT = Path(__file__).parent / "results" / "fusion_prune_budget.json"
TARGET = 0.25  # of the fp32 file
CAP = 0.95  # the most of one layer's units the budget may remove
RECOVERY = {"distill": {"method": "kd", "epochs": 3, "batch_size": 64, "lr": 1e-3,
                        "evaluate": False}}
UNIFORM = ("activation", "taylor")
KIND_KEYS = ("heads", "neurons", "channels")


def uniform_stage(f: float, importance: str) -> dict:
    """f of every layer's units; of each attention layer's four heads, at most three."""
    return {"prune": {"method": "structured", "scope": "tower", "importance": importance,
                      "heads": min(f, 0.75), "neurons": f, "channels": f}}


def uniform_fraction(dense, calib, fp32_bytes: int) -> float:
    """The smallest whole-percent f whose uniformly pruned file is at most TARGET of fp32
    (sizes depend on f only, so magnitude scores find it fast)."""
    def fits(pct: int) -> bool:
        model, _, _ = compressed(dense, [uniform_stage(pct / 100, "magnitude")], calib)
        return saved_size_bytes(model.model) <= TARGET * fp32_bytes

    low, high = 50, 95
    if not fits(high):
        raise SystemExit(f"uniform pruning of {high}% does not reach {TARGET} of fp32")
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid + 1, high)
    return low / 100


def budgeted(dense, calib, ratio: float, size: int, fp32_bytes: int) -> tuple[Any, dict]:
    """Global Taylor pruning to `ratio` of the parameters, no larger a file than `size`."""
    def build(asked: float) -> tuple[Any, dict]:
        stage = {"prune": {"method": "structured", "scope": "global", "importance": "taylor",
                           "params_ratio": asked, **dict.fromkeys(KIND_KEYS, CAP)}}
        model, summaries, _ = compressed(dense, [stage], calib)
        return model, summaries[0]

    model, summary, asked = no_larger(size, fp32_bytes, ratio, build)
    return model, {"params_ratio_asked": asked, "summary": summary}


def scored(model, data, base) -> tuple[Any, dict]:
    e = evaluate_adapter(model, data, _quality_and_size(), base.embeddings)
    return e, {**e.metrics, "params": count_params(model.model)}


def run_kind(kind: str, calib, data) -> dict[str, Any]:
    start = time.perf_counter()
    dense = load_model(f"fusion-{kind}", progress=False)
    fp32_bytes = saved_size_bytes(dense.model)
    base = evaluate_adapter(dense, data, _quality_and_size())
    f = uniform_fraction(dense, calib, fp32_bytes)
    models: dict[str, Any] = {}
    out: dict[str, Any] = {"fp32": base.metrics, "fp32_bytes": fp32_bytes, "fraction": f,
                           "runs": {}}
    for importance in UNIFORM:
        models[f"uniform {importance}"] = compressed(dense, [uniform_stage(f, importance)],
                                                     calib)[0]
    size = saved_size_bytes(models["uniform activation"].model)
    ratio = count_params(models["uniform activation"].model) / count_params(dense.model)
    models["budget"], out["budget"] = budgeted(dense, calib, ratio, size, fp32_bytes)
    evals: dict[str, dict[str, Any]] = {"one shot": {}, "recovered": {}}
    for name, model in models.items():
        evals["one shot"][name], one = scored(model, data, base)
        recovered, _, seconds = compressed(model, [RECOVERY], calib, teacher=dense)
        evals["recovered"][name], rec = scored(recovered, data, base)
        out["runs"][name] = {"one shot": one, "recovered": rec,
                             "recovery_seconds": round(seconds, 1)}
        print(f"[{kind}] {name}: size {one['size_bytes'] / fp32_bytes:.3f}, top1 "
              f"{one['top1']:.4f} one shot, {rec['top1']:.4f} recovered", flush=True)
    out["gain_ci95"] = {stage: {u: gain_intervals(e["budget"], e[f"uniform {u}"], data)
                                for u in UNIFORM} for stage, e in evals.items()}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    calib, data = load_data("trimodal-train"), wide_eval()
    results = load(args.out, {"kinds": {}})
    results.update({"command": "python -m benchmarks.fusion_prune_budget --kinds KIND",
                    "data": data.name, "calibration": calib.name, "target": TARGET,
                    "cap": CAP, "recovery": RECOVERY})
    for kind in args.kinds:
        results["kinds"][kind] = run_kind(kind, calib, data)
        results["kinds"] = {k: results["kinds"][k] for k in KINDS if k in results["kinds"]}
        store(args.out, results)


if __name__ == "__main__":
    main()
