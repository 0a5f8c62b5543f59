"""Paired bootstrap intervals: how far a difference between two models, measured on the same
examples, could move on another sample of examples of the same kind."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mmcompress.evaluation import metrics
from mmcompress.evaluation.metrics import class_embeddings, spearman


def paired_bootstrap(n: int, statistic: Callable[[torch.Tensor], float], reps: int = 1000,
                     seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile interval [low, high] of `statistic(index)` over `reps` resamples (with
    replacement) of the `n` example indices, rounded to 4 places; both models are scored on
    the same resample."""
    gen = torch.Generator().manual_seed(seed)
    values = sorted(statistic(torch.randint(n, (n,), generator=gen)) for _ in range(reps))
    tail = round((1 - level) / 2 * reps)
    return [round(values[tail], 4), round(values[reps - 1 - tail], 4)]


def _pair_cosines(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cosine of each STS pair from `eval_sts`'s embeddings (first sentences, then seconds)."""
    text = embeddings["text"]
    half = len(text) // 2
    return F.cosine_similarity(text[:half], text[half:], dim=-1)


def sts_difference_interval(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                            scores: Sequence[float], **kwargs) -> list[float]:
    """95% interval of Spearman(first) − Spearman(second) over resampled STS pairs (the
    embeddings as `eval_sts` returns them); with the reference model first, of a loss."""
    a, b = _pair_cosines(first), _pair_cosines(second)
    gold = torch.as_tensor(scores, dtype=torch.float64)

    def difference(index: torch.Tensor) -> float:
        g = gold[index].tolist()
        return spearman(a[index].tolist(), g) - spearman(b[index].tolist(), g)

    return paired_bootstrap(len(gold), difference, **kwargs)


def sts_loss_by_group(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                      scores: Sequence[float], groups: Sequence[str]) -> dict[str, float]:
    """Spearman(first) − Spearman(second) within each group of STS pairs (a loss, with the
    reference model first), rounded to 4 places, groups in order of first appearance."""
    a, b = _pair_cosines(first).tolist(), _pair_cosines(second).tolist()
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = {}
    for g, idx in members.items():
        gold = [scores[i] for i in idx]
        out[g] = round(spearman([a[i] for i in idx], gold) - spearman([b[i] for i in idx], gold),
                       4)
    return out


def zeroshot_correct(embeddings: dict[str, torch.Tensor], labels: Sequence[int],
                     n_classes: int) -> torch.Tensor:
    """Per image, 1.0 where zero-shot classification (as `eval_classification`) is right."""
    classes = class_embeddings(embeddings["text"], n_classes)
    return metrics.zeroshot_correct(embeddings["image"], classes, labels).double()


def zeroshot_difference_interval(first: dict[str, torch.Tensor],
                                 second: dict[str, torch.Tensor], labels: Sequence[int],
                                 n_classes: int, **kwargs) -> list[float]:
    """95% interval of top-1(first) − top-1(second) over resampled images; with the reference
    model first, of a drop."""
    diff = zeroshot_correct(first, labels, n_classes) - zeroshot_correct(second, labels,
                                                                         n_classes)
    return paired_bootstrap(len(diff), lambda index: float(diff[index].mean()), **kwargs)


def metric_difference_interval(key: str, first: dict[str, torch.Tensor],
                               second: dict[str, torch.Tensor], test, **kwargs) -> list[float]:
    """95% interval of `key` (``stsb_spearman`` or ``zeroshot_top1``) of `first` minus that of
    `second` embeddings on the `test` Dataset: resampled pairs, or resampled images."""
    if key == "stsb_spearman":
        return sts_difference_interval(first, second, test.scores, **kwargs)
    return zeroshot_difference_interval(first, second, test.labels, len(test.class_names),
                                        **kwargs)
