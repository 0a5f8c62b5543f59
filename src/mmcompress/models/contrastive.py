"""LiT-style contrastive training of an image side against a frozen text tower.

Shared by the built-in models: the caller says how to embed a batch of training examples
(by index) and gives the frozen caption embeddings; this module owns the loss and the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import progress_bar


def caption_embeddings(
    encode: Callable[..., torch.Tensor], tokenize: Callable, captions: Sequence[Sequence[str]]
) -> torch.Tensor:
    """Frozen text embeddings of each class's captions (same count per class): [T, C, D]."""
    with torch.inference_mode():
        per_class = [encode(**tokenize(list(caps))) for caps in captions]
    return torch.stack(per_class, dim=1).clone()


def contrastive_loss(
    img: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    prototypes: torch.Tensor,
    scale: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """Mean of image→class-prototype cross-entropy and text→image multi-positive loss.

    `img` are normalised image embeddings, `text` the captions [T, C, D], `prototypes` the
    normalised per-class mean caption; one caption per class is drawn from `gen`.
    """
    # image → text: each image against the class prototypes (captions averaged)
    loss_i2t = F.cross_entropy(scale * img @ prototypes.T, labels)
    # text → image: each class caption against the batch, every same-class image positive
    t_cls = torch.randint(text.shape[0], (text.shape[1],), generator=gen)
    cls_emb = text[t_cls, torch.arange(text.shape[1])]
    present = torch.unique(labels)
    logits = scale * cls_emb[present] @ img.T
    target = (labels[None, :] == present[:, None]).float()
    loss_t2i = torch.sum(-target / target.sum(1, keepdim=True) * logits.log_softmax(1), 1).mean()
    return (loss_i2t + loss_t2i) / 2


def train_contrastive(
    params: list[nn.Parameter],
    embed: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    text: torch.Tensor,
    logit_scale: nn.Parameter,
    cfg: dict[str, Any],
    gen: torch.Generator,
    desc: str = "training",
    progress: bool = True,
) -> float:
    """AdamW with a cosine schedule over shuffled mini-batches; returns the final loss.

    Args:
        params: what to train (include `logit_scale` to learn the temperature).
        embed: batch of example indices → normalised image embeddings (with gradients).
        labels: class of every training example.
        text: frozen caption embeddings [templates, classes, dim].
        cfg: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``.
        gen: the generator for shuffling and caption draws (and `embed`'s augmentation).
    """
    prototypes = F.normalize(text.mean(0), dim=-1)
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    n, batch = len(labels), cfg["batch_size"]
    total = cfg["epochs"] * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    loss = torch.tensor(0.0)
    bar = progress_bar(total=total, desc=desc, enabled=progress)
    for _ in range(cfg["epochs"]):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            img = embed(idx)
            scale = logit_scale.exp().clamp(max=100)
            loss = contrastive_loss(img, labels[idx], text, prototypes, scale, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return float(loss.detach())
