"""SparseGPT (Frantar & Alistarh, 2023): prune a weight column by column, pushing each pruned
weight's loss onto the not-yet-visited columns through the inverse Hessian of the layer's
reconstruction loss, H = 2·XᵀX/n — GPTQ's update with "set to zero" in place of "round".

The mask is chosen adaptively, one block of columns at a time, from the error-updated weights:
by the OBS saliency w² / [H⁻¹]²_jj over the whole block (unstructured), within each row of the
block (unstructured, `per_row`), or over each group of M columns row by row (N:M).
"""

from __future__ import annotations

import torch

from ..calibration.hessian import inverse_hessian_factor, without_dead_inputs
from .masks import NM, drop_lowest, drop_lowest_per_row, nm_keep_mask, pruned_count, row_counts


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: NM | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    per_row: bool = False,
    act_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(updated weight with the pruned entries at zero, keep-mask), both [rows, cols].

    Unstructured masks remove exactly ``round(sparsity · rows · cols)`` weights: each block
    gets the share that brings the running total to ``round(sparsity · rows · end_column)``,
    chosen across the whole block (the paper's), or with `per_row` within each row: every row
    prunes its share of the total (counts differ by at most one) spread evenly over its blocks
    (Wanda's per-output comparison). `act_order` (unstructured only) visits the columns by
    decreasing Hessian diagonal, as GPTQ's act-order does.
    """
    if act_order:
        if nm is not None:
            raise ValueError("act_order orders an unstructured mask's columns, not N:M groups")
        perm = torch.argsort(hessian.diagonal(), descending=True, stable=True)
        w, keep = sparsegpt_prune(weight[:, perm], hessian[perm][:, perm], sparsity, None, damp,
                                  block_size, per_row)
        back = torch.argsort(perm)
        return w[:, back], keep[:, back]
    w, h = without_dead_inputs(weight, hessian)  # always-zero inputs: their weights go first
    rows, cols = w.shape
    hinv = inverse_hessian_factor(h, damp, "SparseGPT")
    if nm is not None:  # groups of M columns must not straddle two blocks
        block_size = max(nm[1], block_size // nm[1] * nm[1])
    keep = torch.ones(rows, cols, dtype=torch.bool)
    pruned = 0
    counts = row_counts((rows, cols), sparsity) if per_row else None
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        block = w[:, b0:b1].clone()
        hb = hinv[b0:b1, b0:b1]
        d = hb.diagonal()
        if nm is None and per_row:  # each row's count spread evenly over its blocks
            k = _share(counts, b1, cols) - _share(counts, b0, cols)
            bkeep = drop_lowest_per_row(block.pow(2) / d.pow(2), k)
        elif nm is None:
            k = min(pruned_count(rows * b1, sparsity) - pruned, block.numel())
            bkeep = drop_lowest(block.pow(2) / d.pow(2), k)
            pruned += k
        else:
            bkeep = torch.ones_like(block, dtype=torch.bool)
        out = torch.zeros_like(block)
        err = torch.zeros_like(block)
        for i in range(b1 - b0):
            if nm is not None and i % nm[1] == 0:
                span = slice(i, i + nm[1])
                bkeep[:, span] = nm_keep_mask(block[:, span].pow(2) / d[span].pow(2), nm)
            col = block[:, i]
            out[:, i] = col * bkeep[:, i]
            e = (col - out[:, i]) / hb[i, i]
            block[:, i:] -= e[:, None] * hb[i, i:][None, :]
            err[:, i] = e
        w[:, b0:b1] = out
        keep[:, b0:b1] = bkeep
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return w, keep


def _share(counts: torch.Tensor, end: int, cols: int) -> torch.Tensor:
    """Each row's part of `counts` that falls in its first `end` columns (rounded half up)."""
    return torch.div(counts * end * 2 + cols, 2 * cols, rounding_mode="floor")
