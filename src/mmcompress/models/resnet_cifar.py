"""CIFAR ResNet-20/32/44/56 (He et al. 2016, CIFAR variant) with the "option A" shortcut.

conv3x3(3→16) → BN → ReLU; three stages of n BasicBlocks (16, 32, 64 channels, the first
block of stages 2 and 3 with stride 2); global average pool; ``linear`` (64→classes).
State-dict keys: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``
(BatchNorm also keeps its ``num_batches_tracked`` counter, which files may omit).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS_PER_STAGE = {20: 3, 32: 5, 44: 7, 56: 9}
STAGE_WIDTHS = (16, 32, 64)
FEATURE_DIM = STAGE_WIDTHS[-1]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN, plus a shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: identity, or subsample by 2 and zero-pad channels (no parameters)."""
        if self.pad is None:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 images; `features` gives the pooled 64-d penultimate activations.

    With ``num_classes=0`` there is no head and the model returns those features.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"depth {depth} is not one of {sorted(BLOCKS_PER_STAGE)}")
        self.depth, self.num_classes = depth, num_classes
        n = BLOCKS_PER_STAGE[depth]
        self.conv1 = _conv3x3(3, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        for stage, planes in enumerate(STAGE_WIDTHS, start=1):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(FEATURE_DIM, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 32, 32] normalised pixels → [B, 64] pooled features."""
        x = F.relu(self.bn1(self.conv1(pixels)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(pixels))


_BLOCK_KEY = re.compile(r"^layer([123])\.(\d+)\.(conv1|bn1|conv2|bn2)\.")


def depth_from_keys(keys: Iterable[str]) -> int | None:
    """The depth whose state dict these keys form (ignoring BN counters), else None."""
    keys = {k for k in keys if not k.endswith("num_batches_tracked")}
    blocks = {int(m[2]) for k in keys if (m := _BLOCK_KEY.match(k)) and m[1] == "1"}
    n = max(blocks, default=-1) + 1
    depth = next((d for d, b in BLOCKS_PER_STAGE.items() if b == n), None)
    if depth is None:
        return None
    expected = {k for k in CifarResNet(depth).state_dict() if not k.endswith("num_batches_tracked")}
    return depth if keys == expected else None
