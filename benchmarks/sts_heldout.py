"""Split STS-B train into calibration pairs and held-out pairs (other STS data than dev).

``python -m benchmarks.sts_heldout OUTDIR`` writes ``OUTDIR/sts-calib.csv`` (three pairs of
every four) and ``OUTDIR/sts-heldout.csv`` (every fourth pair, 1,437 pairs; all genres, since
the file is ordered by genre), in the STS-B tab-separated layout. Benchmarks that take data
paths (``lowrank --minilm-eval/--minilm-calib``, ``prune_unstructured --eval/--calib``) then
calibrate on one and evaluate on the other, so a figure can be checked beyond STS-B dev.
``--fold K`` (0-3) holds out the pairs whose 1-based line number leaves remainder K instead
(fold 0 is the split above), so the four folds together evaluate every train pair once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcompress.io.atomic import write_text_atomic

from .configs import DATA_ROOT


def split(out: Path, every: int = 4, fold: int = 0) -> tuple[Path, Path]:
    """Write the calibration and held-out files of `fold`; returns their paths."""
    if not 0 <= fold < every:
        raise ValueError(f"fold must be in [0, {every}), got {fold}")
    text = (DATA_ROOT / "stsb" / "sts-train.csv").read_text(encoding="utf-8")
    # lines end at "\n" only, as the STS reader splits them (not at U+2028, which
    # `str.splitlines` also breaks at)
    lines = [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]
    held = [line for i, line in enumerate(lines, 1) if i % every == fold]
    calib = [line for i, line in enumerate(lines, 1) if i % every != fold]
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "sts-calib.csv", out / "sts-heldout.csv"
    for path, rows in zip(paths, (calib, held), strict=True):
        write_text_atomic(path, "\n".join(rows) + "\n")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the two files into")
    parser.add_argument("--fold", type=int, default=0, choices=range(4),
                        help="which quarter of STS-B train to hold out (default 0)")
    args = parser.parse_args()
    for p in split(args.out, fold=args.fold):
        print(p)
