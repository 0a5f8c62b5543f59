"""Quality metrics over normalised embeddings. Accuracies are in [0, 1].

Equal scores go to the lowest index (the first class, the first caption), as `argmax` and a
stable sort give them: deterministic, but a model whose embeddings all collapse to one point
scores by how the labels happen to be ordered, not at chance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def class_embeddings(prompt_emb: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Average each class's prompt embeddings (laid out class-major) and renormalise."""
    return F.normalize(prompt_emb.view(n_classes, -1, prompt_emb.shape[-1]).mean(1), dim=-1)


def zeroshot_correct(image_emb: torch.Tensor, class_emb: torch.Tensor,
                     labels: Sequence[int]) -> torch.Tensor:
    """Per image, True where its nearest class embedding is its label's."""
    return (image_emb @ class_emb.T).argmax(dim=1) == torch.as_tensor(labels)


def zeroshot_top1(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: Sequence[int]) -> float:
    return float(zeroshot_correct(image_emb, class_emb, labels).float().mean())


def retrieval_recall(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    owner: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k both ways; `owner[j]` is the image index caption j describes."""
    owner_t = torch.as_tensor(owner)
    sim = image_emb @ text_emb.T  # [images, texts]
    out: dict[str, float] = {}
    text_rank = sim.argsort(dim=1, descending=True, stable=True)  # per image, captions
    image_rank = sim.T.argsort(dim=1, descending=True, stable=True)  # per caption, images
    for k in ks:
        hits_i2t = (owner_t[text_rank[:, :k]] == torch.arange(len(image_emb))[:, None]).any(1)
        hits_t2i = (image_rank[:, :k] == owner_t[:, None]).any(1)
        out[f"recall_i2t@{k}"] = float(hits_i2t.float().mean())
        out[f"recall_t2i@{k}"] = float(hits_t2i.float().mean())
    return out


def fidelity_cosine(
    embeddings: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> float:
    """Mean cosine between matching embeddings of the compressed and reference models,
    averaged over every item of every modality both have."""
    cos = [
        F.cosine_similarity(embeddings[k], reference[k], dim=-1)
        for k in embeddings
        if k in reference and len(embeddings[k]) == len(reference[k])
    ]
    return float(torch.cat(cos).mean()) if cos else float("nan")


def similarity_fidelity(
    embeddings: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> float:
    """Pearson correlation between the two models' cosine similarities of every pair of distinct
    items (all modalities both have, pooled when equally wide): 1 when a compression keeps which
    items are alike, even if it moves every embedding the same way (a rotation of the space
    lowers `fidelity_cosine` but not this)."""
    keys = [k for k in embeddings
            if k in reference and len(embeddings[k]) == len(reference[k])]
    widths = {embeddings[k].shape[-1] for k in keys}
    if not keys or len(widths) > 1:
        return float("nan")
    sims = []
    for emb in (embeddings, reference):
        x = F.normalize(torch.cat([emb[k] for k in keys]).double(), dim=-1)
        s = x @ x.T
        sims.append(s[~torch.eye(len(x), dtype=torch.bool)])
    a, b = (s - s.mean() for s in sims)
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


def _average_ranks(values: Sequence[float]) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64)
    order = torch.argsort(v, stable=True)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(len(v), dtype=torch.float64)
    uniq, inverse = torch.unique(v, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(v))
    return (sums / counts)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks (ties share a rank)."""
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))
