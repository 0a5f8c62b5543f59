"""Split STS-B train into calibration pairs and held-out pairs (other STS data than dev).

``python -m benchmarks.sts_heldout OUTDIR`` writes ``OUTDIR/sts-calib.csv`` (three pairs of
every four) and ``OUTDIR/sts-heldout.csv`` (every fourth pair, 1,437 pairs; all genres, since
the file is ordered by genre), in the STS-B tab-separated layout. Benchmarks that take data
paths (``lowrank --minilm-eval/--minilm-calib``, ``prune_unstructured --eval/--calib``) then
calibrate on one and evaluate on the other, so a figure can be checked beyond STS-B dev.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmcompress.io.atomic import write_text_atomic

from .configs import DATA_ROOT


def split(out: Path, every: int = 4) -> tuple[Path, Path]:
    """Write the calibration and held-out files; returns their paths."""
    lines = (DATA_ROOT / "stsb" / "sts-train.csv").read_text(encoding="utf-8").splitlines()
    held = [line for i, line in enumerate(lines, 1) if i % every == 0]
    calib = [line for i, line in enumerate(lines, 1) if i % every != 0]
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "sts-calib.csv", out / "sts-heldout.csv"
    for path, rows in zip(paths, (calib, held), strict=True):
        write_text_atomic(path, "\n".join(rows) + "\n")
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.sts_heldout OUTDIR")
    for p in split(Path(sys.argv[1])):
        print(p)
