"""AWQ (Lin et al., 2024): protect the weight channels that see large activations.

Per input channel j a scale s_j = mean|x_j|^α is searched over α ∈ [0, 1): the layer stores
Q(W·diag(s)) and divides its input by s, so salient channels get finer steps. The α with the
smallest output error on calibration inputs wins. An optional clipping search then shrinks
each group's range where that lowers the group's output error.
"""

from __future__ import annotations

import torch

from .grid import QuantGrid, compute_scales, dequantize, quantize


def _output_mse(x: torch.Tensor, w: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x @ w.T - ref) ** 2).mean())


def _fake(w: torch.Tensor, grid: QuantGrid, scale: torch.Tensor, zero) -> torch.Tensor:
    return dequantize(quantize(w, grid, scale, zero), grid, scale, zero)


@torch.no_grad()
def search_scales(weight: torch.Tensor, x: torch.Tensor, x_abs_mean: torch.Tensor,
                  grid: QuantGrid, n_grid: int = 20,
                  tie: int = 1) -> torch.Tensor:
    """Best per-column input scale s (shape [cols]) for `weight` [rows, cols] on inputs `x`
    [n, cols]. `tie` > 1 forces equal scales over consecutive runs of `tie` columns (the
    kernel positions of one convolution input channel)."""
    ref = x @ weight.T
    mean = x_abs_mean.clamp(min=1e-5)
    if tie > 1:
        mean = mean.view(-1, tie).mean(1).repeat_interleave(tie)
    best, best_s = float("inf"), torch.ones_like(mean)
    for k in range(n_grid):
        s = mean.pow(k / n_grid)
        s = s / (s.max() * s.min()).sqrt()
        ws = weight * s
        scale, zero = compute_scales(ws, grid)
        err = _output_mse(x / s, _fake(ws, grid, scale, zero), ref)
        if err < best:
            best, best_s = err, s
    return best_s


@torch.no_grad()
def search_clipping(weight: torch.Tensor, x: torch.Tensor, grid: QuantGrid,
                    ratios: int = 20, min_ratio: float = 0.5):
    """Scales (and zeros) after shrinking each row group's range by the ratio in
    [min_ratio, 1] that minimises that group's output error on `x`."""
    scale, zero = compute_scales(weight, grid)
    rows, cols = weight.shape
    width = grid.width(cols)
    best_err = torch.full(scale.shape, float("inf"))
    for r in torch.linspace(1.0, min_ratio, ratios):
        s_r, z_r = compute_scales(weight * r, grid)  # range shrunk by r
        delta = _fake(weight, grid, s_r, z_r) - weight
        err = torch.stack([((x[:, g0:g0 + width] @ delta[:, g0:g0 + width].T) ** 2).mean(0)
                           for g0 in range(0, cols, width)], dim=1)  # [rows, groups]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, s_r, scale)
        if zero is not None:
            zero = torch.where(better, z_r, zero)
    return scale, zero


@torch.no_grad()
def awq_quantize(weight: torch.Tensor, x: torch.Tensor, x_abs_mean: torch.Tensor,
                 grid: QuantGrid, clip: bool = True, n_grid: int = 20, tie: int = 1):
    """((codes, scale, zero), input_scale) for `weight` [rows, cols] given sampled inputs."""
    s = search_scales(weight, x, x_abs_mean, grid, n_grid, tie)
    ws = weight * s
    scale, zero = search_clipping(ws, x / s, grid) if clip else compute_scales(ws, grid)
    return (quantize(ws, grid, scale, zero), scale, zero), s
