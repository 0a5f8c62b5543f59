"""Tucker-2 and CP decompositions of a convolution kernel [out, in, kh, kw] (with tensorly).

Tucker-2 keeps the spatial modes and reduces the channel modes: W ≈ core ×₀ U_out ×₁ U_in,
i.e. a 1×1 convolution (in → r_in), a kh×kw core (r_in → r_out) and a 1×1 (r_out → out).
CP writes W as R rank-one terms a_r ⊗ b_r ⊗ c_r ⊗ d_r: a 1×1 (in → R), a depthwise kh×1 and a
depthwise 1×kw over the R channels, and a 1×1 (R → out) — Lebedev et al. 2015.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConvShape:
    out: int
    inp: int
    kh: int
    kw: int

    @classmethod
    def of(cls, weight: torch.Tensor) -> ConvShape:
        return cls(*weight.shape)

    @property
    def dense_params(self) -> int:
        return self.out * self.inp * self.kh * self.kw

    def tucker_params(self, r_in: int, r_out: int) -> int:
        return self.inp * r_in + r_in * r_out * self.kh * self.kw + r_out * self.out

    def cp_params(self, rank: int) -> int:
        return rank * (self.inp + self.kh + self.kw + self.out)

    def tucker_ranks(self, fraction: float) -> tuple[int, int] | None:
        """Channel ranks in proportion to the channel counts, the largest whose weights are at
        most `fraction` of the dense kernel's (None if even rank 1 × 1 is too many)."""
        best, widest = None, max(self.inp, self.out)
        for k in range(1, widest + 1):
            r_in = min(self.inp, max(1, round(k * self.inp / widest)))
            r_out = min(self.out, max(1, round(k * self.out / widest)))
            if self.tucker_params(r_in, r_out) > fraction * self.dense_params:
                break
            best = (r_in, r_out)
        return best

    def cp_rank(self, fraction: float) -> int:
        """The largest CP rank whose weights are at most `fraction` of the dense kernel's."""
        return math.floor(fraction * self.dense_params / (self.inp + self.kh + self.kw + self.out))


def _kernel(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach().double().cpu()
    if not torch.isfinite(w).all():
        raise ValueError("the kernel holds NaN or Inf values")
    return w


def _torch_backend():
    """tensorly on torch tensors (so torch's thread settings apply), for this thread only."""
    import tensorly

    return tensorly.backend_context("pytorch", local_threadsafe=True)


def tucker2_conv(weight: torch.Tensor, r_in: int, r_out: int, n_iter_max: int = 20
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first [r_in, in], core [r_out, r_in, kh, kw], last [out, r_out]), float32, by HOOI
    initialised with the truncated HOSVD."""
    from tensorly.decomposition import partial_tucker

    with _torch_backend():
        (core, (u_out, u_in)), _ = partial_tucker(_kernel(weight), rank=[r_out, r_in],
                                                  modes=[0, 1], init="svd",
                                                  n_iter_max=n_iter_max)
    return u_in.T.contiguous().float(), core.contiguous().float(), u_out.contiguous().float()


def tucker2_project(weight: torch.Tensor, r_in: int, r_out: int,
                    bases: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The truncated-HOSVD reconstruction at ranks (r_in, r_out), for cheap error estimates.
    `bases`: the left singular vectors of the out- and in-mode unfoldings, if computed already."""
    w = weight.double()
    u_out, u_in = bases if bases is not None else hosvd_bases(w)
    p_out = u_out[:, :r_out] @ u_out[:, :r_out].T
    p_in = u_in[:, :r_in] @ u_in[:, :r_in].T
    return torch.einsum("oa,aihw,ij->ojhw", p_out, w, p_in)


def hosvd_bases(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors of the kernel's out-mode and in-mode unfoldings (float64)."""
    w = weight.double()
    u_out = torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)[0]
    u_in = torch.linalg.svd(w.transpose(0, 1).reshape(w.shape[1], -1), full_matrices=False)[0]
    return u_out, u_in


def cp_conv(weight: torch.Tensor, rank: int, n_iter_max: int = 100, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a [out, R], b [in, R], c [kh, R], d [kw, R]), float32, by CP-ALS; each rank-one term's
    scale is spread evenly over its four vectors, so no factor is much larger than another."""
    from tensorly.decomposition import parafac

    w = _kernel(weight)
    with warnings.catch_warnings(), _torch_backend():
        warnings.simplefilter("ignore", UserWarning)  # an SVD init asks for more vectors than kh
        cp = parafac(w, rank, init="svd", n_iter_max=n_iter_max, tol=1e-6,
                     random_state=seed, normalize_factors=True)
    lam = cp.weights
    scale = lam.abs() ** 0.25
    out = [f * scale for f in cp.factors]
    out[0] = out[0] * torch.sign(lam)
    return tuple(f.contiguous().float() for f in out)
