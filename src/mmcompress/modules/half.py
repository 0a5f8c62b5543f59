"""`HalfWeight`: a linear, convolution or embedding layer whose weight is stored in fp16/bf16.

Computation stays in the input's dtype (the weight is upcast per call), so only storage halves.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RecipeError
from .registry import register_module
from .replace import conv_padding, not_reproducible

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _layer_args(module: nn.Module) -> dict[str, Any]:
    if why := not_reproducible(module):
        raise ValueError(f"cannot store {module} in half precision: {why}")
    if isinstance(module, nn.Linear):
        return {"kind": "linear"}
    if isinstance(module, nn.Conv2d):
        return {
            "kind": "conv2d",
            "stride": list(module.stride),
            "padding": list(conv_padding(module)),
            "dilation": list(module.dilation),
            "groups": module.groups,
        }
    if isinstance(module, nn.Embedding):
        return {"kind": "embedding", "padding_idx": module.padding_idx}
    raise TypeError(f"cannot store {type(module).__name__} in half precision")


@register_module
class HalfWeight(nn.Module):
    """Half-precision storage of one layer's weight; bias (if any) stays float32."""

    def __init__(self, args: dict[str, Any], shape: list[int], bias: bool, dtype: str) -> None:
        super().__init__()
        self.args, self.dtype_name = dict(args), dtype
        self.register_buffer("half_weight", torch.zeros(shape, dtype=DTYPES[dtype]))
        self.bias = nn.Parameter(torch.zeros(shape[0]), requires_grad=False) if bias else None

    @classmethod
    def from_module(cls, module: nn.Module, dtype: str = "fp16") -> HalfWeight:
        bias = getattr(module, "bias", None)
        mod = cls(_layer_args(module), list(module.weight.shape), bias is not None, dtype)
        mod.half_weight.copy_(module.weight.detach())
        if not torch.isfinite(mod.half_weight).all():
            top = float(module.weight.detach().abs().max())
            raise RecipeError(f"a weight of magnitude {top:.4g} does not fit in {dtype} (at most "
                              f"{torch.finfo(DTYPES[dtype]).max:.6g}); use dtype: bf16")
        if bias is not None:
            mod.bias.data.copy_(bias.detach().float())
        return mod

    @property
    def weight(self) -> torch.Tensor:
        return self.half_weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.args
        if a["kind"] == "embedding":
            return F.embedding(x, self.half_weight, a["padding_idx"]).float()
        w = self.half_weight.to(x.dtype)
        if a["kind"] == "linear":
            return F.linear(x, w, self.bias)
        return F.conv2d(x, w, self.bias, a["stride"], a["padding"], a["dilation"], a["groups"])

    def logical_params(self) -> int:
        return self.half_weight.numel() + (self.bias.numel() if self.bias is not None else 0)

    def spec(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "args": self.args,
            "shape": list(self.half_weight.shape),
            "bias": self.bias is not None,
            "dtype": self.dtype_name,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> HalfWeight:
        return cls(spec["args"], spec["shape"], spec["bias"], spec["dtype"])

    def extra_repr(self) -> str:
        return f"{self.args['kind']}, shape={list(self.half_weight.shape)}, {self.dtype_name}"
