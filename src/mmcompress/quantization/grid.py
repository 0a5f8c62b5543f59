"""Uniform integer grids: group-wise scales and zero points, quantize and dequantize.

Weights are quantized along their last dimension (a linear layer's inputs, an embedding's
features) in groups of `group_size`; ``None`` means one group per row (per-channel).
Codes are stored unsigned: symmetric grids use the fixed zero point ``2**(bits-1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantGrid:
    """How a weight is quantized."""

    bits: int
    group_size: int | None = None
    symmetric: bool = True

    def groups(self, in_features: int) -> int:
        """Number of groups per row for a row of `in_features` values."""
        g = self.group_size or in_features
        if in_features % g:
            raise ValueError(
                f"group_size {g} does not divide the row length {in_features}; "
                "choose a divisor or null (per-channel)"
            )
        return in_features // g

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1


def _grouped(w: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    rows, cols = w.shape
    return w.reshape(rows, grid.groups(cols), cols // grid.groups(cols))


def compute_scales(w: torch.Tensor, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max scale (and zero point for asymmetric grids) per row group, shape [rows, groups]."""
    wg = _grouped(w.float(), grid)
    if grid.symmetric:
        amax = wg.abs().amax(dim=-1)
        scale = amax / (2 ** (grid.bits - 1) - 1)
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    lo = wg.amin(dim=-1).clamp(max=0)
    hi = wg.amax(dim=-1).clamp(min=0)
    scale = (hi - lo) / grid.qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, grid.qmax)
    return scale, zero


def quantize(
    w: torch.Tensor, grid: QuantGrid, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Unsigned integer codes of `w` on the grid, shape of `w`, dtype uint8."""
    wg = _grouped(w.float(), grid)
    z = zero if zero is not None else torch.full_like(scale, 2 ** (grid.bits - 1))
    q = torch.round(wg / scale.unsqueeze(-1)) + z.unsqueeze(-1)
    return q.clamp(0, grid.qmax).to(torch.uint8).reshape(w.shape)


def dequantize(
    codes: torch.Tensor, grid: QuantGrid, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Float32 values of unsigned `codes` (shape [rows, cols])."""
    cg = _grouped(codes, grid).float()
    z = zero if zero is not None else torch.full_like(scale, 2 ** (grid.bits - 1))
    return ((cg - z.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(codes.shape)


def fake_quantize(w: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Round `w` to the grid with min-max scales and return float values (for error analysis)."""
    scale, zero = compute_scales(w, grid)
    return dequantize(quantize(w, grid, scale, zero), grid, scale, zero).to(w.dtype)
