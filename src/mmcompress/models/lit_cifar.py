"""lit-cifar: a CLIP-style dual encoder made of two pretrained, frozen towers.

Image tower: the CIFAR-10 ResNet-56 (its pooled 64-d penultimate features).
Text tower: the pretrained all-MiniLM-L6-v2 sentence encoder.
Only a linear projection of the image features (and the temperature) is trained, LiT-style,
on captions of the training part of ``cifar10/test`` (see `data.cifar`). Training captions use
`LIT_TRAIN_TEMPLATES`; evaluation uses the class-folder prompts, which share none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cifar import LIT_TRAIN_TEMPLATES
from ..threads import single_thread
from . import contrastive
from .lit_dual import LiTDualEncoder
from .resnet_cifar import FEATURE_DIM, CifarResNet
from .sentence_encoder import SentenceEncoder

DEPTH = 56
TRAINING = {"epochs": 20, "batch_size": 256, "lr": 1e-2, "weight_decay": 1e-4, "seed": 0,
            "threads": 1}


class LitCifarDualEncoder(LiTDualEncoder):
    """CIFAR ResNet features → linear projection, aligned to a frozen MiniLM."""

    def __init__(self, text: SentenceEncoder, depth: int = DEPTH) -> None:
        super().__init__(CifarResNet(depth, num_classes=0), FEATURE_DIM, text, {"depth": depth})

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> LitCifarDualEncoder:
        return cls(SentenceEncoder.from_config_dict(arch["text_config"]), arch["depth"])


@single_thread()  # the trained weights must not depend on the thread count
def train_projection(
    model: LitCifarDualEncoder,
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    class_names: Sequence[str],
    preprocess: Callable,
    tokenize: Callable,
    progress: bool = True,
) -> float:
    """Train the projection (and temperature) on captioned images; returns the final loss.

    Both towers are frozen, so their outputs are computed once: the features of every
    training image and the embeddings of every training caption. `preprocess` and `tokenize`
    are the adapter's own, so training sees exactly what inference will.
    """
    cfg = TRAINING
    gen = torch.Generator().manual_seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    model.eval()
    with torch.inference_mode():
        features = torch.cat(
            [model.vision(preprocess(images[i : i + 500])) for i in range(0, len(images), 500)]
        ).clone()
    captions = [[t.format(c) for t in LIT_TRAIN_TEMPLATES] for c in class_names]
    text = contrastive.caption_embeddings(model.encode_text, tokenize, captions)
    proj = model.visual_projection
    return contrastive.train_contrastive(
        [*proj.parameters(), model.logit_scale],
        lambda idx: F.normalize(proj(features[idx]), dim=-1),
        torch.as_tensor(list(labels)).long(),
        text,
        model.logit_scale,
        cfg,
        gen,
        desc="training lit-cifar projection",
        progress=progress,
    )
