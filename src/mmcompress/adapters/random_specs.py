"""`random:NAME`: known architectures at full size with random weights (speed and memory work)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from .base import Adapter
from .hf_dual import CLIPAdapter, SiglipAdapter


def _clip(
    vision_layers: int,
    vision_width: int,
    patch: int,
    image: int,
    text_width: int,
    text_layers: int,
    proj: int,
) -> Callable[[], Adapter]:
    def build() -> Adapter:
        from transformers import CLIPConfig

        config = CLIPConfig(
            vision_config=dict(
                hidden_size=vision_width,
                intermediate_size=4 * vision_width,
                num_hidden_layers=vision_layers,
                num_attention_heads=vision_width // 64,
                patch_size=patch,
                image_size=image,
                projection_dim=proj,
            ),
            text_config=dict(
                hidden_size=text_width,
                intermediate_size=4 * text_width,
                num_hidden_layers=text_layers,
                num_attention_heads=text_width // 64,
                max_position_embeddings=77,
                vocab_size=49408,
                projection_dim=proj,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=1,
            ),
            projection_dim=proj,
        )
        return CLIPAdapter.random(config)

    return build


def _siglip(patch: int, image: int) -> Callable[[], Adapter]:
    def build() -> Adapter:
        from transformers import SiglipConfig

        config = SiglipConfig(
            vision_config=dict(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                patch_size=patch,
                image_size=image,
            ),
            text_config=dict(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                vocab_size=32000,
                max_position_embeddings=64,
                pad_token_id=1,
                eos_token_id=1,
                bos_token_id=None,
            ),
        )
        return SiglipAdapter.random(config)

    return build


RANDOM_MODELS: dict[str, Callable[[], Adapter]] = {
    "clip-vit-base-patch32": _clip(12, 768, 32, 224, 512, 12, 512),
    "clip-vit-base-patch16": _clip(12, 768, 16, 224, 512, 12, 512),
    "clip-vit-large-patch14": _clip(24, 1024, 14, 224, 768, 12, 768),
    "siglip-base-patch16-224": _siglip(16, 224),
}


def random_model(name: str) -> Adapter:
    if name not in RANDOM_MODELS:
        raise UserError(f"unknown random model {name!r}; known: {', '.join(RANDOM_MODELS)}")
    return RANDOM_MODELS[name]()
