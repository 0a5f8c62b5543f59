"""Fold SmoothQuant scales into the LayerNorm that feeds a group of linear layers.

Dividing a layer's input by s at run time costs one pass over the activation per layer. When
the input is a LayerNorm's output, dividing the norm's weight and bias by s gives the same
tensor for free, and all layers reading it (q/k/v, or fc1) share one s, chosen from their
weights jointly as in the SmoothQuant paper. Which norm feeds which layers is found by
watching one forward pass (the layer's input *is* the norm's output tensor); whether the
norm's output goes anywhere else (a post-norm residual, say) cannot be seen from module hooks,
so the folded model is checked against the original on calibration batches and every fold is
undone if the outputs differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..calibration import CalibrationData, InputStatsCollector
from ..calibration.engine import TokenMask, mask_for, real_tokens
from ..modules.sparse import is_sparse
from ..quantization.smoothquant import (
    SEARCH_ROWS,
    ActScale,
    joint_smoothing_scales,
    search_alpha,
)

_TOLERANCE = 1e-3  # max |difference| / max |output| allowed after folding (float rounding)


class _NormWatch:
    """Per norm: which leaf modules read its output tensor, and statistics of that output
    over the rows its readers take as real (per-channel max |out| and up to `rows` sampled
    rows). A norm called twice in a pass (a cross-attention block's, on its own tokens and on
    the context) counts each output under the mask of the layer that reads it."""

    def __init__(self, model: nn.Module, rows: int) -> None:
        self.norms = {n: m for n, m in model.named_modules()
                      if isinstance(m, nn.LayerNorm) and m.weight is not None}
        self.readers: dict[str, set[str]] = {n: set() for n in self.norms}
        self.stats = {n: InputStatsCollector(max_rows=rows) for n in self.norms}
        self._mask: TokenMask | None = None  # the current batch's token mask
        self._live: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) → (norm, output)
        self._counted: set[int] = set()  # outputs already in their norm's statistics
        leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
        self.handles = [m.register_forward_hook(self._norm_hook(n)) for n, m in self.norms.items()]
        self.handles += [m.register_forward_pre_hook(self._reader_hook(n)) for n, m in leaves]

    def _norm_hook(self, name: str) -> Callable:
        def fn(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            self._live[id(out)] = (name, out)  # the reference keeps the id from being reused

        return fn

    def _reader_hook(self, name: str) -> Callable:
        def fn(_m: nn.Module, args: tuple) -> None:
            if not (args and isinstance(args[0], torch.Tensor) and id(args[0]) in self._live):
                return
            norm, out = self._live[id(args[0])]
            self.readers[norm].add(name)
            if id(out) not in self._counted:
                self._counted.add(id(out))
                x = real_tokens(out.detach(), mask_for(self._mask, name))
                if x.numel():
                    self.stats[norm].add(x.reshape(-1, x.shape[-1]).float())

        return fn

    def run(self, batches: list[Callable[[], Any]]) -> None:
        try:
            with torch.inference_mode():
                for run in batches:
                    self._mask = getattr(run, "token_mask", None)
                    run()
                    self._live.clear()
                    self._counted.clear()
        finally:
            for h in self.handles:
                h.remove()


@torch.no_grad()
def fold_into_norms(model: nn.Module, linears: dict[str, nn.Linear], calib: CalibrationData,
                    alpha: float | str, act_scale: ActScale | None = None) -> dict[str, float]:
    """Smooth the linears fed only by a LayerNorm by rescaling that norm and their weights
    in place; returns the alpha of each linear smoothed this way (none if the check fails).
    With `alpha` "auto", each norm's readers share the alpha that `search_alpha` finds with
    the static activation scales of `act_scale`."""
    if alpha == "auto" and act_scale is None:
        raise ValueError("alpha 'auto' needs the activation observer (act_scale)")
    batches = [b for bs in calib.batches.values() for b in bs]
    watch = _NormWatch(model, SEARCH_ROWS if alpha == "auto" else 0)
    watch.run(batches)
    plan = {norm: sorted(readers) for norm, readers in watch.readers.items()
            if readers and readers <= set(linears) and watch.stats[norm].rows}
    if not plan:
        return set()
    checks = [bs[0] for bs in calib.batches.values() if bs]
    with torch.inference_mode():
        before = [run() for run in checks]
    saved, chosen = {}, {}
    for norm_name, names in plan.items():
        norm, stats = watch.norms[norm_name], watch.stats[norm_name]
        weights = [linears[n].weight for n in names]
        a = alpha if alpha != "auto" else search_alpha(
            stats.sample, stats.abs_max, torch.cat([w.detach() for w in weights]), act_scale)
        chosen.update({n: a for n in names})
        s = joint_smoothing_scales(stats.abs_max, weights, a)
        saved[norm_name] = (norm.weight.detach().clone(),
                            None if norm.bias is None else norm.bias.detach().clone(),
                            [_copy_state(linears[n]) for n in names])
        norm.weight.div_(s.to(norm.weight.dtype))
        if norm.bias is not None:
            norm.bias.div_(s.to(norm.bias.dtype))
        for n in names:
            _scale_columns(linears[n], s)
    with torch.inference_mode():
        after = [run() for run in checks]
    if all(outputs_close(a, b) for a, b in zip(after, before)):
        return chosen
    for norm_name, (w, b, ws) in saved.items():  # a reader we cannot see: undo every fold
        norm = watch.norms[norm_name]
        norm.weight.copy_(w)
        if b is not None:
            norm.bias.copy_(b)
        for n, old in zip(plan[norm_name], ws):
            linears[n].load_state_dict(old)
    return {}


def _scale_columns(layer: nn.Module, s: torch.Tensor) -> None:
    """Multiply a plain or sparse layer's weight columns by `s` in place."""
    if is_sparse(layer):
        layer.scale_columns(s)
    else:
        layer.weight.mul_(s.to(layer.weight.dtype))


def _copy_state(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def outputs_close(a: Any, b: Any) -> bool:
    """Whether two model outputs (tensors, or dicts/tuples of them) agree within float
    rounding: max |a − b| / max |b| at most `_TOLERANCE`."""
    if isinstance(a, torch.Tensor):
        scale = b.abs().max().clamp(min=1e-6)
        return bool(((a - b).abs().max() / scale) <= _TOLERANCE)
    if isinstance(a, dict):
        return all(outputs_close(a[k], b[k]) for k in b)
    if isinstance(a, (tuple, list)):
        return all(outputs_close(x, y) for x, y in zip(a, b))
    return True
