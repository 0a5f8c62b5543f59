"""Adapters for Hugging Face dual encoders (CLIP, SigLIP) from local folders or configs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import announce
from .base import DualEncoderAdapter
from .preprocess import HashTokenizer, images_to_tensor
from .tokenizers import has_tokenizer, load_tokenizer, pretrained, saved_tokenizer, tokenize

# PIL resampling codes in preprocessor_config.json (bilinear 2, bicubic 3; others approximated)
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


class HFDualEncoderAdapter(DualEncoderAdapter):
    """Shared logic; subclasses name the config/model classes and the tower modules."""

    hf_names: ClassVar[tuple[str, str]]  # transformers' config and model class names
    default_mean: ClassVar[tuple[float, ...]]
    default_std: ClassVar[tuple[float, ...]]
    default_fit: ClassVar[str]  # what the model's own image processor does: crop or squash
    pad_to_max: ClassVar[bool] = False

    def __init__(self, model, tokenizer, image: dict[str, Any]) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer
        self.image = self.image_defaults() | image  # folders saved before these keys existed
        self.max_text_len = model.config.text_config.max_position_embeddings

    @classmethod
    def hf_classes(cls) -> tuple[type, type]:
        """(config class, model class), imported from transformers on first use (the CLI
        starts faster without it)."""
        import transformers

        return tuple(getattr(transformers, name) for name in cls.hf_names)

    @property
    def image_size(self) -> int:
        return self.image["size"]

    def image_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        image = self.image
        return images_to_tensor(images, image["size"], image["mean"], image["std"],
                                image["fit"], image["interpolation"], image["resize_to"])

    def text_tensors(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> dict[str, torch.Tensor]:
        if self.pad_to_max and pad_to is None:
            pad_to = self.max_text_len
        if isinstance(self.tokenizer, HashTokenizer):
            return self.tokenizer(
                texts, max_length=pad_to or self.max_text_len, pad_to_max=pad_to is not None
            )
        return tokenize(self.tokenizer, texts, self.max_text_len, pad_to)

    def architecture(self) -> dict[str, Any]:
        return {
            "config": self.model.config.to_dict(),
            "image": self.image,
            "tokenizer": "hash" if isinstance(self.tokenizer, HashTokenizer) else "hf",
        }

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> HFDualEncoderAdapter:
        config_cls, model_cls = cls.hf_classes()
        config = config_cls.from_dict(arch["config"])
        model = model_cls(config)
        saved = saved_tokenizer(folder, "text tower") if arch.get("tokenizer") == "hf" else None
        tokenizer = load_tokenizer(saved) if saved is not None else cls.hash_tokenizer(config)
        return cls(model, tokenizer, arch["image"])

    def save_assets(self, folder: Path) -> None:
        if not isinstance(self.tokenizer, HashTokenizer):
            self.tokenizer.save_pretrained(str(folder / "tokenizer"))

    @classmethod
    def hash_tokenizer(cls, config) -> HashTokenizer:
        tc = config.text_config
        return HashTokenizer(
            tc.vocab_size,
            tc.max_position_embeddings,
            getattr(tc, "bos_token_id", None),
            tc.eos_token_id,
            tc.pad_token_id if tc.pad_token_id is not None else 0,
            pad_to_max=cls.pad_to_max,
        )

    @classmethod
    def from_folder(cls, folder: Path) -> HFDualEncoderAdapter:
        """Load pretrained weights, tokenizer and image settings from a local folder."""
        model = pretrained(cls.hf_classes()[1], folder).float()
        if has_tokenizer(folder):
            tokenizer = load_tokenizer(folder)
        else:
            announce(f"{folder} has no tokenizer files: texts are tokenized by a word hash whose "
                     "ids carry no learned meaning (enough for speed and memory work, not for "
                     "quality figures); copy the tokenizer files into the folder")
            tokenizer = cls.hash_tokenizer(model.config)
        return cls(model, tokenizer, cls.image_settings(folder, model.config))

    @classmethod
    def image_defaults(cls) -> dict[str, Any]:
        """The image processor's settings this model family uses when a folder names none."""
        return {"mean": list(cls.default_mean), "std": list(cls.default_std),
                "fit": cls.default_fit, "interpolation": "bicubic", "resize_to": None}

    @classmethod
    def image_settings(cls, folder: Path | None, config) -> dict[str, Any]:
        """Resizing and normalisation as the folder's ``preprocessor_config.json`` says
        (mean, std; resize the shortest edge keeping the aspect ratio, or the whole image to
        height × width; the resampling filter; then a centre crop to the model's image size),
        else as the model family's processor does by default."""
        settings = {"size": config.vision_config.image_size} | cls.image_defaults()
        pre = folder / "preprocessor_config.json" if folder else None
        if not (pre and pre.is_file()):
            return settings
        data = json.loads(pre.read_text())
        settings["mean"] = list(data.get("image_mean", settings["mean"]))
        settings["std"] = list(data.get("image_std", settings["std"]))
        size = data.get("size")
        if isinstance(size, dict) and "shortest_edge" in size:
            settings["fit"], settings["resize_to"] = "crop", int(size["shortest_edge"])
        elif isinstance(size, dict) and "height" in size:  # the whole image, maybe then cropped
            settings["fit"], settings["resize_to"] = "squash", int(size["height"])
        elif isinstance(size, int):  # older processors: an int is the shortest edge
            settings["fit"], settings["resize_to"] = "crop", size
        settings["interpolation"] = _RESAMPLE.get(data.get("resample"), "bicubic")
        return settings

    @classmethod
    def random(cls, config) -> HFDualEncoderAdapter:
        """Full-size architecture with random weights (for speed and memory work)."""
        torch.manual_seed(0)
        model = cls.hf_classes()[1](config)
        return cls(model, cls.hash_tokenizer(config), cls.image_settings(None, config))


class CLIPAdapter(HFDualEncoderAdapter):
    name = "clip"
    hf_names = ("CLIPConfig", "CLIPModel")
    default_fit = "crop"  # CLIPImageProcessor: shortest edge, then a centre crop
    default_mean = (0.48145466, 0.4578275, 0.40821073)
    default_std = (0.26862954, 0.26130258, 0.27577711)

    def towers(self) -> dict[str, list[str]]:
        return {
            "vision": ["vision_model"],
            "text": ["text_model"],
            "projector": ["visual_projection", "text_projection"],
        }

    def embed_image_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def embed_text_tensors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.model.text_model(**inputs).pooler_output
        return F.normalize(self.model.text_projection(pooled), dim=-1)


class SiglipAdapter(HFDualEncoderAdapter):
    name = "siglip"
    hf_names = ("SiglipConfig", "SiglipModel")
    default_mean = (0.5, 0.5, 0.5)
    default_std = (0.5, 0.5, 0.5)
    default_fit = "squash"  # SiglipImageProcessor: the whole image to height × width
    pad_to_max = True  # SigLIP pools the last token and was trained on max-length padding

    def towers(self) -> dict[str, list[str]]:
        return {"vision": ["vision_model"], "text": ["text_model"]}

    def embed_image_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.vision_model(pixel_values=pixels).pooler_output, dim=-1)

    def token_mask(self, batch: Any) -> torch.Tensor:
        """Every position: the text tower runs without a mask and pools the last one, so the
        padding is part of what reaches the embedding."""
        return torch.ones_like(batch["input_ids"], dtype=torch.bool)

    def embed_text_tensors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model.text_model(input_ids=inputs["input_ids"])
        return F.normalize(out.pooler_output, dim=-1)
