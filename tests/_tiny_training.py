"""A tiny training objective and stage helpers for the QAT and gradual-pruning tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _helpers import toy_image_data
from torch import nn

from mmcompress.methods import METHODS, StageContext
from mmcompress.methods.training_hooks import take_armed
from mmcompress.recipe import CalibrationConfig
from mmcompress.training import TrainSettings, train

toy_data = toy_image_data  # the tests' toy image data under its old name


class EmbeddingTargets:
    """Pull a dual encoder's image and text embeddings towards fixed random targets."""

    def __init__(self, adapter, n: int = 8) -> None:
        gen = torch.Generator().manual_seed(1)
        self.adapter = adapter
        rng = np.random.default_rng(1)
        self.pixels = adapter.image_tensor([rng.random((32, 32, 3), dtype=np.float32)
                                            for _ in range(n)])
        words = ["cat", "dog", "bird", "car", "a", "the", "small", "big"]
        self.tokens = adapter.text_tensors([f"{words[i]} {words[(i + 3) % 8]}"
                                            for i in range(n)])
        dim = adapter.embed_image_tensor(self.pixels[:1]).shape[-1]
        self.image_target = F.normalize(torch.randn(n, dim, generator=gen), dim=-1)
        self.text_target = F.normalize(torch.randn(n, dim, generator=gen), dim=-1)
        self.modules = nn.Module()

    def __len__(self) -> int:
        return len(self.pixels)

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        img = self.adapter.embed_image_tensor(self.pixels[idx])
        txt = self.adapter.embed_text_tensors({k: v[idx] for k, v in self.tokens.items()})
        return 2 - (img * self.image_target[idx]).sum(-1).mean() \
            - (txt * self.text_target[idx]).sum(-1).mean()

    def describe(self) -> dict[str, Any]:
        return {"task": "embedding-targets", "examples": len(self)}

    @torch.no_grad()
    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.adapter.embed_image_tensor(self.pixels), \
            self.adapter.embed_text_tensors(self.tokens)


def context() -> StageContext:
    return StageContext(data=toy_data(), calibration=CalibrationConfig(samples=8, batch_size=4),
                        progress=False)


def run_stage(adapter, kind: str, ctx: StageContext, **cfg) -> dict[str, Any]:
    """Apply one method (config validated as in a recipe) in `ctx`."""
    method = METHODS[(kind, cfg["method"])]
    return method.apply(adapter, method.config_cls.model_validate(cfg), ctx)


def fit(adapter, ctx: StageContext, steps: int, extra_callbacks=(), lr: float = 1e-2,
        **settings) -> dict[str, Any]:
    """Train with the shared trainer and the callbacks armed in `ctx`."""
    objective = EmbeddingTargets(adapter)
    cfg = TrainSettings(epochs=steps, max_steps=steps, batch_size=4, lr=lr, warmup=0,
                        weight_decay=0.1, evaluate=False, **settings)
    adapter.model.train()
    callbacks = [*take_armed(ctx), *extra_callbacks]
    return train(adapter, objective, cfg, callbacks=callbacks, progress=False)
