"""The in-memory dataset every reader returns and every evaluation consumes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

ImageRef = np.ndarray | Path

TASKS = ("classification", "retrieval", "sts", "multimodal")
#: the columns each task reads, one entry per example
NEEDED = {"classification": ("images", "labels"), "retrieval": ("images", "captions"),
          "sts": ("texts", "texts_b", "scores"), "multimodal": ("labels",)}


def _json_value(value: object) -> object:
    """A column value JSON cannot write as it is: a numpy scalar or array as its Python value."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot fingerprint a {type(value).__name__} in a data column")


def _item_header(modality: str, item: object) -> str:
    """What tells one image or waveform apart besides its bytes: an array's dtype and shape
    (so that items cut at other boundaries differ), a file's path, size and time."""
    if isinstance(item, np.ndarray):
        return repr((modality, "array", str(item.dtype), item.shape))
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        stat = path.stat() if path.exists() else None
        return repr((modality, "file", str(path.resolve()), stat and stat.st_size,
                     stat and stat.st_mtime_ns))
    return repr((modality, "missing"))


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass
class Dataset:
    """Columns of a dataset; which are set depends on `task`.

    - ``classification``: `images`, `labels`, `class_names`, `templates` (with ``{}``);
      dual encoders classify zero-shot from the prompts, classifiers with their head.
    - ``retrieval``: `images`, `captions` (one list of captions per image).
    - ``sts``: `texts` (first sentences), `texts_b`, `scores`.
    - ``multimodal``: `images`, `texts`, `audio` (mono float32 waveforms, see `data.audio`),
      one item of each per example, None where that modality is missing; `labels`,
      `class_names` (see `data.trimodal`).
    """

    name: str
    task: str
    images: list[ImageRef] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    texts_b: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    audio: list[np.ndarray | None] = field(default_factory=list)

    @property
    def modalities(self) -> set[str]:
        mods = set()
        if self.images:
            mods.add("image")
        if self.texts or self.captions or self.class_names:
            mods.add("text")
        if any(a is not None for a in self.audio):
            mods.add("audio")
        return mods

    def __len__(self) -> int:
        return len(self.images) if self.images else len(self.texts)

    def check(self) -> None:
        """Refuse columns that do not line up, or labels and scores no metric can use (the
        readers build consistent sets; a `Dataset` made in Python is checked here).

        Raises:
            DataError: naming the data set and what is wrong.
        """
        def bad(why: str) -> DataError:
            return DataError(f"data {self.name!r}: {why}")

        if self.task not in TASKS:
            raise bad(f"task {self.task!r} is none of {', '.join(TASKS)}")
        columns = {"images": self.images, "labels": self.labels, "captions": self.captions,
                   "texts": self.texts, "texts_b": self.texts_b, "scores": self.scores,
                   "audio": self.audio}
        lengths = {k: 0 if v is None else len(v) for k, v in columns.items()}  # not truth:
        sizes = {k: n for k, n in lengths.items() if k in NEEDED[self.task] or n}  # arrays
        if len(set(sizes.values())) > 1:
            raise bad("its columns differ in length (" + ", ".join(
                f"{k} {n}" for k, n in sizes.items()) + ")")
        if not any(sizes.values()):
            raise bad("it holds no examples")
        empty = next((i for i, c in enumerate(self.captions or []) if not len(c)), None)
        if empty is not None:
            raise bad(f"image {empty} has no captions: it could never be retrieved")
        if not all(map(_finite, self.scores)):
            raise bad("a score is not a finite number")
        if self.class_names and any(not 0 <= y < len(self.class_names) for y in self.labels):
            raise bad(f"a label is outside 0..{len(self.class_names) - 1}, the class names' range")

    def load_image(self, index: int) -> np.ndarray:
        """Image `index` as float32 HxWxC in [0, 1]."""
        return load_image(self.images[index])

    def digest(self) -> str:
        """A hash of the examples' content: every column, images as array bytes (with dtype and
        shape) or as file path, size and modification time (not read), audio as waveform bytes.
        Two sets with the same name and size but other examples, labels or files hash
        differently."""
        h = hashlib.sha256(json.dumps(
            [self.task, self.labels, self.class_names, self.templates, self.captions,
             self.texts, self.texts_b, self.scores], default=_json_value).encode())
        for modality, items in (("image", self.images), ("audio", self.audio)):
            for item in items:
                h.update(_item_header(modality, item).encode())
                if isinstance(item, np.ndarray):
                    h.update(np.ascontiguousarray(item).tobytes())
        return h.hexdigest()

    def decoded_images(self) -> DecodedImages:
        """Every image, decoded only when indexed: a batch at a time, not all held at once."""
        return DecodedImages(self.images)

    def head(self, n: int | None) -> Dataset:
        """`n` evenly spaced examples (all when `n` is None), for quick evaluation.

        Evenly spaced rather than the first `n`, because readers list class folders one class
        after another: a prefix would hold only the first classes.
        """
        if n is None or n >= len(self):
            return self
        total = len(self)
        index = [i * total // n for i in range(n)]
        cut = {
            k: [getattr(self, k)[i] for i in index]
            for k in ("images", "labels", "captions", "texts", "texts_b", "scores", "audio")
            if getattr(self, k)
        }
        return replace(self, **cut)

    def all_texts(self) -> list[str]:
        """Every text the dataset would encode (prompts, captions or sentence pairs)."""
        if self.task == "classification":
            return [t.format(c) for c in self.class_names for t in self.templates]
        if self.task == "retrieval":
            return [c for caps in self.captions for c in caps]
        return self.texts + self.texts_b


class DecodedImages(Sequence[np.ndarray]):
    """Image references read as decoded images on indexing (a slice decodes just its own)."""

    def __init__(self, refs: Sequence[ImageRef]) -> None:
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [load_image(ref) for ref in self.refs[index]]
        return load_image(self.refs[index])


def load_image(ref: ImageRef) -> np.ndarray:
    """Decode an image file (or pass an array through) as float32 HxWxC in [0, 1]: turned as
    its EXIF orientation says, transparency composited onto white (as Hugging Face's image
    processors do)."""
    if isinstance(ref, np.ndarray):
        return ref if ref.ndim == 3 else ref[..., None]
    try:
        with warnings.catch_warnings():
            # a large image is read as any other; one past PIL's bomb limit is refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(ref) as opened:
                im = ImageOps.exif_transpose(opened)
                if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: RGB clips at 255
                    return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0, 1)[..., None]
                if im.mode == "F":  # float grey: RGB would turn NaN into 0 and 0.5 into 0
                    return _float_grey(np.asarray(im, dtype=np.float32), ref)
                arr = np.asarray(_on_white(im), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {ref}: {exc}") from None
    return arr


def _float_grey(arr: np.ndarray, ref: ImageRef) -> np.ndarray:
    """A float image file's values as they are (H×W×1), refused unless finite and in [0, 1],
    the range float arrays are read in."""
    if not np.isfinite(arr).all():
        raise DataError(f"image {ref} holds NaN or Inf values")
    low, high = float(arr.min(initial=0)), float(arr.max(initial=0))
    if low < 0 or high > 1:
        raise DataError(f"image {ref} is a float image with values from {low:g} to {high:g}; "
                        "float images are read in [0, 1]: scale it, or save it as 8-bit")
    return arr[..., None]


def _on_white(im: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto a white background."""
    if "A" not in im.getbands() and im.info.get("transparency") is None:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)),
                                 rgba).convert("RGB")
