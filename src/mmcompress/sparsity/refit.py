"""The kept weights refitted to a fixed mask: per output row, the exact least-squares solution
of the layer-wise reconstruction problem that SparseGPT solves approximately.

For row w, keep-set K and pruned set P, the error on the calibration inputs is
(w − ŵ) H (w − ŵ)ᵀ with ŵ_P = 0 and H = 2·XᵀX/n. Its minimiser satisfies H_KK ŵ_K = (H w)_K,
i.e. ŵ_K = w_K + H_KK⁻¹ H_KP w_P: the kept weights absorb what the pruned ones did (as in the
weight update of Boža 2024, solved directly). H is damped by a fraction of its mean diagonal,
as SparseGPT damps it, so a row whose inputs are (nearly) collinear stays near w.
"""

from __future__ import annotations

import torch

from ..calibration.hessian import damped


@torch.no_grad()
def refit_kept(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
               damp: float = 0.01, rows_per_solve: int = 64) -> torch.Tensor:
    """`weight` [rows, cols] with pruned entries zero and kept ones refitted to `hessian`
    [cols, cols]; rows with the same number of kept weights are solved together."""
    w = weight.double()
    h = damped(hessian, damp)
    target = w @ h  # (H w)ᵀ per row; H is symmetric
    out = torch.zeros_like(w)
    counts = keep.sum(1)
    for k in counts.unique().tolist():
        if k == 0:
            continue
        rows = (counts == k).nonzero().squeeze(1)
        for chunk in rows.split(rows_per_solve):
            kept = keep[chunk].nonzero()[:, 1].view(len(chunk), k)  # sorted per row
            h_kk = h[kept[:, :, None], kept[:, None, :]]
            rhs = target[chunk[:, None], kept]
            # H_KK is symmetric positive definite (damped): Cholesky, not a batched LU
            factor = torch.linalg.cholesky(h_kk)
            out[chunk[:, None], kept] = torch.cholesky_solve(rhs.unsqueeze(-1),
                                                             factor).squeeze(-1)
    return out.to(weight.dtype)
