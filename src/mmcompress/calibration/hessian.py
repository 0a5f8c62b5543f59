"""The layer-wise reconstruction Hessian H = 2·XᵀX/n: damping, dead inputs and the inverse
factor that GPTQ and SparseGPT walk column by column. One place for what both need."""

from __future__ import annotations

import torch

from ..errors import UserError


def damped(hessian: torch.Tensor, damp: float,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """H + damp · mean(diag H) · I, as a new `dtype` tensor."""
    h = hessian.to(dtype)
    mean_diag = h.diagonal().mean().clamp(min=1e-12)
    return h + damp * mean_diag * torch.eye(len(h), dtype=h.dtype)


def without_dead_inputs(weight: torch.Tensor,
                        hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 copies of (W, H) with every input that calibration never saw nonzero (H_jj = 0)
    given H_jj = 1 and zero weights, as the GPTQ reference does: such a column carries no
    signal, and H stays invertible."""
    w = weight.detach().float().clone()
    h = hessian.float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    return w, h


def inverse_hessian_factor(hessian: torch.Tensor, damp: float, method: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp · mean(diag H) · I)⁻¹, in H's dtype; `method` names
    the caller in the error raised when H is not positive definite even after damping."""
    try:
        inv = torch.cholesky_inverse(torch.linalg.cholesky(damped(hessian, damp, hessian.dtype)))
        return torch.linalg.cholesky(inv, upper=True)
    except RuntimeError:
        raise UserError(f"{method}: the layer's Hessian is not positive definite even after "
                        f"damping {damp}; raise 'damp' or use more calibration samples") from None
