"""Move an attention output projection's SmoothQuant division into the value projection.

The output projection reads softmax(QKᵀ)·V: every channel of its input is a weighted sum of the
same channel of V, so dividing that input by s equals dividing the value projection's output
channels by s. When both are `W8A8Linear`, that is exact without re-rounding anything: the value
layer's per-channel output scale and bias are divided by s, and the output projection drops its
run-time multiply (one pass over the activation per layer). Pairs are found by name, checked for
matching widths, and the model is checked on fixed inputs; every fold is undone if outputs move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..modules import W8A8Linear
from .smooth_fold import outputs_close

# (reader suffix, value-projection suffix): HF CLIP/SigLIP attention, BERT-style attention
VALUE_PAIRS: tuple[tuple[str, str], ...] = (
    ("self_attn.out_proj", "self_attn.v_proj"),
    ("attention.output.dense", "attention.self.value"),
)


def value_pairs(model: nn.Module) -> list[tuple[W8A8Linear, W8A8Linear]]:
    """(value, output) W8A8 pairs where the output projection divides its input at run time."""
    modules = dict(model.named_modules())
    pairs = []
    for name, out in modules.items():
        if not isinstance(out, W8A8Linear) or out.input_scale is None:
            continue
        for reader, value in VALUE_PAIRS:
            if name.endswith(reader):
                v = modules.get(name[: -len(reader)] + value)
                if isinstance(v, W8A8Linear) and v.out_features == out.in_features:
                    pairs.append((v, out))
    return pairs


@torch.no_grad()
def fold_value_scales(model: nn.Module, checks: list[Callable[[], Any]]) -> int:
    """Fold each pair's scales; returns how many were folded (0 if `checks` disagree)."""
    pairs = value_pairs(model)
    if not pairs:
        return 0
    with torch.inference_mode():
        before = [run() for run in checks]
    saved = [(v.weight_scale.clone(), None if v.bias is None else v.bias.clone(),
              out.input_scale.detach().clone()) for v, out in pairs]
    for v, out in pairs:
        v.divide_outputs(out.input_scale)
        out.set_input_scale(None)
    with torch.inference_mode():
        after = [run() for run in checks]
    if all(outputs_close(a, b) for a, b in zip(after, before)):
        return len(pairs)
    for (v, out), (scale, bias, s) in zip(pairs, saved):  # something reads V otherwise: undo
        v.restore_outputs(scale, bias)
        out.set_input_scale(s)
    return 0
