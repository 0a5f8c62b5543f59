"""The built-in demo: a CLIP-style dual encoder made of real parts.

Image tower: a small CNN over 8×8 handwritten digits (scikit-learn's digits, real scans).
Text tower: the pretrained all-MiniLM-L6-v2 sentence encoder, frozen (LiT-style).
The image tower and its projection are trained contrastively against the text tower's
embeddings of digit captions; the text tower is never changed by training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .lit_dual import LiTDualEncoder
from .sentence_encoder import SentenceEncoder

IMAGE_SIZE = 8


class DigitImageEncoder(nn.Module):
    """Conv → conv → pool → MLP over a [B, 1, 8, 8] digit image."""

    def __init__(self, channels: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * (IMAGE_SIZE // 2) ** 2, hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(pixels))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))


class DemoDualEncoder(LiTDualEncoder):
    """Digit-image encoder + projection, aligned to a frozen MiniLM text encoder."""

    def __init__(self, text: SentenceEncoder, channels: int = 32, hidden: int = 256) -> None:
        super().__init__(DigitImageEncoder(channels, hidden), hidden, text,
                         {"channels": channels, "hidden": hidden})

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> DemoDualEncoder:
        text = SentenceEncoder.from_config_dict(arch["text_config"])
        return cls(text, arch["channels"], arch["hidden"])
