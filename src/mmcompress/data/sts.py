"""STS-style TSV → sentence-pair similarity set (task ``sts``).

Two layouts, chosen from the file's first line:

- STS Benchmark: 7 or more tab-separated fields; fields 5, 6, 7 (1-based) are score, sentence 1,
  sentence 2 (later fields are ignored).
- Three fields: ``score, s1, s2`` or ``s1, s2, score``; the score side is the one that holds a
  number on the first line where exactly one side does, or the ``score`` column of a header line.

Fields are split on tabs only: STS sentences hold quote characters, so no CSV quoting applies.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import DataError
from ..shared_data import shared_data_dir
from . import register_data_spec, register_reader
from .dataset import Dataset

SUFFIXES = {".csv", ".tsv", ".txt"}
STSB_FIELDS = (4, 5, 6)  # 0-based score, sentence 1, sentence 2
SCORE_FIRST = (0, 1, 2)
SCORE_LAST = (2, 0, 1)


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, tab-separated fields) of every non-blank line. Lines end at
    ``\n`` (or ``\r\n``) only: `str.splitlines` also breaks at U+2028 and NEL, which a
    sentence may hold."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark goes
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [(n, line.split("\t")) for n, line in enumerate(lines, 1) if line.strip()]


def is_sts_file(path: Path) -> bool:
    """A .csv/.tsv file whose first line is tab-separated."""
    if not path.is_file() or path.suffix.lower() not in SUFFIXES:
        return False
    try:
        with path.open(encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return "\t" in first


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _layout(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[tuple[int, int, int], bool]:
    """(score, sentence 1, sentence 2) field indices, and whether the first line is a header."""
    number, fields = rows[0]
    if len(fields) >= 7:
        return STSB_FIELDS, False
    if len(fields) != 3:
        raise DataError(
            f"{path}, line {number}: {len(fields)} tab-separated fields; expected STS Benchmark "
            "(7 or more: score, sentence 1, sentence 2 in fields 5-7) or 3 (score, s1, s2 or "
            "s1, s2, score)"
        )
    names = [f.strip().lower() for f in fields]
    if "score" in names and names.index("score") in (0, 2):
        return (SCORE_FIRST if names[0] == "score" else SCORE_LAST), True
    for _, row in rows:
        if len(row) != 3:
            continue
        first, last = _number(row[0]) is not None, _number(row[2]) is not None
        if first != last:
            return (SCORE_FIRST if first else SCORE_LAST), False
    raise DataError(
        f"{path}: cannot tell which column holds the score (no line has a number in exactly "
        "one of the first and last fields); add a header line naming the 'score' column"
    )


def read_sts(path: Path) -> Dataset:
    """Read sentence pairs and gold scores; a malformed line raises `DataError` naming it."""
    rows = _lines(path)
    if not rows:
        raise DataError(f"{path} holds no sentence pairs")
    (score_at, a_at, b_at), header = _layout(path, rows)
    wanted = max(score_at, a_at, b_at) + 1
    three = wanted == 3
    texts, texts_b, scores = [], [], []
    for number, fields in rows[1:] if header else rows:
        if len(fields) < wanted or (three and len(fields) != 3):
            raise DataError(
                f"{path}, line {number}: {len(fields)} tab-separated fields, expected "
                f"{'3' if three else f'at least {wanted}'}"
            )
        score = _number(fields[score_at])
        if score is None or not math.isfinite(score):
            raise DataError(
                f"{path}, line {number}: score {fields[score_at]!r} (field {score_at + 1}) "
                "is not a finite number"
            )
        texts.append(fields[a_at].strip())
        texts_b.append(fields[b_at].strip())
        scores.append(score)
    if not scores:
        raise DataError(f"{path} holds no sentence pairs")
    return Dataset(name=path.stem, task="sts", texts=texts, texts_b=texts_b, scores=scores)


def stsb_dev() -> Dataset:
    """Data spec ``stsb-dev``: the STS Benchmark dev split from the shared data folder."""
    try:
        folder = shared_data_dir("stsb")
    except DataError as exc:
        raise DataError(f"data 'stsb-dev': {exc}; or pass an STS TSV as the data") from None
    return read_sts(folder / "sts-dev.csv")


register_reader(is_sts_file, read_sts)
register_data_spec("stsb-dev", stsb_dev)
