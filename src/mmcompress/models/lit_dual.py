"""The built-in LiT-style dual encoders' shared shape: an image encoder, a linear projection into
a sentence encoder's embedding space, and a learned logit scale."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .sentence_encoder import SentenceEncoder


class LiTDualEncoder(nn.Module):
    """`vision` (→ `features` wide) projected onto `text`'s sentence embeddings.

    Subclasses rebuild themselves from `architecture()`: the text config plus `hparams`.
    """

    def __init__(self, vision: nn.Module, features: int, text: SentenceEncoder,
                 hparams: dict[str, Any]) -> None:
        super().__init__()
        self.hparams = hparams
        self.vision = vision
        self.visual_projection = nn.Linear(features, text.bert.config.hidden_size)
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual_projection(self.vision(pixels)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)

    def architecture(self) -> dict[str, Any]:
        return {"text_config": self.text.config_dict(), **self.hparams}
