"""Layer-wise pruning by ADMM with a gradual mask (Boža, "Fast and Effective Weight Update for
Pruned Large Language Models", 2024).

The layer's reconstruction problem, min ‖(W − Ŵ)X‖² with Ŵ sparse, is split into a dense copy
Ŵ and a sparse copy Z tied by Ŵ = Z (scaled dual U). Each iteration solves the dense least
squares step in closed form, Ŵ = (W·H + ρ(Z − U))(H + ρI)⁻¹, projects Ŵ + U onto the sparsity
pattern by magnitude to get Z, and moves U by Ŵ − Z. Columns are first scaled by ‖X_j‖ (so
that the magnitude projection of the first step is Wanda's score), and the projection's
sparsity rises along a cubic schedule over the first three quarters of the iterations: weights
leave the mask a few at a time while the others absorb their work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..calibration.hessian import damped
from .masks import keep_mask

RAMP = 0.75  # share of the iterations over which the sparsity rises to its target


@torch.no_grad()
def admm_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm_mask: Callable[[torch.Tensor], torch.Tensor] | None = None,
    per_row: bool = True,
    iterations: int = 40,
    rho: float = 1.0,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned weight with zeros outside the mask, keep-mask), both [rows, cols].

    Unstructured (no `nm_mask`): the final projections drop the lowest `sparsity` share of
    each row (or, with `per_row` false, of the layer). N:M: `nm_mask(scores)` gives the
    pattern's keep-mask (its sparsity is `sparsity`). On the way there, iteration t prunes only
    the lowest share s_t < `sparsity` of the weights the target would prune (per row, or of
    the layer), so the last projections have exactly the target's count and pattern. `rho` is
    relative to the scaled Hessian, whose diagonal is 1.
    """
    h = damped(hessian, damp)
    scale = h.diagonal().sqrt()
    h = h / scale[:, None] / scale[None, :]
    h.diagonal().add_(rho)
    solve = torch.cholesky_inverse(torch.linalg.cholesky(h)).float()  # (H + ρI)⁻¹, symmetric
    h.diagonal().sub_(rho)
    w = weight.detach().double() * scale
    target = (w @ h).float()  # W·H, the data term of every dense step
    w, scale = w.float(), scale.float()
    z, u = w.clone(), torch.zeros_like(w)
    ramp = max(1, round(RAMP * iterations))
    keep = torch.ones_like(w, dtype=torch.bool)
    for t in range(iterations):
        dense = (target + rho * (z - u)) @ solve
        scores = (dense + u).abs()
        step = min(t + 1, ramp) / ramp
        if step < 1:  # part-way: of what the target prunes, prune only the lowest share
            share = sparsity * (1 - (1 - step) ** 3)
            if nm_mask is not None:  # the pattern's top N of each group stay
                scores = scores.masked_fill(nm_mask(scores), float("inf"))
            keep = keep_mask(scores, share, None, per_row)
        else:
            keep = keep_mask(scores, sparsity, None, per_row) if nm_mask is None \
                else nm_mask(scores)
        z = (dense + u) * keep
        u += dense - z
    return z / scale, keep
