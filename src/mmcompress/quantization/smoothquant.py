"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights.

Per input channel j, s_j = max|X_j|^α / max|W_j|^(1−α). The layer computes
(x / s) · (W·diag(s))ᵀ, the same float function as x·Wᵀ, but the activation x / s has its
outlier channels divided down while the weight columns grow in proportion: α sets how much
of the difficulty moves from activations (hard: per-tensor static scales) to weights (easy:
per-output-channel scales).
"""

from __future__ import annotations

import torch

_FLOOR = 1e-5  # keeps dead channels (max 0) from producing 0 or inf scales


def smoothing_scales(act_abs_max: torch.Tensor, weight: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """s [cols] for a [rows, cols] weight and the per-column max |x| of its input."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    w_max = weight.detach().abs().amax(dim=0).float().clamp(min=_FLOOR)
    x_max = act_abs_max.float().clamp(min=_FLOOR)
    return (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=_FLOOR)


def joint_smoothing_scales(act_abs_max: torch.Tensor, weights: list[torch.Tensor],
                           alpha: float) -> torch.Tensor:
    """One s for several layers reading the same input (q, k and v): max |W_j| is taken over
    all their weights."""
    return smoothing_scales(act_abs_max, torch.cat([w.detach() for w in weights]), alpha)


def migrate(weight: torch.Tensor, act_abs_max: torch.Tensor,
            alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W·diag(s), s): the smoothed weight and the scales its input is divided by."""
    s = smoothing_scales(act_abs_max, weight, alpha)
    return weight.float() * s, s
