"""OWL (Yin et al. 2024, "Outlier Weighed Layerwise sparsity"): a sparsity per block.

Blocks whose Wanda scores |W_ij|·‖X_j‖ hold more outliers (scores above `threshold` times the
block's mean score) lose fewer weights. The outlier ratios are rescaled linearly to a span of
`2·spread` (the paper's λ on either side), then shifted so that the weights removed in all are
the target fraction: the mean over blocks weighted by their weights, with each block's
sparsity kept in [0, 0.99].
"""

from __future__ import annotations

import torch


def outlier_ratio(scores: list[torch.Tensor], threshold: float) -> float:
    """Fraction of a block's scores above `threshold` × their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > threshold * flat.mean()).float().mean())


def owl_sparsities(ratios: dict[str, float], sparsity: float, spread: float,
                   sizes: dict[str, int] | None = None) -> dict[str, float]:
    """Sparsity per block from its outlier ratio, most outliers least pruned: the sparsities
    span 2·`spread` (less where clamped to [0, 0.99]) and remove `sparsity` of the weights of
    all blocks (`sizes`: weights per block; equal when not given).

    Equal ratios (or one block) give every block the target.
    """
    values = torch.tensor(list(ratios.values()), dtype=torch.float64)
    span = float(values.max() - values.min()) if len(values) else 0.0
    if span == 0.0:
        return dict.fromkeys(ratios, sparsity)
    offset = (values - values.min()) / span * (2 * spread)  # the most outliers: kept most
    weight = torch.tensor([float((sizes or {}).get(b, 1)) for b in ratios], dtype=torch.float64)

    def at(level: float) -> torch.Tensor:
        return (level - offset).clamp(0.0, 0.99)

    low, high = 0.0, 0.99 + 2 * spread  # removed share at `level`: rises from 0 to 0.99
    for _ in range(60):
        mid = (low + high) / 2
        if float((at(mid) * weight).sum() / weight.sum()) < sparsity:
            low = mid
        else:
            high = mid
    return {b: float(s) for b, s in zip(ratios, at((low + high) / 2), strict=True)}
