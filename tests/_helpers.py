"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import CLIPConfig

from mmcompress.data import Dataset
from mmcompress.methods import METHODS, StageContext
from mmcompress.recipe import CalibrationConfig, load_recipe

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Evaluation settings that keep unit tests fast (no memory probe subprocess).
FAST_EVAL = {
    "max_samples": 64,
    "latency_repeats": 2,
    "latency_batch_size": 2,
    "metrics": ["size_bytes", "params", "zeroshot_top1", "fidelity_cosine", "latency_ms_image",
                "latency_ms_text"],
}


def tiny_clip_config() -> CLIPConfig:
    """A 2-layer, 32-wide CLIP; the hash tokenizer's bos/eos sit at the top of the vocab."""
    return CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=100, max_position_embeddings=16,
                         bos_token_id=98, eos_token_id=99, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )


def toy_image_data(n: int = 8) -> Dataset:
    """`n` random 16×16 images in two classes, with prompt templates."""
    rng = np.random.default_rng(0)
    return Dataset("toy", "classification",
                   images=[rng.random((16, 16, 3), dtype=np.float32) for _ in range(n)],
                   labels=[i % 2 for i in range(n)], class_names=["cat", "dog"],
                   templates=["a {}", "the {}"])


def apply_smoothquant(adapter, **cfg) -> dict:
    """SmoothQuant W8A8 of `adapter` in place, calibrated on `toy_image_data`; its summary."""
    stage = load_recipe({"stages": [{"quantize": {"method": "smoothquant", **cfg}}]}).stages[0]
    ctx = StageContext(data=toy_image_data(), calibration=CalibrationConfig(samples=8,
                                                                           batch_size=4),
                       progress=False)
    return METHODS[("quantize", "smoothquant")].apply(adapter, stage.config, ctx)


def layer_inputs(outliers: bool = False) -> torch.Tensor:
    """1,024 correlated input rows of 64 features with a mean (the first four scaled by 20
    with `outliers`), fixed seed: a layer's calibration inputs for layer-wise tests."""
    torch.manual_seed(0)
    x = torch.randn(1024, 64) @ torch.randn(64, 64) * 0.3 + torch.randn(64)
    if outliers:
        x[:, :4] *= 20
    return x


def output_error(x: torch.Tensor, w: torch.Tensor, approx: torch.Tensor) -> float:
    """Mean squared error of the layer's outputs on `x` with `approx` in place of `w`."""
    return float(((x @ (approx - w).T) ** 2).mean())
