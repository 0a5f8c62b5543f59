"""Data specs → `Dataset`: ``demo``, a folder of class subfolders, COCO caption JSON."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .dataset import Dataset, load_image
from .demo import demo_dataset
from .readers import _find_coco_json, is_class_folder, read_class_folder, read_coco_captions

__all__ = ["Dataset", "load_data", "load_image"]

_EXTRA_READERS: list = []  # (detect(path) -> bool, read(path) -> Dataset), added by later readers


def register_reader(detect, read) -> None:
    """Add a reader for another kind of file or folder (tried before the built-in ones)."""
    _EXTRA_READERS.append((detect, read))


def load_data(spec: str | Path | Dataset) -> Dataset:
    """Resolve a data spec. Unknown or unreadable input raises `DataError`."""
    if isinstance(spec, Dataset):
        return spec
    if str(spec) == "demo":
        return demo_dataset()
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist (expected 'demo' or a path)")
    for detect, read in _EXTRA_READERS:
        if detect(path):
            return read(path)
    if _find_coco_json(path) is not None:
        return read_coco_captions(path)
    if is_class_folder(path):
        return read_class_folder(path)
    raise DataError(
        f"{path}: unrecognised data (expected a folder of class subfolders of images, "
        "or a COCO caption JSON)"
    )
