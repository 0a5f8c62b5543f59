"""Train a fusion classifier on tri-modal digits with the shared trainer (one CPU thread).

Besides the fused prediction, late and hybrid fusion train each modality's head on the digit
its own item shows (so a head stays right when the others are missing), and every model sees
modalities dropped at random from examples whose items agree (so missing inputs are familiar),
and each step draws one of several texts (other wordings, other typos) of each example's digit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.trimodal import TRAIN_PHRASES, digit_phrase
from ..training import TrainSettings, train

if TYPE_CHECKING:
    from ..adapters.fusion import FusionAdapter
    from ..data.trimodal import TrimodalSplit

TRAINING = {"epochs": 10, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-2, "seed": 0,
            "warmup": 0.05}
AUGMENT = {"drop_modality": 0.25, "max_shift_s": 0.1, "text_variants": 4}


def drop_modalities(present: torch.Tensor, agree: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each present modality with probability `p` where the items agree, keeping one."""
    drop = (torch.rand(present.shape) < p) & agree[:, None]
    kept = present & ~drop
    empty = ~kept.any(1)
    kept[empty] = present[empty]
    return kept


def fusion_loss(model: nn.Module, batch: dict[str, Any], labels: torch.Tensor,
                item_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the fused scores, plus each modality head on its own item's digit."""
    fused, parts = model.forward_parts(**batch)
    loss = F.cross_entropy(fused, labels)
    for i, logits in enumerate(parts.values()):
        use = batch["present"][:, i]
        if use.any():
            loss = loss + F.cross_entropy(logits[use], item_labels[use, i]) / len(parts)
    return loss


class FusionObjective:
    """The trainer's objective: `fusion_loss` on augmented batches of a tri-modal split."""

    def __init__(self, adapter: FusionAdapter, split: TrimodalSplit) -> None:
        self.model = adapter.model
        self.modules = nn.ModuleList()  # nothing trained besides the model
        data = split.data
        self.inputs = adapter.dataset_batch(data, range(len(data)))
        self.labels = torch.as_tensor(data.labels)
        items = torch.as_tensor(split.item_labels)
        self.agree = ((items == self.labels[:, None]) | (items < 0)).all(1)
        self.items = items.clamp(min=0)  # -1 (missing) is never used: not present
        self.max_shift = int(AUGMENT["max_shift_s"] * self.model.arch["audio_samples"])
        self.source = split.audio_source
        self.texts = self._text_variants(adapter, split.item_labels[:, 1])

    @staticmethod
    def _text_variants(adapter: FusionAdapter, digits: np.ndarray) -> torch.Tensor:
        """[variants, N, 2, max_text_len]: ids and mask of other texts of the same digits."""
        rng = np.random.default_rng(TRAINING["seed"])
        width = adapter.model.arch["max_text_len"]
        out = []
        for _ in range(AUGMENT["text_variants"]):
            texts = [digit_phrase(int(d), rng, TRAIN_PHRASES) if d >= 0 else None
                     for d in digits]
            ids, mask = adapter.tokenizer(texts)
            pad = (0, width - ids.shape[1])
            out.append(torch.stack([F.pad(ids, pad), F.pad(mask.long(), pad)], 1))
        return torch.stack(out)

    def __len__(self) -> int:
        return len(self.labels)

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        batch = {k: v[indices] for k, v in self.inputs.items()}
        batch["present"] = drop_modalities(batch["present"], self.agree[indices],
                                           AUGMENT["drop_modality"])
        shift = int(torch.randint(0, self.max_shift + 1, (1,)))
        batch["wave"] = torch.roll(batch["wave"], shift, dims=1)
        pick = self.texts[int(torch.randint(0, len(self.texts), (1,))), indices]
        batch["ids"], batch["text_mask"] = pick[:, 0], pick[:, 1].bool()
        return fusion_loss(self.model, batch, self.labels[indices], self.items[indices])

    def describe(self) -> dict[str, Any]:
        return {"objective": "fusion", "examples": len(self), "audio": self.source, **AUGMENT}


def train_fusion(adapter: FusionAdapter, split: TrimodalSplit,
                 progress: bool = True) -> dict[str, Any]:
    """Train `adapter.model` on `split`; returns the trainer's summary."""
    settings = TrainSettings(**TRAINING, evaluate=False, resume="never")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread hand-offs cost more than the work
    try:
        return train(adapter, FusionObjective(adapter, split), settings, progress=progress)
    finally:
        torch.set_num_threads(threads)
