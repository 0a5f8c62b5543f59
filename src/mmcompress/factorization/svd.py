"""Truncated SVD of a weight matrix, plain or scaled by the layer's input statistics.

With a scaling S, the SVD is taken of W·S and S⁻¹ is folded back into the input-side factor:
W ≈ U_r Σ_r V_rᵀ S⁻¹. Choices of S:

- ``none``: S = I, the best rank-r approximation of W itself;
- ``cholesky`` (SVD-LLM): S = L with L·Lᵀ = XᵀX (damped), so ‖(W − Ŵ)·L‖ = ‖(W − Ŵ)·Xᵀ‖ and
  truncating the smallest singular values of W·L minimises the output error on the inputs X;
- ``asvd`` (ASVD): S = diag(mean|x|^α), a per-channel scaling that protects the input channels
  carrying large activations.

Whatever the scaling, the output error of every truncation on the calibration inputs follows
from H = XᵀX in closed form (U has orthonormal columns): ‖(W − Ŵ_r)·L‖² = Σ_{i>r} σ_i²·‖r_iᵀ L‖²
where r_i are the rows of Vᵀ S⁻¹. H is damped there as for the Cholesky factor (`damp` · mean
diagonal added), so every scaling's errors are on the same footing and a direction that no
calibration input reached still costs a little.

To match a reference model's outputs instead (asymmetric calibration), factor
`calibration.reference.reference_fit(W, …)` in place of W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..calibration.hessian import damped

Scaling = Literal["none", "cholesky", "asvd"]


@dataclass
class ScaledSVD:
    """``W ≈ u[:, :r] · diag(s[:r]) · rows[:r]``; `error[r]` is the relative error at rank r."""

    u: torch.Tensor  # [m, k]
    s: torch.Tensor  # [k], decreasing
    rows: torch.Tensor  # [k, n] = Vᵀ S⁻¹
    error: torch.Tensor  # [k + 1]: output (or weight) error at rank r / error at rank 0

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(up [m, r], down [r, n]) in float32, with √σ on each side so both are balanced."""
        root = self.s[:rank].sqrt()
        return (self.u[:, :rank] * root).float(), (root[:, None] * self.rows[:rank]).float()

    def energy_rank(self, energy: float) -> int:
        """Smallest rank whose relative `error` is at most 1 − `energy`: the share of the
        spectrum's energy kept, for plain SVD (weight error) and whitened SVD (where the
        output error is the whitened spectrum's); for ``asvd`` the share of the output's
        energy on the calibration inputs, which is not its scaled spectrum's."""
        kept = 1 - self.error
        return int(torch.nonzero(kept >= energy - 1e-12)[0, 0].clamp(min=1))


def cholesky_factor(hessian: torch.Tensor, damp: float, tries: int = 5) -> torch.Tensor:
    """Lower-triangular L with L·Lᵀ = H + λI, raising λ tenfold until H is positive definite.

    Raises:
        ValueError: if no damping up to ``damp · 10^(tries-1)`` makes it positive definite.
    """
    for i in range(tries):
        lower, info = torch.linalg.cholesky_ex(damped(hessian, damp * 10**i))
        if int(info) == 0:
            return lower
    raise ValueError("the inputs' covariance XᵀX is not positive definite even with damping "
                     f"{damp * 10 ** (tries - 1):g}")


def scaled_svd(
    weight: torch.Tensor,
    hessian: torch.Tensor | None = None,
    scaling: Scaling = "none",
    abs_mean: torch.Tensor | None = None,
    alpha: float = 0.5,
    damp: float = 0.01,
) -> ScaledSVD:
    """SVD of `weight` [m, n] under `scaling`; errors are output errors on the inputs whose
    covariance is `hessian` [n, n] when given, else weight errors.

    Raises:
        ValueError: a non-finite weight or statistic, or a scaling without its statistic.
    """
    w = weight.detach().double()
    if not torch.isfinite(w).all():
        raise ValueError("the weight holds NaN or Inf values")
    if hessian is not None and not torch.isfinite(hessian).all():
        raise ValueError("the calibration inputs' covariance XᵀX holds NaN or Inf values")
    if scaling == "cholesky":
        if hessian is None:
            raise ValueError("cholesky scaling needs the inputs' covariance")
        lower = cholesky_factor(hessian, damp)
        u, s, vh = torch.linalg.svd(w @ lower, full_matrices=False)
        rows = torch.linalg.solve_triangular(lower.T, vh.T, upper=True).T  # Vᵀ L⁻¹
    elif scaling == "asvd":
        if abs_mean is None:
            raise ValueError("asvd scaling needs the inputs' mean |x|")
        scale = abs_mean.double().clamp(min=1e-6) ** alpha
        scale = scale / scale.mean()
        u, s, vh = torch.linalg.svd(w * scale, full_matrices=False)
        rows = vh / scale
    else:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        rows = vh
    if hessian is None or scaling == "cholesky":
        contrib = s**2
    else:  # ‖r_iᵀ L‖² = r_iᵀ H r_i
        contrib = s**2 * ((rows @ damped(hessian, damp)) * rows).sum(1)
    tail = torch.cat([contrib.flip(0).cumsum(0).flip(0), contrib.new_zeros(1)])
    return ScaledSVD(u, s, rows, tail / tail[0].clamp(min=1e-300))
