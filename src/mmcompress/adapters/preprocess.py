"""Input preparation shared by adapters: image tensors and a tokenizer-free fallback."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError


def images_to_tensor(
    images: Sequence[np.ndarray],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    fit: str = "crop",
    interpolation: str = "bilinear",
    resize_to: int | None = None,
) -> torch.Tensor:
    """HxWxC (or HxW grey) float images in [0, 1] (uint8 images in 0–255 are divided by 255,
    as the HF processors do) → normalised [B, C, size, size], C = len(mean).

    `fit` ``crop`` resizes the shorter side to `resize_to` (default `size`), keeping the aspect
    ratio (CLIP's processor); ``squash`` resizes the whole image to `resize_to` × `resize_to`
    (SigLIP's). Either is then centre-cropped to `size`. Resizing is antialiased; grey and RGB
    are converted as needed (the first three channels of RGBA), then normalised.
    """
    channels = len(mean)
    out = []
    for img in images:
        t = _channels_first(img, channels)
        h, w = t.shape[1:]
        # an image already `size` square is still resized to `edge` first, as processors do
        edge = max(resize_to or size, size)
        if fit == "squash":
            nh = nw = edge
        else:
            nh, nw = (edge, int(edge * w / h)) if h <= w else (int(edge * h / w), edge)
        if (nh, nw) != (h, w):
            t = F.interpolate(t[None], size=(nh, nw), mode=interpolation, antialias=True,
                              align_corners=False)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(t[:, top : top + size, left : left + size])
    batch = torch.stack(out)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (batch - m) / s


def _channels_first(img: np.ndarray, channels: int) -> torch.Tensor:
    """One image as a float [channels, H, W] tensor: grey repeated for RGB, RGB(A) averaged
    for grey, an alpha channel dropped."""
    arr = np.ascontiguousarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"an image must be H×W or H×W×C with 1–4 channels, got shape "
                        f"{list(arr.shape)}")
    t = torch.as_tensor(arr, dtype=torch.float32).permute(2, 0, 1)
    if arr.dtype == np.uint8:
        t = t / 255.0
    if not torch.isfinite(t).all():
        raise DataError("an image holds NaN or Inf values")
    colour = t[:3] if t.shape[0] >= 3 else t[:1]  # grey + alpha keeps the grey
    if colour.shape[0] == channels:
        return colour
    return colour.mean(0, keepdim=True) if channels == 1 else colour.expand(channels, -1, -1)


class HashTokenizer:
    """Deterministic word-hash tokenizer for models that ship without one (``random:`` specs).

    Only for speed and memory work: ids carry no learned meaning.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        bos: int | None,
        eos: int,
        pad: int,
        pad_to_max: bool = False,
    ) -> None:
        self.vocab_size, self.max_length = vocab_size, max_length
        self.bos, self.eos, self.pad, self.pad_to_max = bos, eos, pad, pad_to_max
        self._reserved = {t for t in (bos, eos, pad) if t is not None}

    def _word_id(self, word: str) -> int:
        i = zlib.crc32(word.encode()) % self.vocab_size
        while i in self._reserved:
            i = (i + 1) % self.vocab_size
        return i

    def __call__(
        self, texts: Sequence[str], max_length: int | None = None, pad_to_max: bool | None = None
    ) -> dict[str, torch.Tensor]:
        limit = max_length or self.max_length
        rows = []
        for text in texts:
            ids = [self._word_id(w) for w in text.lower().split()]
            head = [self.bos] if self.bos is not None else []
            rows.append((head + ids)[: limit - 1] + [self.eos])
        width = (
            limit
            if (self.pad_to_max if pad_to_max is None else pad_to_max)
            else max(map(len, rows))
        )
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}
