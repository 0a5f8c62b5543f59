"""Train the demo model's image tower against the frozen text tower (LiT-style contrastive)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.demo import DIGIT_WORDS, TRAIN_TEMPLATES, digits_split, train_captions
from ..progress import progress_bar
from .demo import DemoDualEncoder

TRAINING = {"epochs": 30, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0}


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
    with torch.inference_mode():
        per_class = [
            model.encode_text(**tokenize(train_captions(c))) for c in range(len(DIGIT_WORDS))
        ]
    return torch.stack(per_class, dim=1).clone()


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
    labels = torch.from_numpy(y_train).long()
    text = caption_embeddings(model, tokenize)  # [T, C, D]
    n_templates = len(TRAIN_TEMPLATES)
    prototypes = F.normalize(text.mean(0), dim=-1)
    model.text.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("text.")]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = math.ceil(len(images) / cfg["batch_size"])
    total = cfg["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    model.train()
    loss = torch.tensor(0.0)
    bar = progress_bar(total=total, desc="training demo image tower", enabled=progress)
    for _ in range(cfg["epochs"]):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), cfg["batch_size"]):
            idx = order[i : i + cfg["batch_size"]]
            x, y = _shift(images[idx].clone(), gen, background), labels[idx]
            img = model.encode_image(x)
            scale = model.logit_scale.exp().clamp(max=100)
            # image → text: each image against the class prototypes (captions averaged)
            loss_i2t = F.cross_entropy(scale * img @ prototypes.T, y)
            # text → image: each class caption against the batch, every same-class image positive
            t_cls = torch.randint(n_templates, (text.shape[1],), generator=gen)
            cls_emb = text[t_cls, torch.arange(text.shape[1])]
            present = torch.unique(y)
            logits = scale * cls_emb[present] @ img.T
            target = (y[None, :] == present[:, None]).float()
            loss_t2i = torch.sum(
                -target / target.sum(1, keepdim=True) * logits.log_softmax(1), 1
            ).mean()
            loss = (loss_i2t + loss_t2i) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return float(loss.detach())
