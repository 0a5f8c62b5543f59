"""Shared parts of LiT-style dual encoders: a frozen MiniLM text tower and a cached image side.

The model must offer ``encode_image(pixels)`` and ``encode_text(input_ids, attention_mask)``
and keep its text tower under ``text``. What training changes (everything outside ``text.``)
is cached under `paths.cache_dir()` by a key of the training settings.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..io.atomic import write_file_atomic
from ..models.sentence_encoder import minilm_path
from ..paths import cache_dir
from ..progress import announce, warn
from .base import DualEncoderAdapter
from .tokenizers import load_tokenizer, saved_tokenizer, tokenize

TEXT_PREFIX = "text."


class FrozenTextAdapter(DualEncoderAdapter):
    """A dual encoder whose text tower is the pretrained MiniLM, with its tokenizer."""

    max_text_len = 32

    def __init__(self, model: nn.Module, tokenizer) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer

    def towers(self) -> dict[str, list[str]]:
        return {"vision": ["vision"], "text": ["text"], "projector": ["visual_projection"]}

    def architecture(self) -> dict[str, Any]:
        return self.model.architecture()

    def text_tensors(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, texts, self.max_text_len, pad_to)

    def embed_image_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def embed_text_tensors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(inputs["input_ids"], inputs["attention_mask"])

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))

    @staticmethod
    def tokenizer_for(folder: Path | None):
        """The tokenizer saved in output `folder`; MiniLM's own for a model built anew (None)."""
        saved = saved_tokenizer(folder, "text tower")
        return load_tokenizer(saved if saved is not None else minilm_path())


def cache_key(*settings: Any) -> str:
    """Short hash of JSON-able training settings: a new setting means a new cache file."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


_CACHED_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("cached_only", default=False)


@contextlib.contextmanager
def cached_only() -> Iterator[None]:
    """Within it, a built-in model missing from the cache is a `CheckpointError`, not a
    training run (for loads that are only worth their cost when cheap)."""
    token = _CACHED_ONLY.set(True)
    try:
        yield
    finally:
        _CACHED_ONLY.reset(token)


def load_or_train(model: nn.Module, name: str, key: str, train: Callable[[], Any],
                  frozen: tuple[str, ...] = (TEXT_PREFIX,)) -> None:
    """Load the trained weights (all but those under the `frozen` prefixes) from the cache, or
    run `train()` and cache them.

    `train` must set every trained weight (a broken cache may have left some half-loaded).
    A cache file that cannot be loaded is rebuilt, never trusted; writes are atomic.
    """
    path = cache_dir() / f"{name}-{key}.safetensors"
    trained_names = {n for n in model.state_dict() if not n.startswith(frozen)}
    if path.is_file():
        try:
            state = load_file(str(path))
            if set(state) != trained_names:
                raise ValueError("cached weights do not match the model")
            model.load_state_dict(state, strict=False)
            return
        except Exception:  # a broken cache is rebuilt, never trusted
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    if _CACHED_ONLY.get():
        raise CheckpointError(f"the built-in {name} model is not in the cache {path.parent}")
    try:  # a folder that cannot take the file is found before the training, not after it
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        warn(f"cannot write the cache folder {path.parent} ({exc.strerror}): the built-in "
             f"{name} model is trained for this run only; set MMCOMPRESS_CACHE to a writable "
             "folder to keep it")
        train()
        return
    announce(f"training the built-in {name} model on first use (a few minutes; cached in "
             f"{path.parent})")
    train()
    state = model.state_dict()
    trained = {n: state[n].detach().contiguous() for n in trained_names}
    try:
        write_file_atomic(path, lambda tmp: save_file(trained, str(tmp)))
    except OSError as exc:  # a full disk, say: the trained model still serves this run
        warn(f"cannot keep the built-in {name} model in {path.parent} ({exc.strerror}): it "
             "is used for this run only and trained again next time")
