"""GPTQ (Frantar et al., 2023): quantize a weight column by column, pushing each column's
rounding error onto the not-yet-quantized columns through the inverse Hessian of the layer's
reconstruction loss, H = 2·XᵀX/n."""

from __future__ import annotations

import torch

from ..calibration.hessian import inverse_hessian_factor, without_dead_inputs
from .grid import QuantGrid, Quantized, compute_scales


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    grid: QuantGrid,
    damp: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    keep: torch.Tensor | None = None,
) -> Quantized:
    """Codes, scales and zero points of `weight` [rows, cols] (scales as `compute_scales`).

    A grouped convolution's `hessian` spans every input channel (groups × cols): each group
    of output channels reads only its own block of inputs, so it is quantized as a layer of
    its own with that diagonal block of the Hessian.

    With `keep` (a pruned layer's boolean mask, [rows, cols]) pruned weights stay zero: each
    is "quantized" to exactly 0 and its error (the updates earlier columns pushed onto it) is
    compensated like any rounding error, as SparseGPT does when it prunes and quantizes
    together; group scales are taken over kept weights only. Codes at pruned positions are
    the zero point: the sparse layer drops them.

    Group scales follow the original column order. Without `act_order` each group's scale is
    set when GPTQ reaches the group, from the error-updated weights, including the updates from
    earlier columns of the same block, on the group's columns past the block's end too: the
    column-by-column algorithm's scales, whatever `block_size` (the reference code reads a
    group that starts inside a block as the weights stood at the block's start); with
    `act_order` (columns by decreasing Hessian diagonal) all group scales are fixed up front
    ("static groups") so that groups stay contiguous in storage.
    """
    rows, cols = weight.shape
    groups = len(hessian) // cols
    if groups > 1 and len(hessian) == groups * cols and rows % groups == 0:
        r = rows // groups
        parts = [gptq_quantize(weight[g * r:(g + 1) * r],
                               hessian[g * cols:(g + 1) * cols, g * cols:(g + 1) * cols], grid,
                               damp, act_order, block_size,
                               None if keep is None else keep[g * r:(g + 1) * r])
                 for g in range(groups)]
        zeros = [z for _, _, z in parts]
        return (torch.cat([c for c, _, _ in parts]), torch.cat([s for _, s, _ in parts]),
                None if zeros[0] is None else torch.cat(zeros))
    w, h = without_dead_inputs(weight, hessian)
    kept = torch.ones_like(w) if keep is None else keep.reshape(rows, cols).float()
    w *= kept
    width = grid.width(cols)
    scale, zero = compute_scales(w, grid)  # final for per-channel and static groups
    zero_f = zero.float() if zero is not None else torch.full_like(scale, grid.midpoint)
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols)
    w, h, kept = w[:, perm], h[perm][:, perm], kept[:, perm]
    hinv = inverse_hessian_factor(h, damp, "GPTQ")
    codes = torch.zeros(rows, cols, dtype=torch.uint8)
    dynamic_groups = grid.group_size is not None and not act_order
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        block = w[:, b0:b1].clone()
        err = torch.zeros_like(block)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = int(perm[b0 + i])
            g = col // width
            if dynamic_groups and col % width == 0:
                # a group running past the block takes the block's updates so far there too
                tail = w[:, b1:b0 + i + width] - err @ hinv[b0:b1, b1:b0 + i + width]
                span = torch.cat([block[:, i:], tail], dim=1)[:, :width]
                span = span * kept[:, b0 + i:b0 + i + width]
                s, z = compute_scales(span, QuantGrid(grid.bits, None, grid.symmetric))
                scale[:, g], zero_f[:, g] = s[:, 0], (z[:, 0] if z is not None else grid.midpoint)
            q = torch.clamp(torch.round(block[:, i] / scale[:, g]) + zero_f[:, g], 0, grid.qmax)
            q = torch.where(kept[:, b0 + i] > 0, q, zero_f[:, g])  # a pruned weight: exactly 0
            codes[:, col] = q.to(torch.uint8)
            e = (block[:, i] - (q - zero_f[:, g]) * scale[:, g]) / hb[i, i]
            block[:, i:] -= e[:, None] * hb[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return codes, scale, None if grid.symmetric else zero_f.round().to(torch.uint8)
