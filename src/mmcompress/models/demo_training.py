"""Train the demo model's image tower against the frozen text tower (LiT-style contrastive)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.demo import DIGIT_WORDS, digits_split, train_captions
from ..threads import single_thread
from . import contrastive
from .demo import DemoDualEncoder

TRAINING = {"epochs": 30, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0,
            "threads": 1}


def _shift(x: torch.Tensor, gen: torch.Generator, fill: float) -> torch.Tensor:
    """Random ±1-pixel translation, a mild augmentation for 8×8 scans."""
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy:
        x[:, :, (0 if dy > 0 else -1), :] = fill
    if dx:
        x[:, :, :, (0 if dx > 0 else -1)] = fill
    return x


def caption_embeddings(model: DemoDualEncoder, tokenize: Callable) -> torch.Tensor:
    """Frozen text embeddings of every training caption: [templates, classes, dim]."""
    captions = [train_captions(c) for c in range(len(DIGIT_WORDS))]
    return contrastive.caption_embeddings(model.encode_text, tokenize, captions)


@single_thread()  # the trained weights must not depend on the thread count
def train_demo(
    model: DemoDualEncoder, tokenize: Callable, preprocess: Callable, progress: bool = True
) -> float:
    """Train image tower + projection on the digits training split; returns the final loss.

    `tokenize` and `preprocess` are the adapter's own, so training sees exactly what
    inference will.
    """
    cfg = TRAINING
    gen = torch.Generator().manual_seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    x_train, y_train, _, _ = digits_split()
    images = preprocess(list(x_train))
    background = float(preprocess([x_train[0] * 0])[0].flatten()[0])
    text = caption_embeddings(model, tokenize)  # [T, C, D]
    model.text.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("text.")]

    def embed(idx: torch.Tensor) -> torch.Tensor:
        return model.encode_image(_shift(images[idx].clone(), gen, background))

    model.train()
    try:
        return contrastive.train_contrastive(
            params,
            embed,
            torch.from_numpy(y_train).long(),
            text,
            model.logit_scale,
            cfg,
            gen,
            desc="training demo image tower",
            progress=progress,
        )
    finally:
        model.eval()
