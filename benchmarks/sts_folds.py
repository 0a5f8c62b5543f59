"""The unstructured-pruning losses of all four held-out quarters of STS-B train, side by side.

``python -m benchmarks.sts_folds [OUT.json] [FOLD0.json,FOLD1.json,...]`` reads
``results/prune_unstructured_heldout.json`` (fold 0) and
``results/prune_unstructured_heldout_fold{1,2,3}.json`` (or the result files named, one per
fold, in fold order), each written by

    python -m benchmarks.sts_heldout /tmp/stsK --fold K
    python -m benchmarks.prune_unstructured RESULT --methods magnitude,wanda,sparsegpt,admm \\
        --settings 0.6,2:4,0.7 --calib /tmp/stsK/sts-calib.csv --eval /tmp/stsK/sts-heldout.csv

and writes, for every (method, setting) measured in all four, each fold's loss, their mean and
how many folds meet the issue's limit (0.008 at 60% and 2:4, 0.02 at 70%). One quarter's
interval is about ±0.008 wide; the four together evaluate every train pair once, each by a
model calibrated on the other three quarters.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .results_file import load, store

RESULTS = Path(__file__).resolve().parent / "results"
FOLDS = ["prune_unstructured_heldout.json"] + [
    f"prune_unstructured_heldout_fold{k}.json" for k in (1, 2, 3)]
LIMITS = {"0.6": 0.008, "2:4": 0.008, "0.7": 0.02}


def summary(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (method, setting) present in every fold, in the last fold's row order."""
    losses = [{(r["method"], r["setting"]): r["loss"] for r in f["rows"]} for f in folds]
    keys = [k for k in losses[-1] if all(k in fold for fold in losses)]
    out = []
    for method, setting in keys:
        per_fold = [fold[method, setting] for fold in losses]
        record = {"method": method, "setting": setting,
                  "loss_mean": sum(per_fold) / len(per_fold),
                  **{f"loss_fold{k}": v for k, v in enumerate(per_fold)}}
        if setting in LIMITS:
            record["folds_within_limit"] = sum(v <= LIMITS[setting] for v in per_fold)
        out.append(record)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Each method's loss on every held-out STS fold, "
                                "their mean and how many folds meet the issue's limits.")
    p.add_argument("out", nargs="?", type=Path, default=RESULTS / "prune_heldout_folds.json",
                   help="JSON written (default: %(default)s)")
    p.add_argument("folds", nargs="?", default=",".join(FOLDS),
                   help="comma-separated fold results in benchmarks/results (default: the "
                   "four prune_unstructured held-out files)")
    args = p.parse_args(argv)
    out, names = args.out, args.folds.split(",")
    missing = [name for name in names if not (RESULTS / name).is_file()]
    if missing:
        raise SystemExit(f"error: missing {', '.join(missing)}; run the folds first")
    folds = [load(RESULTS / name) for name in names]
    rows = summary(folds)
    print(f"{'method':<12} {'setting':>7} {'mean':>7}  per fold")
    for r in rows:
        per = " ".join(f"{r[f'loss_fold{k}']:.4f}" for k in range(len(folds)))
        print(f"{r['method']:<12} {r['setting']:>7} {r['loss_mean']:>7.4f}  {per}")
    store(out, {"folds": names, "limits": LIMITS,
                "dense": [f["dense"]["stsb_spearman"] for f in folds], "rows": rows})


if __name__ == "__main__":
    main()
