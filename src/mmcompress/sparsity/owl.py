"""OWL (Yin et al. 2024, "Outlier Weighed Layerwise sparsity"): a sparsity per block.

Blocks whose Wanda scores |W_ij|·‖X_j‖ hold more outliers (scores above `threshold` times the
block's mean score) lose fewer weights. The outlier ratios are rescaled linearly to a spread of
`2·spread` around the target, so the mean over blocks stays the target sparsity; the weights
removed in all stay the target fraction when blocks are equally large.
"""

from __future__ import annotations

import torch


def outlier_ratio(scores: list[torch.Tensor], threshold: float) -> float:
    """Fraction of a block's scores above `threshold` × their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > threshold * flat.mean()).float().mean())


def owl_sparsities(ratios: dict[str, float], sparsity: float, spread: float
                   ) -> dict[str, float]:
    """Sparsity per block from its outlier ratio: target ± `spread`, most outliers least pruned.

    Equal ratios (or one block) give every block the target.
    """
    values = torch.tensor(list(ratios.values()), dtype=torch.float64)
    span = float(values.max() - values.min()) if len(values) else 0.0
    if span == 0.0:
        return dict.fromkeys(ratios, sparsity)
    keep = (values - values.min()) / span * (2 * spread)
    keep = keep - keep.mean() + (1 - sparsity)
    return {b: min(max(1 - float(k), 0.0), 0.99) for b, k in zip(ratios, keep, strict=True)}
