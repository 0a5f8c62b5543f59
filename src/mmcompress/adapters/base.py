"""Adapters: one small class per model family saying what the towers are and how to run them."""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..calibration.engine import CalibrationBatch, CalibrationData
from ..data.dataset import Dataset
from ..errors import CheckpointError, DataError
from ..progress import progress_bar

LATENCY_SEQ_LEN = 32


class Adapter(ABC):
    """Wraps one model: its towers, how to rebuild it, and how to run it."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[str]]
    default_data: ClassVar[str] = "demo"
    #: the model spec `model_specs.load_model` built this from (None: built in Python), which
    #: an output folder records as its base model for fidelity
    source: str | None = None
    #: summaries of the stages `compress` applied to this object since it was built or loaded
    #: (an output folder's own are in its manifest): each output records them all
    stages_applied: tuple[dict[str, Any], ...] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @contextlib.contextmanager
    def running(self, model: nn.Module) -> Iterator[None]:
        """Run `model` (a copy of this adapter's, say the uncompressed one) for the duration."""
        live, self.model = self.model, model
        try:
            yield
        finally:
            self.model = live

    @abstractmethod
    def towers(self) -> dict[str, list[str]]:
        """Tower name → module-name prefixes that form it."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """JSON-able description from which `from_architecture` rebuilds the empty model."""

    @classmethod
    @abstractmethod
    def from_architecture(cls, arch: dict[str, Any], folder: Path | None) -> Adapter:
        """Rebuild the model (random weights) from `architecture()` and assets in `folder`."""

    def save_assets(self, folder: Path) -> None:
        """Write what reloading needs besides weights (a tokenizer, say)."""

    @abstractmethod
    def latency_inputs(self, batch_size: int) -> dict[str, Callable[[], Any]]:
        """Per latency metric ('image', 'text'): a closure running that tower on a fixed batch."""

    def latency_text_tokens(self) -> int | None:
        """Tokens per text in `latency_inputs` (None: the model reads no text)."""
        return None

    #: inputs the model takes; calibration batches are built for each
    input_modalities: ClassVar[tuple[str, ...]] = ()

    def tower_modalities(self) -> dict[str, tuple[str, ...]]:
        """Which inputs reach each tower (``'*'``: modules outside every tower)."""
        return {"vision": ("image",), "text": ("text",), "audio": ("audio",),
                "*": self.input_modalities}

    def forward_modality(self, modality: str, batch: Any) -> Any:
        """Run the model on one preprocessed batch of `modality` (used by calibration)."""
        raise NotImplementedError(f"{self.name} takes no {modality} input")

    def preprocess(self, modality: str, items: Sequence[Any]) -> Any:
        """Turn raw items (images as arrays, texts as strings) into one model batch."""
        raise NotImplementedError(f"{self.name} takes no {modality} input")

    def token_mask(self, batch: Any) -> torch.Tensor | None:
        """[B, L] bool: the positions of a preprocessed text batch whose rows reach the
        model's output (padding does not), or None when the batch has no attention mask."""
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        return None if mask is None else mask.bool()

    def calibration_data(self, data: Dataset, samples: int, batch_size: int,
                         seed: int, text_tokens: int = 0) -> CalibrationData:
        """Up to `samples` random items per input modality of `data`, batched and preprocessed
        (images on every pass, so that calibration holds one batch of pixels, not all of them);
        with `text_tokens`, texts are drawn on past `samples` until their batches hold that
        many real tokens (or the texts run out). `CalibrationData.drawn` counts what was drawn.

        Raises:
            DataError: if the data holds nothing this model takes, or non-finite values.
        """
        rng = np.random.default_rng(seed)
        raw = {"image": data.images, "text": data.all_texts() if data.task != "sts"
               else data.texts + data.texts_b}
        batches: dict[str, list[Callable[[], Any]]] = {}
        drawn: dict[str, dict[str, int]] = {}
        for modality in self.input_modalities:
            items = raw.get(modality) or []
            present = [j for j, x in enumerate(items) if not _missing(x)]
            order = [present[k] for k in rng.permutation(len(present)).tolist()]
            count = drawn.setdefault(modality, {"examples": 0})
            tokens = text_tokens if modality == "text" else 0
            while count["examples"] < len(order) and (
                    count["examples"] < samples or count.get("tokens", 0) < tokens):
                n = count["examples"]
                chosen = order[n : n + (batch_size if n >= samples
                                        else min(batch_size, samples - n))]
                count["examples"] += len(chosen)
                forward = functools.partial(self.forward_modality, modality)
                if modality == "image":  # decoded on every pass: one batch in memory, not all
                    self._image_batch(data, chosen)  # decoded once now: bad values fail early
                    batches.setdefault(modality, []).append(CalibrationBatch(
                        forward, functools.partial(self._image_batch, data, chosen)))
                    continue
                batch = self.preprocess(modality, [items[j] for j in chosen])
                mask = self.token_mask(batch)
                if mask is not None:
                    count["tokens"] = count.get("tokens", 0) + int(mask.sum())
                else:
                    tokens = 0  # no mask to count real tokens by: `samples` only
                batches.setdefault(modality, []).append(CalibrationBatch(
                    forward, functools.partial(stored_inputs, batch), mask))
        if not batches:
            raise DataError(f"calibration data {data.name!r} is empty or holds no "
                            f"{' or '.join(self.input_modalities)} inputs")
        return CalibrationData(batches, {m: c for m, c in drawn.items() if c["examples"]})

    def _image_batch(self, data: Dataset, indices: list[int]) -> Any:
        return self.preprocess("image", [data.load_image(j) for j in indices])

    def check_finite(self) -> None:
        """Refuse weights or buffers holding NaN or Inf (a corrupted or diverged checkpoint);
        buffers a state dict leaves out (an audio window, say) are checked too."""
        for kind, named in (("weight", self.model.named_parameters()),
                            ("buffer", self.model.named_buffers())):
            for name, t in named:
                if t.is_floating_point() and not all_finite(t):
                    raise CheckpointError(f"{kind} {name!r} holds NaN or Inf values")


def all_finite(t: torch.Tensor, chunk: int = 1 << 18) -> bool:
    """Whether every value is finite, checked a slice at a time: a whole-tensor mask would
    add a byte per weight to the peak memory of loading a model."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def _missing(item: Any) -> bool:
    """A missing modality of one example (multimodal data): None, or an empty text."""
    return item is None or (isinstance(item, str) and not item.strip())


def stored_inputs(batch: Any) -> Any:
    """A calibration batch's inputs kept in memory (`CalibrationBatch.load`)."""
    return batch


class DualEncoderAdapter(Adapter):
    """Image–text dual encoders: normalised embeddings of both modalities in one space."""

    tasks = frozenset({"classification", "retrieval"})
    input_modalities = ("image", "text")

    def preprocess(self, modality: str, items: Sequence[Any]) -> Any:
        return self.image_tensor(items) if modality == "image" else self.text_tensors(items)

    def forward_modality(self, modality: str, batch: Any) -> Any:
        if modality == "image":
            return self.embed_image_tensor(batch)
        return self.embed_text_tensors(batch)
    max_text_len: int = 77

    @abstractmethod
    def image_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Preprocess HxWxC [0, 1] images into the image tower's input."""

    @abstractmethod
    def text_tensors(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenize texts (padded to `pad_to` tokens when given)."""

    @abstractmethod
    def embed_image_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings."""

    @abstractmethod
    def embed_text_tensors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised text embeddings."""

    @torch.inference_mode()
    def encode_images(
        self, images: Sequence[np.ndarray], batch_size: int = 64, progress: bool = False
    ) -> torch.Tensor:
        out = []
        for i in progress_bar(range(0, len(images), batch_size), desc="images", enabled=progress):
            out.append(self.embed_image_tensor(self.image_tensor(images[i : i + batch_size])))
        if not out:
            raise DataError("encode_images needs at least one image")
        return torch.cat(out)

    @torch.inference_mode()
    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> torch.Tensor:
        out = []
        for i in progress_bar(range(0, len(texts), batch_size), desc="texts", enabled=progress):
            out.append(self.embed_text_tensors(self.text_tensors(texts[i : i + batch_size])))
        if not out:
            raise DataError("encode_texts needs at least one text")
        return torch.cat(out)

    def latency_text_tokens(self) -> int | None:
        return min(LATENCY_SEQ_LEN, self.max_text_len)

    def latency_inputs(self, batch_size: int) -> dict[str, Callable[[], Any]]:
        rng = np.random.default_rng(0)
        size = self.image_size
        images = [rng.random((size, size, 3), dtype=np.float32) for _ in range(batch_size)]
        pixels = self.image_tensor(images)
        sentence = " ".join(["a photo of a small dog on the grass"] * 8)
        tokens = self.text_tensors([sentence] * batch_size, pad_to=self.latency_text_tokens())
        return {
            "image": lambda: self.embed_image_tensor(pixels),
            "text": lambda: self.embed_text_tensors(tokens),
        }

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the square image the image tower takes."""
