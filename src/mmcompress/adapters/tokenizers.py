"""Hugging Face tokenizers from local folders only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")


@contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers' loading bars and expected warnings (e.g. unused pooler weights)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def pretrained(model_cls: Any, folder: str | Path, **kwargs: Any) -> Any:
    """`model_cls.from_pretrained` on a local folder, reading safetensors only (never a pickled
    ``pytorch_model.bin``) and quietly; a folder it cannot load is a `CheckpointError`."""
    from safetensors import SafetensorError

    try:
        with quiet_hf():
            return model_cls.from_pretrained(str(folder), local_files_only=True,
                                             use_safetensors=True, **kwargs)
    except RuntimeError as exc:  # transformers reports size mismatches in its log only
        mismatch = _size_mismatch(model_cls, Path(folder)) \
            if "mismatched_sizes" in str(exc) else None
        if mismatch is None:
            raise
        raise CheckpointError(f"cannot load {folder}: {mismatch}") from None
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() \
            else type(exc).__name__
        raise CheckpointError(f"cannot load {folder}: {first} (only safetensors weights are "
                              "read)") from None


def _size_mismatch(model_cls: Any, folder: Path) -> str | None:
    """The first weight of `folder`'s safetensors files whose shape differs from the one its
    config.json gives `model_cls` (built on the meta device: no memory), in words."""
    from safetensors import safe_open

    with quiet_hf(), torch.device("meta"):
        expected = model_cls(model_cls.config_class.from_pretrained(str(folder))).state_dict()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, no mapping)
                want = expected.get(key)
                got = list(f.get_slice(key).get_shape())
                if want is not None and list(want.shape) != got:
                    return (f"weight {key!r} in {file.name} has shape {got}, but its config.json "
                            f"makes it {list(want.shape)}")
    return None


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(folder: Path):
    """`AutoTokenizer` from a local folder; never downloads."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def saved_tokenizer(folder: Path | None, model: str) -> Path | None:
    """The ``tokenizer/`` folder of output `folder` (None when the model is built without
    one); an output saved without it is refused rather than read with another tokenizer."""
    if folder is None:
        return None
    saved = folder / "tokenizer"
    if not saved.is_dir():
        raise CheckpointError(f"{folder}: the {model}'s tokenizer/ folder is missing")
    return saved


def tokenize(
    tokenizer, texts: Sequence[str], max_length: int, pad_to: int | None
) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask, padded to the longest (or to `pad_to` tokens)."""
    enc = tokenizer(
        list(texts),
        padding="max_length" if pad_to else True,
        truncation=True,
        max_length=pad_to or max_length,
        return_tensors="pt",
    )
    out = {"input_ids": enc["input_ids"]}
    out["attention_mask"] = enc.get("attention_mask", torch.ones_like(enc["input_ids"]))
    return out
