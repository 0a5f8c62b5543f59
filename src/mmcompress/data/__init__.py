"""Data specs → `Dataset`: named (``demo``, ``cifar10``, …), class folders, COCO caption JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError, require_spec
from .cifar import cifar10_test, lit_cifar_eval
from .dataset import Dataset, load_image
from .demo import demo_dataset
from .readers import _find_coco_json, is_class_folder, read_class_folder, read_coco_captions
from .table import is_trimodal_csv, read_trimodal_csv
from .trimodal import trimodal_eval, trimodal_train

__all__ = ["Dataset", "load_data", "load_image"]

# (detect(path) -> bool, read(path) -> Dataset), added by later readers
_EXTRA_READERS: list = [(is_trimodal_csv, read_trimodal_csv)]

# Named data specs (besides paths): name → loader() -> Dataset.
NAMED_DATA: dict[str, Callable[[], Dataset]] = {
    "demo": demo_dataset,
    "cifar10": cifar10_test,  # ../shared/data/cifar10/test
    "lit-cifar-eval": lit_cifar_eval,  # its held-out part (see data/cifar.py)
    "trimodal": trimodal_eval,  # held-out tri-modal digits (see data/trimodal.py)
    "trimodal-train": trimodal_train,
}


def register_data_spec(name: str, loader: Callable[[], Dataset]) -> None:
    """Make `name` a data spec, e.g. 'demo' or 'cifar10'."""
    NAMED_DATA[name] = loader


def register_reader(detect, read) -> None:
    """Add a reader for another kind of file or folder (tried before the built-in ones)."""
    _EXTRA_READERS.append((detect, read))


def load_data(spec: str | Path | Dataset) -> Dataset:
    """Resolve a data spec. Unknown or unreadable input raises `DataError`."""
    if isinstance(spec, Dataset):
        return spec
    require_spec(spec, "the data", Dataset, error=DataError)
    if str(spec) in NAMED_DATA:  # named as asked for (reports print a spec), its note kept
        data = NAMED_DATA[str(spec)]()
        _, note, rest = data.name.partition(" (")
        return dataclasses.replace(data, name=str(spec) + note + rest)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist (expected {', '.join(NAMED_DATA)} or a path)"
        )
    for detect, read in _EXTRA_READERS:
        if detect(path):
            return read(path)
    if _find_coco_json(path) is not None:
        return read_coco_captions(path)
    if is_class_folder(path):
        return read_class_folder(path)
    raise DataError(f"{path}: {_why_unrecognised(path)}")


def _why_unrecognised(path: Path) -> str:
    """What is wrong with a path no reader took, as specifically as can be told."""
    expected = ("expected a folder of class subfolders of images, a COCO caption JSON, an "
                "STS file (tab-separated: score, sentence 1, sentence 2, or the STS-B layout) "
                "or a CSV with a 'label' column and image/text/audio columns")
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            return f"not UTF-8 text (byte {exc.start}); {expected}"
        if not text.strip():
            return f"the file is empty; {expected}"
        return f"no known columns in its first line {text.splitlines()[0][:60]!r}; {expected}"
    return f"unrecognised data ({expected})"


# the STS reader and the named STS and training splits register themselves; importing them here
# makes every spec known to `load_data` whatever else was imported
from . import splits, sts  # noqa: E402, F401
