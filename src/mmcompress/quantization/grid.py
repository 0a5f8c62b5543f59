"""Uniform integer grids: group-wise scales and zero points, quantize and dequantize.

Weights are quantized along their last dimension (a linear layer's inputs, an embedding's
features, a convolution's flattened filter) in groups of `group_size`; ``None`` means one
group per row (per-channel). A row whose length is not a multiple of the group size ends
with a shorter group. Codes are stored unsigned: symmetric grids use the fixed zero point
``2**(bits-1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: what a weight quantizer returns: codes, scales and zero points (None: symmetric)
Quantized = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class QuantGrid:
    """How a weight is quantized."""

    bits: int
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        # recipes are validated where they are read; this guards grids read back from a file
        if type(self.bits) is not int or not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        if self.group_size is not None and (type(self.group_size) is not int
                                            or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer or none, got "
                             f"{self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be true or false, got {self.symmetric!r}")

    def width(self, cols: int) -> int:
        """Columns per group for rows of `cols` values."""
        return min(self.group_size or cols, cols)

    def groups(self, cols: int) -> int:
        """Number of groups per row (the last one may be shorter)."""
        return math.ceil(cols / self.width(cols))

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def midpoint(self) -> int:
        return 2 ** (self.bits - 1)


def _grouped(w: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    rows, cols = w.shape
    g, n = grid.width(cols), grid.groups(cols)
    return F.pad(w, (0, n * g - cols)).reshape(rows, n, g)


def expand_groups(t: torch.Tensor, grid: QuantGrid, cols: int) -> torch.Tensor:
    """A [rows, groups] tensor repeated to [rows, cols] (one value per weight)."""
    return t.repeat_interleave(grid.width(cols), dim=1)[:, :cols]


def compute_scales(w: torch.Tensor, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max scale (and zero point for asymmetric grids) per row group, shape [rows, groups].
    Zero padding of a short last group changes neither: the range always includes 0."""
    wg = _grouped(w.float(), grid)
    if grid.symmetric:
        scale = wg.abs().amax(dim=-1) / (grid.midpoint - 1)
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    lo = wg.amin(dim=-1).clamp(max=0)
    hi = wg.amax(dim=-1).clamp(min=0)
    scale = (hi - lo) / grid.qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, grid.qmax)
    return scale, zero


def _zero_points(scale: torch.Tensor, zero: torch.Tensor | None, grid: QuantGrid) -> torch.Tensor:
    return zero.float() if zero is not None else torch.full_like(scale, grid.midpoint)


def _on_grid(x: torch.Tensor, grid: QuantGrid, scale: torch.Tensor, zero: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a fresh float32 copy of `x` [rows, cols], the view of it to combine with per-group
    values, the scales and zero points laid out for that view). Full groups: a [rows, groups,
    width] view, the per-group values broadcast over it (no [rows, cols] copy of them); a short
    last group: the copy itself, the values repeated per weight."""
    out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    rows, cols = out.shape
    g, z = grid.width(cols), _zero_points(scale, zero, grid)
    if cols % g == 0:
        return out, out.view(rows, cols // g, g), scale.unsqueeze(-1), z.unsqueeze(-1)
    return out, out, expand_groups(scale, grid, cols), expand_groups(z, grid, cols)


def quantize(
    w: torch.Tensor, grid: QuantGrid, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Unsigned integer codes of `w` on the grid, shape of `w`, dtype uint8."""
    out, view, s, z = _on_grid(w, grid, scale, zero)
    view.div_(s).round_().add_(z)
    return out.clamp_(0, grid.qmax).to(torch.uint8)


def dequantize(
    codes: torch.Tensor, grid: QuantGrid, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Float32 values of unsigned `codes` (shape [rows, cols])."""
    out, view, s, z = _on_grid(codes, grid, scale, zero)
    view.sub_(z).mul_(s)
    return out


def fake_quantize(w: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Round `w` to the grid with min-max scales and return float values (for error analysis)."""
    scale, zero = compute_scales(w, grid)
    return dequantize(quantize(w, grid, scale, zero), grid, scale, zero).to(w.dtype)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in value, identity in gradient (straight-through estimator). The value is
    exactly ``torch.round(x)``: the added ``x - x.detach()`` is exactly zero."""
    return torch.round(x.detach()) + (x - x.detach())


def fake_quantize_ste(
    w: torch.Tensor, grid: QuantGrid, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """`dequantize(quantize(w))` with gradients, for quantization-aware training.

    The value equals the stored round trip bit for bit (same operations, same order), so a
    fake-quantized layer computes what its converted `QuantLinear` will. Gradients: straight
    through the rounding to `w` inside the grid's range, zero where clamped; to `scale` as in
    LSQ (Esser et al. 2020) when `scale` requires grad.
    """
    cols = w.shape[1]
    s = expand_groups(scale, grid, cols)
    z = expand_groups(_zero_points(scale, zero, grid), grid, cols)
    q = torch.clamp(round_ste(w.float() / s) + z, 0, grid.qmax)
    return (q - z) * s
