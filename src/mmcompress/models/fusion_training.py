"""Train a fusion classifier on tri-modal digits with the shared trainer (one CPU thread).

Besides the fused prediction, late and hybrid fusion train each modality's head on the digit
its own item shows (so a head stays right when the others are missing), and every model sees
modalities dropped at random from examples whose items agree (so missing inputs are familiar),
and each step draws one of several texts (other wordings, other typos) of each example's digit.

Late and hybrid fusion weigh each modality's log-probabilities. The weights are fitted by
cross-validation on data unlike the training data in the way evaluation data is: for each of the
`FOLDS` divisions a twin model is trained on ``fit`` and scored on ``validation`` (speakers and
images it never saw); the weights that fit all those scores best go to the model itself, trained
on all of ``train``. The evaluation split is never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.trimodal import FOLDS, TRAIN_PHRASES, build_split, digit_phrase
from ..training import TrainSettings, train
from .fusion import MODALITIES, FusionClassifier, combine_late

if TYPE_CHECKING:
    from ..adapters.fusion import FusionAdapter
    from ..data.trimodal import TrimodalSplit

TRAINING = {"epochs": 10, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-2, "seed": 0,
            "warmup": 0.05}
AUGMENT = {"drop_modality": 0.25, "max_shift_s": 0.1, "text_variants": 4,
           "label_smoothing": 0.1}
MODALITY_WEIGHTS = {"folds": FOLDS, "penalty": 1e-3}


def drop_modalities(present: torch.Tensor, agree: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each present modality with probability `p` where the items agree, keeping one."""
    drop = (torch.rand(present.shape) < p) & agree[:, None]
    kept = present & ~drop
    empty = ~kept.any(1)
    kept[empty] = present[empty]
    return kept


def fusion_loss(model: nn.Module, batch: dict[str, Any], labels: torch.Tensor,
                item_labels: torch.Tensor, smooth: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the fused scores, plus each modality head on its own item's digit
    (label-smoothed by `smooth`: heads that are less sure of themselves on a new speaker
    mislead the late combination less)."""
    fused, parts = model.forward_parts(**batch)
    loss = F.cross_entropy(fused, labels, label_smoothing=smooth)
    for i, logits in enumerate(parts.values()):
        use = batch["present"][:, i]
        if use.any():
            loss = loss + F.cross_entropy(logits[use], item_labels[use, i],
                                          label_smoothing=smooth) / len(parts)
    return loss


class FusionObjective:
    """The trainer's objective: `fusion_loss` on augmented batches of a tri-modal split
    (`augment`: settings as in `AUGMENT`, the default)."""

    def __init__(self, adapter: FusionAdapter, split: TrimodalSplit,
                 augment: dict[str, Any] | None = None) -> None:
        self.augment = {**AUGMENT, **(augment or {})}
        self.model = adapter.model
        self.modules = nn.ModuleList()  # nothing trained besides the model
        data = split.data
        self.inputs = adapter.dataset_batch(data, range(len(data)))
        self.labels = torch.as_tensor(data.labels)
        items = torch.as_tensor(split.item_labels)
        self.agree = ((items == self.labels[:, None]) | (items < 0)).all(1)
        self.items = items.clamp(min=0)  # -1 (missing) is never used: not present
        self.max_shift = int(self.augment["max_shift_s"] * self.model.arch["audio_samples"])
        self.source = split.audio_source
        self.texts = self._text_variants(adapter, split.item_labels[:, 1],
                                         self.augment["text_variants"])

    @staticmethod
    def _text_variants(adapter: FusionAdapter, digits: np.ndarray,
                       variants: int) -> torch.Tensor:
        """[variants, N, 2, max_text_len]: ids and mask of other texts of the same digits."""
        rng = np.random.default_rng(TRAINING["seed"])
        width = adapter.model.arch["max_text_len"]
        out = []
        for _ in range(variants):
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
                                           self.augment["drop_modality"])
        shift = int(torch.randint(0, self.max_shift + 1, (1,)))
        batch["wave"] = torch.roll(batch["wave"], shift, dims=1)
        pick = self.texts[int(torch.randint(0, len(self.texts), (1,))), indices]
        batch["ids"], batch["text_mask"] = pick[:, 0], pick[:, 1].bool()
        return fusion_loss(self.model, batch, self.labels[indices], self.items[indices],
                           self.augment["label_smoothing"])

    def describe(self) -> dict[str, Any]:
        return {"objective": "fusion", "examples": len(self), "audio": self.source,
                **self.augment}


def train_fusion(adapter: FusionAdapter, split: TrimodalSplit, progress: bool = True,
                 augment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `adapter.model` on `split` (`augment` overrides `AUGMENT` entries); returns the
    trainer's summary."""
    settings = TrainSettings(**TRAINING, evaluate=False, resume="never")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread hand-offs cost more than the work
    try:
        return train(adapter, FusionObjective(adapter, split, augment), settings,
                     progress=progress)
    finally:
        torch.set_num_threads(threads)


CONDITIONS = ("as given", "no image", "no text", "no audio")


@dataclass
class Scores:
    """A model's scores on every example of a split, once per `CONDITIONS` entry: each
    modality's logits (late and hybrid fusion), the fused scores, the present mask, the labels
    and each row's condition (an index into `CONDITIONS`)."""

    parts: dict[str, torch.Tensor]
    fused: torch.Tensor
    present: torch.Tensor
    labels: torch.Tensor
    condition: torch.Tensor

    @staticmethod
    def cat(scores: list[Scores]) -> Scores:
        return Scores({m: torch.cat([s.parts[m] for s in scores]) for m in scores[0].parts},
                      *(torch.cat([getattr(s, f) for s in scores])
                        for f in ("fused", "present", "labels", "condition")))

    def accuracy(self, weights: torch.Tensor | None = None) -> dict[str, float]:
        """Top-1 per condition: of the fused scores, or of the modalities' logits recombined
        with `weights`."""
        scores = self.fused if weights is None else combine_late(self.parts, self.present,
                                                                 weights)
        right = (scores.argmax(1) == self.labels).float()
        return {c: right[self.condition == i].mean().item() for i, c in enumerate(CONDITIONS)}


@torch.no_grad()  # not inference mode: the weights are fitted on these tensors
def scored_conditions(adapter: FusionAdapter, split: TrimodalSplit) -> Scores:
    """`adapter`'s scores on every example of `split` under each of `CONDITIONS`."""
    data = split.data
    parts: dict[str, list[torch.Tensor]] = {}
    fused, present = [], []
    for drop in ((), *((m,) for m in MODALITIES)):
        batch = adapter.dataset_batch(data, range(len(data)), drop)
        out, logits = adapter.model.forward_parts(**batch)
        for m, v in logits.items():
            parts.setdefault(m, []).append(v)
        fused.append(out)
        present.append(batch["present"].bool())
    labels = torch.as_tensor(data.labels).repeat(len(present))
    condition = torch.arange(len(present)).repeat_interleave(len(data))
    return Scores({m: torch.cat(v) for m, v in parts.items()}, torch.cat(fused),
                  torch.cat(present), labels, condition)


def cross_validate(adapter: FusionAdapter, source: str, progress: bool = True,
                   augment: dict[str, Any] | None = None) -> Scores:
    """Scores of `FOLDS` twins of `adapter` (same architecture and initial weights), each
    trained on one ``fit`` split (`augment` as in `train_fusion`) and scored on its
    ``validation`` split, pooled."""
    scores = []
    for fold in range(FOLDS):
        twin = type(adapter)(FusionClassifier(**adapter.model.architecture()))
        twin.model.load_state_dict(adapter.model.state_dict())
        train_fusion(twin, build_split("fit", source, fold=fold), progress, augment)
        twin.model.eval()
        scores.append(scored_conditions(twin, build_split("validation", source, fold=fold)))
    return Scores.cat(scores)


def fit_modality_weights(scores: Scores) -> torch.Tensor:
    """The late-combination weights [3] that minimise the fused cross-entropy over `scores`
    (of data the scoring models were not trained on), largest weight 1; a small penalty on the
    log-weights keeps them defined when a modality barely matters."""
    log_w = torch.zeros(len(MODALITIES), requires_grad=True)
    opt = torch.optim.LBFGS([log_w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        fused = combine_late(scores.parts, scores.present, log_w.exp())
        loss = F.cross_entropy(fused, scores.labels) \
            + MODALITY_WEIGHTS["penalty"] * log_w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    weights = log_w.detach().exp()
    return weights / weights.max()


def train_fusion_model(adapter: FusionAdapter, source: str,
                       progress: bool = True) -> dict[str, Any]:
    """Train `adapter.model` on the ``train`` split; for late and hybrid fusion, first fit its
    modality weights on `cross_validate`'s scores."""
    weights = None
    if hasattr(adapter.model.fusion, "modality_weights"):
        weights = fit_modality_weights(cross_validate(adapter, source, progress))
    summary = train_fusion(adapter, build_split("train", source), progress=progress)
    if weights is not None:
        adapter.model.fusion.modality_weights.copy_(weights)
        summary["modality_weights"] = dict(zip(MODALITIES, weights.tolist(), strict=True))
    return summary
