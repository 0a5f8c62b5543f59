"""How the fusion training settings were chosen, without the evaluation speaker:
``python -m benchmarks.fusion_cv [--kinds late early] [--smoothing 0 0.1] [--out JSON]``.

For each fusion kind and label smoothing, `FOLDS` twins are trained, each without one training
speaker and a quarter of the training images, and scored on them (as given and with each
modality dropped). Accuracy is pooled over the folds: of the fused scores with equal modality
weights, and (late, hybrid) with the weights fitted on those same scores — what the built-in
models use. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from mmcompress.adapters.fusion import FusionAdapter
from mmcompress.data.trimodal import FOLDS, audio_source
from mmcompress.models import fusion_training as ft
from mmcompress.models.fusion import FUSIONS, FusionClassifier
from mmcompress.report import markdown_table

from .results_file import store


def run(kind: str, smoothing: float, source: str) -> dict[str, Any]:
    torch.manual_seed(ft.TRAINING["seed"])  # the initial weights of the built-in models
    adapter = FusionAdapter(FusionClassifier(fusion=kind))
    start = time.perf_counter()
    scores = ft.cross_validate(adapter, source, progress=False,
                               augment={"label_smoothing": smoothing})
    row: dict[str, Any] = {"kind": kind, "label_smoothing": smoothing,
                           "equal_weights": scores.accuracy()}
    if scores.parts:
        weights = ft.fit_modality_weights(scores)
        row["weights"] = [round(w, 4) for w in weights.tolist()]
        row["fitted_weights"] = scores.accuracy(weights)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per run and weighting."""
    lines = []
    for r in rows:
        for name in ("equal_weights", "fitted_weights"):
            if name in r:
                weights = " / ".join(f"{w:.2f}" for w in r["weights"]) \
                    if name == "fitted_weights" else "1 / 1 / 1"
                lines.append([r["kind"], f"{r['label_smoothing']:g}", weights,
                              *(f"{v:.4f}" for v in r[name].values())])
    return markdown_table(["fusion", "label smoothing", "weights image / text / audio",
                           *ft.CONDITIONS], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["late", "early"],
                        choices=FUSIONS)
    parser.add_argument("--smoothing", nargs="+", type=float, default=[0.0, 0.1])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fusion_cv.json"))
    args = parser.parse_args()
    source = audio_source()
    rows = [run(k, s, source) for k in args.kinds for s in args.smoothing]
    print(table(rows))
    store(args.out, {"command": "python -m benchmarks.fusion_cv", "audio": source,
                     "folds": FOLDS, "rows": rows})


if __name__ == "__main__":
    main()
