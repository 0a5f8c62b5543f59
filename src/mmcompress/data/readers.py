"""Readers for data specs: a folder of class subfolders, and COCO-format caption JSON."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from .dataset import Dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CLASS_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}."]


def _image_paths(folder: Path) -> Iterator[Path]:
    """The images anywhere under `folder` (subfolders too, as torchvision's ImageFolder reads
    them), hidden files and folders left out."""
    return (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts))


def _images_in(folder: Path) -> list[Path]:
    return sorted(_image_paths(folder))


def is_class_folder(path: Path) -> bool:
    """Whether `path` holds a subfolder with an image in it (stops at the first one found)."""
    subdirs = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
    return any(next(_image_paths(d), None) is not None for d in subdirs)


def read_class_folder(path: Path) -> Dataset:
    """A folder of class subfolders of images → zero-shot classification with class prompts."""
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels = [], []
    for label, folder in enumerate(classes):
        files = _images_in(folder)
        if not files:
            raise DataError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        images += files
        labels += [label] * len(files)
    return Dataset(
        name=path.name,
        task="classification",
        images=images,
        labels=labels,
        class_names=[c.name.replace("_", " ") for c in classes],
        templates=list(CLASS_TEMPLATES),
    )


def _find_coco_json(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir():
        found = sorted(path.glob("captions_*.json")) + sorted(
            path.glob("annotations/captions_*.json")
        )
        return found[0] if found else None
    return None


def _image_dir_for(json_path: Path, file_names: list[str]) -> Path:
    """COCO images live beside the JSON, in a sibling split folder, or in `images/`."""
    split = json_path.stem.removeprefix("captions_")
    roots = [json_path.parent, json_path.parent.parent]
    candidates = [r / sub for r in roots for sub in (split, "images", "")]
    for c in candidates:
        if file_names and (c / file_names[0]).is_file():
            return c
    raise DataError(
        f"cannot find the images of {json_path} (looked for {file_names[:1]} in "
        f"{', '.join(str(c) for c in candidates)})"
    )


def read_coco_captions(path: Path) -> Dataset:
    """COCO caption JSON (``images`` + ``annotations`` with ``caption``) → retrieval set."""
    json_path = _find_coco_json(path)
    if json_path is None:
        raise DataError(f"{path}: no COCO caption JSON found")
    try:
        coco = json.loads(json_path.read_text())
        images = {im["id"]: im["file_name"] for im in coco["images"]}
        caps: dict[int, list[str]] = defaultdict(list)
        for ann in coco["annotations"]:
            caps[ann["image_id"]].append(str(ann["caption"]).strip())
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{json_path} is not COCO caption JSON ({type(exc).__name__}: {exc})"
        ) from None
    for i, name in images.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{json_path}: image {i!r} has file_name {name!r}, not a file name")
    ids = [i for i in images if caps.get(i)]
    if not ids:
        raise DataError(f"{json_path} has no images with captions")
    root = _image_dir_for(json_path, [images[i] for i in ids])
    return Dataset(
        name=json_path.parent.name
        if json_path.parent.name != "annotations"
        else json_path.parent.parent.name,
        task="retrieval",
        images=[root / images[i] for i in ids],
        captions=[caps[i] for i in ids],
    )
