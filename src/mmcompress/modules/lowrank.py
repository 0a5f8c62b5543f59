"""Low-rank replacement modules: a linear layer as two factors, a convolution as a chain.

The factors are ordinary `nn.Linear` / `nn.Conv2d` children, so a later stage selects and
quantizes them like any other layer (``fc1.down``, ``fc1.up``; ``conv.first`` …), and the
manifest rebuilds whatever replaced them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .registry import register_module
from .replace import conv_padding, filled


def breakeven_rank(out_features: int, in_features: int) -> float:
    """Rank at which two factors hold as many weights as the dense matrix: mn / (m + n)."""
    return out_features * in_features / (out_features + in_features)


def max_useful_rank(out_features: int, in_features: int) -> int:
    """Largest rank whose two factors hold fewer weights than the dense matrix (0: none)."""
    return math.ceil(breakeven_rank(out_features, in_features)) - 1


def _params(module: nn.Module) -> int:
    if hasattr(module, "logical_params"):
        return module.logical_params()
    return sum(p.numel() for p in module.parameters())


@register_module
class LowRankLinear(nn.Module):
    """``up(down(x))``: `down` maps in_features → rank (no bias), `up` rank → out_features."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        if not 1 <= rank < breakeven_rank(out_features, in_features):
            useful = max_useful_rank(out_features, in_features)
            raise ValueError(f"rank {rank} saves no parameters on a {out_features}×{in_features} "
                             f"layer (useful ranks: 1..{useful})")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor,
                     bias: torch.Tensor | None) -> LowRankLinear:
        """Build from ``up`` [out, r] and ``down`` [r, in] so that the weight is ``up @ down``."""
        mod = cls(down.shape[1], up.shape[0], up.shape[1], bias is not None)
        with torch.no_grad():
            mod.down.weight.copy_(down)
            mod.up.weight.copy_(up)
            if bias is not None:
                mod.up.bias.copy_(bias)
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """Truncated SVD of `linear`'s weight at `rank` (the best rank-r weight approximation)."""
        w = linear.weight.detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[:rank].sqrt()
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_factors((u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float(),
                                bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """Dense view ``up @ down`` (for model code that reads ``layer.weight``)."""
        return self.up.weight @ self.down.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def to_dense(self) -> nn.Linear:
        return filled(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None),
                      self.weight.float(), self.bias)

    def logical_params(self) -> int:
        """Parameters the factors hold (as dense layers would count them)."""
        return _params(self.down) + _params(self.up)

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "in_features": self.in_features,
                "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LowRankLinear:
        return cls(spec["in_features"], spec["out_features"], spec["rank"], spec["bias"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class _FactoredConv(nn.Module):
    """A 2-d convolution computed by a chain of smaller convolutions (children, in order)."""

    CHAIN: tuple[str, ...] = ()

    def __init__(self, conv: dict[str, Any], ranks: list[int]) -> None:
        super().__init__()
        self.conv, self.ranks = dict(conv), list(ranks)
        self.in_channels, self.out_channels = conv["in_channels"], conv["out_channels"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.CHAIN:
            x = getattr(self, name)(x)
        return x

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self, self.CHAIN[-1]).bias

    def to_dense(self) -> nn.Conv2d:
        c = self.conv
        return filled(nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"],
                                c["stride"], c["padding"], c["dilation"], 1, c["bias"]),
                      self.weight.float(), self.bias)

    def logical_params(self) -> int:
        return sum(_params(getattr(self, n)) for n in self.CHAIN)

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "conv": self.conv, "ranks": self.ranks}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> _FactoredConv:
        return cls(spec["conv"], spec["ranks"])

    def extra_repr(self) -> str:
        c = self.conv
        return f"{c['in_channels']}, {c['out_channels']}, kernel_size={c['kernel_size']}, " \
               f"ranks={self.ranks}"


def conv_args(conv: nn.Conv2d) -> dict[str, Any]:
    """What a factored convolution needs to know about the layer it replaces."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"cannot factor {conv}: only ungrouped, zero-padded convolutions "
                         "are supported")
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
            "kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
            "padding": list(conv_padding(conv)), "dilation": list(conv.dilation),
            "bias": conv.bias is not None}


def _pointwise(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


@register_module
class TuckerConv2d(_FactoredConv):
    """Tucker-2 on the channel modes: 1×1 (in → r_in), k×k core (r_in → r_out), 1×1 (→ out)."""

    CHAIN = ("first", "core", "last")

    def __init__(self, conv: dict[str, Any], ranks: list[int]) -> None:
        super().__init__(conv, ranks)
        r_in, r_out = ranks
        c = self.conv
        self.first = _pointwise(c["in_channels"], r_in)
        self.core = nn.Conv2d(r_in, r_out, c["kernel_size"], c["stride"], c["padding"],
                              c["dilation"], bias=False)
        self.last = _pointwise(r_out, c["out_channels"], c["bias"])

    @property
    def weight(self) -> torch.Tensor:
        u_in = self.first.weight.flatten(1)  # [r_in, in]
        u_out = self.last.weight.flatten(1)  # [out, r_out]
        return torch.einsum("oa,abhw,bi->oihw", u_out, self.core.weight, u_in)


@register_module
class CPConv2d(_FactoredConv):
    """Rank-R CP: 1×1 (in → R), depthwise kh×1, depthwise 1×kw, 1×1 (R → out)."""

    CHAIN = ("first", "vertical", "horizontal", "last")

    def __init__(self, conv: dict[str, Any], ranks: list[int]) -> None:
        super().__init__(conv, ranks)
        (r,) = ranks
        c = self.conv
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (c["kernel_size"], c["stride"], c["padding"],
                                                  c["dilation"])
        self.first = _pointwise(c["in_channels"], r)
        self.vertical = nn.Conv2d(r, r, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=r, bias=False)
        self.horizontal = nn.Conv2d(r, r, (1, kw), (1, sw), (0, pw), (1, dw), groups=r,
                                    bias=False)
        self.last = _pointwise(r, c["out_channels"], c["bias"])

    @property
    def weight(self) -> torch.Tensor:
        b = self.first.weight.flatten(1)  # [R, in]
        ch = self.vertical.weight[:, 0, :, 0]  # [R, kh]
        cw = self.horizontal.weight[:, 0, 0, :]  # [R, kw]
        a = self.last.weight.flatten(1)  # [out, R]
        return torch.einsum("or,ri,rh,rw->oihw", a, b, ch, cw)
