"""A CSV of tri-modal examples: ``label`` plus any of ``image``, ``text``, ``audio``.

``image`` and ``audio`` cells are paths (relative to the CSV's folder) to an image file and a
PCM WAV file; ``text`` cells are the text itself. An empty cell is a missing modality for that
example; a column that is empty in every row is refused, as is an unreadable file.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError
from .audio import read_wav
from .dataset import Dataset, load_image
from .demo import DIGIT_WORDS
from .trimodal import MODALITIES


def is_trimodal_csv(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return False
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    return "label" in [h.strip() for h in header]


def _label(value: str, row: int, path: Path) -> int:
    v = value.strip().lower()
    if v.isascii() and v.isdigit() and int(v) < len(DIGIT_WORDS):  # not '²', which int() refuses
        return int(v)
    if v in DIGIT_WORDS:
        return DIGIT_WORDS.index(v)
    raise DataError(f"{path} row {row}: label {value!r} is not a digit 0-9 or a digit word")


def read_trimodal_csv(path: Path) -> Dataset:
    """Read the CSV; image and audio files are decoded now, so bad files fail early."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a leading BOM goes
            reader = csv.DictReader(f, strict=True)  # strict: an unterminated quote is an error
            reader.fieldnames = [h.strip() for h in reader.fieldnames or []]  # "image, text"
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV: {exc}") from None
    for i, r in enumerate(rows, start=2):
        if r.get(None):  # DictReader keeps fields past the header's under None
            raise DataError(f"{path} row {i}: {len(reader.fieldnames) + len(r[None])} fields, "
                            f"the header names {len(reader.fieldnames)} (quote a cell that "
                            "holds a comma)")
    columns = [m for m in MODALITIES if rows and m in rows[0]]
    if not columns:
        raise DataError(f"{path}: no rows, or none of the columns {', '.join(MODALITIES)}")
    for m in columns:
        if not any((r.get(m) or "").strip() for r in rows):
            raise DataError(f"{path}: column {m!r} is empty in every row (drop the column to "
                            "evaluate without that modality)")
    base = path.parent
    data: dict[str, list] = {m: [] for m in MODALITIES}
    labels = []
    for i, r in enumerate(rows, start=2):  # row 1 is the header
        labels.append(_label(r.get("label") or "", i, path))
        for m in MODALITIES:
            cell = (r.get(m) or "").strip()
            if not cell:
                data[m].append(None)
            elif m == "text":
                data[m].append(cell)
            else:
                read = load_image if m == "image" else read_wav
                try:
                    data[m].append(read(base / cell))
                except DataError as exc:
                    raise DataError(f"{path} row {i}: {exc}") from None
    return Dataset(name=path.stem, task="multimodal", images=data["image"], texts=data["text"],
                   audio=data["audio"], labels=labels, class_names=list(DIGIT_WORDS))
