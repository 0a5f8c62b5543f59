"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPConfig

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
