"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights.

Per input channel j, s_j = max|X_j|^α / max|W_j|^(1−α). The layer computes
(x / s) · (W·diag(s))ᵀ, the same float function as x·Wᵀ, but the activation x / s has its
outlier channels divided down while the weight columns grow in proportion: α sets how much
of the difficulty moves from activations (hard: per-tensor static scales) to weights (easy:
per-output-channel scales). With ``alpha: auto``, each layer (or each group of layers
sharing an input) takes the alpha of a small grid whose rounded output on calibration inputs
is closest to the float output.
"""

from __future__ import annotations

from collections.abc import Callable

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


# -- choosing alpha from calibration data ----------------------------------------------------

ALPHA_GRID: tuple[float, ...] = tuple(i / 10 for i in range(1, 10))
SEARCH_ROWS = 512  # calibration input rows scored per candidate alpha

ActScale = Callable[[torch.Tensor, float], float]  # (smoothed sample, its max |x|) → scale


def _fake_w8(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 rounding of a [rows, cols] weight, as `W8A8Linear`."""
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
    return torch.round(weight / scale).clamp(-127, 127) * scale


def w8a8_error(x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor | None,
               act_scale: ActScale, reference: torch.Tensor | None = None) -> float:
    """Mean squared difference between the W8A8 output on input rows `x` [n, cols] (inputs
    divided by `s`, weight columns multiplied by it, both rounded) and the float x·Wᵀ."""
    w = weight.float()
    ref = x @ w.T if reference is None else reference
    xs, ws = (x, w) if s is None else (x / s, w * s)
    scale = act_scale(xs, float(xs.abs().max()))
    xq = torch.round(xs / scale).clamp(-128, 127) * scale
    return float(((xq @ _fake_w8(ws).T - ref) ** 2).mean())


def search_alpha(x: torch.Tensor, act_abs_max: torch.Tensor, weight: torch.Tensor,
                 act_scale: ActScale, grid: tuple[float, ...] = ALPHA_GRID) -> float:
    """The migration strength of `grid` whose W8A8 layer output on the calibration rows `x`
    is closest to the float output: an automatic alpha per layer, scored on the output as AWQ
    scores its scales. `weight` may stack several layers that read the same input (q, k and
    v), which then share one alpha."""
    x = x.float()
    if len(x) > SEARCH_ROWS:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:SEARCH_ROWS]]
    ref = x @ weight.float().T
    errors = [w8a8_error(x, weight, smoothing_scales(act_abs_max, weight, a), act_scale, ref)
              for a in grid]
    return grid[min(range(len(grid)), key=errors.__getitem__)]
