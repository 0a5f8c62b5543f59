"""Mask refinement by swaps (as in SparseSwaps, Zimmer et al., 2025): keep the weights as they
are and improve only which ones are kept, one swap of a pruned and a kept weight of the same row
(of the same group of M under N:M) at a time, while that lowers the row's output error.

For row w with pruned part r = w ⊙ (1 − m), the error on the calibration inputs is
E = r H rᵀ with H = 2·XᵀX/n (the uncentered Gram matrix of the inputs). With g = r H, restoring
a pruned weight j changes E by −2 w_j g_j + w_j² H_jj, pruning a kept weight k by
2 w_k g_k + w_k² H_kk, and doing both adds −2 w_j w_k H_jk. Wanda's score |w_j|·‖X_j‖ is the
diagonal of this objective; the swaps use the off-diagonal (correlated inputs) too. Every row
keeps its count of kept weights, so a mask's sparsity and N:M pattern are unchanged.
"""

from __future__ import annotations

import torch

from .masks import NM

DEFAULT_ROUNDS = 200  # MiniLM and CLIP layers stop before it (stage summary: swap_rounds_max)


def _best_unstructured(w: torch.Tensor, h: torch.Tensor, grow: torch.Tensor,
                       prune: torch.Tensor, candidates: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the best swap among the `candidates` best restores × best prunes."""
    t_grow = min(candidates, grow.shape[1])
    t_prune = min(candidates, prune.shape[1])
    gv, gi = grow.topk(t_grow, dim=1, largest=False)
    pv, pi = prune.topk(t_prune, dim=1, largest=False)
    cross = -2 * w.gather(1, gi)[:, :, None] * w.gather(1, pi)[:, None, :] \
        * h[gi[:, :, None], pi[:, None, :]]
    total = (gv[:, :, None] + pv[:, None, :] + cross).flatten(1)
    best, idx = total.min(dim=1)
    j = gi.gather(1, (idx // t_prune)[:, None]).squeeze(1)
    k = pi.gather(1, (idx % t_prune)[:, None]).squeeze(1)
    return best, j, k


def _best_nm(w: torch.Tensor, h: torch.Tensor, grow: torch.Tensor, prune: torch.Tensor,
             nm: NM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the best swap inside any group of M consecutive inputs (all pairs)."""
    m = nm[1]
    rows, cols = w.shape
    groups = cols // m
    blocks = h.view(groups, m, groups, m).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    wg = w.view(rows, groups, m)
    cross = -2 * wg[..., :, None] * wg[..., None, :] * blocks
    total = grow.view(rows, groups, m)[..., :, None] + prune.view(rows, groups, m)[..., None, :]
    best, idx = (total + cross).flatten(1).min(dim=1)
    group, pair = idx // (m * m), idx % (m * m)
    return best, group * m + pair // m, group * m + pair % m


@torch.no_grad()
def refine_by_swaps(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
                    nm: NM | None = None, rounds: int = DEFAULT_ROUNDS, candidates: int = 16,
                    tolerance: float = 1e-6) -> tuple[torch.Tensor, int]:
    """(refined keep-mask, rounds that made a swap): the mask has `keep`'s shape, count per
    row and N:M pattern.

    Each round makes at most one swap per row: the one that lowers the row's error most (among
    the `candidates` best restores × best prunes, unstructured; among all pairs of a group,
    N:M); a row stops when no swap lowers its error by more than `tolerance` of it.
    """
    w = weight.detach().float()
    h = hessian.detach().float()
    keep = keep.clone()
    diag = h.diagonal()
    r = w * ~keep
    g = r @ h
    error = (r * g).sum(1)
    square = w * w * diag
    rows = torch.arange(w.shape[0])
    done = 0
    for _ in range(rounds):
        grow = (square - 2 * w * g).masked_fill(keep, float("inf"))
        prune = (square + 2 * w * g).masked_fill(~keep, float("inf"))
        if nm is None:
            best, j, k = _best_unstructured(w, h, grow, prune, candidates)
        else:
            best, j, k = _best_nm(w, h, grow, prune, nm)
        better = best < -tolerance * error.clamp_min(1e-30)
        if not better.any():
            break
        i, j, k = rows[better], j[better], k[better]
        keep[i, j], keep[i, k] = True, False
        g[i] += w[i, k, None] * h[k] - w[i, j, None] * h[j]
        error[i] += best[better]
        done += 1
    return keep, done
