"""Static activation ranges: the clipping threshold t of a symmetric per-tensor int8 grid.

Given calibration values of one layer's input (a bounded sample of rows) and the exact
max |x| over everything seen, an observer picks t; the activation scale is t / qmax.

- ``minmax``: t = max |x| (nothing is clipped).
- ``percentile``: t = the p-th percentile of |x| on the sample (clips rare outliers).
- ``mse``: t among candidates up to max |x| that minimises the mean squared quantization
  error (rounding plus clipping) on the sample; max |x| is always a candidate, so the
  chosen t is never worse than min-max on that sample.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import torch

Observer = Literal["minmax", "percentile", "mse"]
OBSERVERS: tuple[str, ...] = ("minmax", "percentile", "mse")

_MSE_VALUES = 1 << 18  # sample values scored per candidate threshold
_MSE_STEPS = 24  # candidates per round of the coarse-to-fine search


def qmax(bits: int) -> int:
    """Largest code of a signed symmetric grid of `bits` bits (127 for int8)."""
    return 2 ** (bits - 1) - 1


def percentile_threshold(values: torch.Tensor, percentile: float) -> float:
    """The `percentile`-th percentile of |values| (exact, via the k largest)."""
    flat = values.detach().reshape(-1).abs().float()
    if flat.numel() == 0:
        raise ValueError("no calibration values to take a percentile of")
    # ⌊(100 − p)·n / 100⌋ values lie above the threshold, counted exactly (p as written in
    # decimal): in floats (1 − 0.9)·10 is 0.999…, which truncated to 0 and gave the maximum
    above = int((100 - Fraction(str(float(percentile)))) * flat.numel() / 100)
    if above == 0:
        return float(flat.max())
    return float(torch.topk(flat, above + 1).values[-1])


def quantization_mse(values: torch.Tensor, threshold: float | torch.Tensor,
                     bits: int = 8) -> torch.Tensor | float:
    """Mean squared error of symmetric fake quantization of `values` clipped at `threshold`
    (a float, or a 1-d tensor of thresholds scored at once)."""
    q = qmax(bits)
    t = torch.as_tensor(threshold, dtype=torch.float32).clamp(min=1e-12)
    scale = (t / q).reshape(-1, 1)
    v = values.detach().reshape(1, -1).float()
    fake = torch.clamp(torch.round(v / scale), -q - 1, q) * scale
    err = ((fake - v) ** 2).mean(dim=1)
    return float(err) if t.dim() == 0 else err


def mse_threshold(values: torch.Tensor, abs_max: float, bits: int = 8,
                  seed: int = 0) -> float:
    """Clipping threshold in (0, abs_max] minimising quantization MSE on `values`.

    A coarse grid over (0, abs_max] is refined twice around its best point. Large samples
    are scored on a fixed random subset of `_MSE_VALUES` values.
    """
    flat = values.detach().reshape(-1).float()
    if flat.numel() > _MSE_VALUES:
        gen = torch.Generator().manual_seed(seed)
        flat = flat[torch.randperm(flat.numel(), generator=gen)[:_MSE_VALUES]]
    if abs_max <= 0:
        return 1.0  # an all-zero input: any scale is exact
    best_t, best_err = abs_max, quantization_mse(flat, abs_max, bits)
    lo, hi = 0.0, abs_max
    for _ in range(3):
        candidates = torch.linspace(lo, hi, _MSE_STEPS + 1)[1:]
        errs = torch.cat([quantization_mse(flat, c, bits) for c in candidates.split(8)])
        i = int(errs.argmin())
        if float(errs[i]) < best_err:
            best_t, best_err = float(candidates[i]), float(errs[i])
        step = (hi - lo) / _MSE_STEPS
        lo, hi = max(best_t - step, 0.0), min(best_t + step, abs_max)
    return best_t


def activation_threshold(values: torch.Tensor, abs_max: float, observer: Observer,
                         bits: int = 8, percentile: float = 99.99) -> float:
    """Clipping threshold of a static per-tensor activation grid.

    Args:
        values: sampled activations (any shape), already in the layer's quantized domain
            (for SmoothQuant: divided by the smoothing scales).
        abs_max: exact max |x| over every calibration value (the sample may miss it).
        observer: ``minmax``, ``percentile`` or ``mse``.
        bits: activation bits.
        percentile: used by ``percentile``.
    """
    if observer == "minmax":
        t = abs_max
    elif observer == "percentile":
        t = min(percentile_threshold(values, percentile), abs_max)
    elif observer == "mse":
        t = mse_threshold(values, abs_max, bits)
    else:
        raise ValueError(f"unknown observer {observer!r}; expected one of {OBSERVERS}")
    return t if t > 0 else 1.0


def activation_scale(values: torch.Tensor, abs_max: float, observer: Observer, bits: int = 8,
                     percentile: float = 99.99) -> float:
    """Static per-tensor scale (threshold / qmax) of a layer's input."""
    return activation_threshold(values, abs_max, observer, bits, percentile) / qmax(bits)
