"""Low-rank stages for convolutions: ``lowrank: {method: tucker | cp, ...}``.

Options per layer are ranks matching kept-weight fractions on a grid; with ``allocation:
sensitivity`` each option's output error on the calibration inputs is measured (Tucker: the
truncated-HOSVD reconstruction; CP: the CP-ALS fit itself, on a coarser grid). A fixed
``rank`` can go below the grid's smallest fraction; ``param_ratio`` cannot.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..adapters import Adapter
from ..calibration import HessianCollector
from ..factorization.conv import ConvShape, cp_conv, hosvd_bases, tucker2_conv, tucker2_project
from ..modules.lowrank import CPConv2d, TuckerConv2d, conv_args
from .base import StageContext, register_method
from .lowrank import (
    Factorizer,
    LowRankConfig,
    apply_lowrank,
    check_stats,
    check_weight,
)
from .rank_allocation import LayerOptions

TUCKER_GRID = [i / 40 for i in range(1, 40)]
CP_GRID = [i / 8 for i in range(1, 8)]  # each option is a CP-ALS fit: a coarser grid


class TuckerConfig(LowRankConfig):
    method: str = "tucker"

    def kinds(self) -> tuple[type[nn.Module], ...]:
        return (nn.Conv2d,)
    n_iter_max: int = Field(20, ge=0, description="HOOI refinement sweeps after the HOSVD")


class CPConfig(LowRankConfig):
    method: str = "cp"

    def kinds(self) -> tuple[type[nn.Module], ...]:
        return (nn.Conv2d,)
    n_iter_max: int = Field(50, ge=1, description="CP-ALS sweeps")


def _relative_output_error(weight: torch.Tensor, approx: torch.Tensor,
                           hessian: torch.Tensor) -> float:
    """‖(W − Ŵ)·Xᵀ‖² / ‖W·Xᵀ‖² with XᵀX = `hessian` (columns: channels × kernel)."""
    w = weight.double().reshape(len(weight), -1)
    d = w - approx.double().reshape(len(weight), -1)
    h = hessian.double()
    total = float(((w @ h) * w).sum())
    return float(((d @ h) * d).sum()) / max(total, 1e-300)


class _ConvFactorizer(Factorizer):
    kinds = (nn.Conv2d,)
    grid: list[float] = []

    def __init__(self, config: LowRankConfig) -> None:
        super().__init__(config)
        self.smallest = (f"the smallest ranks {config.method} searches (kept fractions down to "
                         f"{min(self.grid):g} per layer)")

    def supports(self, module: nn.Module) -> bool:
        try:
            conv_args(module)
        except ValueError:
            return False
        return bool(self._grid_options(ConvShape.of(module.weight)))

    def _grid_options(self, shape: ConvShape) -> list[tuple[int, Any]]:
        """(weights, choice) of each distinct choice the grid gives that saves weights."""
        seen: dict[Any, int] = {}
        for f in self.grid:
            choice = self.choice_for(shape, f)
            if choice is not None and self.params(shape, choice) < shape.dense_params:
                seen.setdefault(choice, self.params(shape, choice))
        return [(p, c) for c, p in seen.items()]

    def options(self, name: str, module: nn.Module, stats: HessianCollector | None
                ) -> LayerOptions:
        shape = ConvShape.of(module.weight)
        grid = self._grid_options(shape)
        if stats is None:
            return LayerOptions(shape.dense_params, [(p, 0.0, c) for p, c in grid])
        check_weight(name, module)
        check_stats(name, stats)
        losses = self.losses(name, module.weight.detach(), [c for _, c in grid], stats.hessian)
        return LayerOptions(shape.dense_params,
                            [(p, loss, c) for (p, c), loss in zip(grid, losses, strict=True)])

    def fixed(self, module: nn.Module) -> Any:
        shape = ConvShape.of(module.weight)
        choice = self.fixed_choice(shape, self.config.rank)
        return choice if self.params(shape, choice) < shape.dense_params else None

    def factor(self, name: str, module: nn.Module, choice: Any, stats: Any) -> nn.Module:
        check_weight(name, module)
        return self.build(name, module, choice)

    # filled in per decomposition
    def choice_for(self, shape: ConvShape, fraction: float) -> Any: ...
    def fixed_choice(self, shape: ConvShape, rank: int) -> Any: ...
    def params(self, shape: ConvShape, choice: Any) -> int: ...
    def losses(self, name: str, weight: torch.Tensor, choices: list,
               hessian: torch.Tensor) -> list: ...
    def build(self, name: str, module: nn.Conv2d, choice: Any) -> nn.Module: ...


class TuckerFactorizer(_ConvFactorizer):
    grid = TUCKER_GRID

    def choice_for(self, shape: ConvShape, fraction: float) -> tuple[int, int] | None:
        return shape.tucker_ranks(fraction)

    def fixed_choice(self, shape: ConvShape, rank: int) -> tuple[int, int]:
        return min(rank, shape.inp), min(rank, shape.out)

    def params(self, shape: ConvShape, choice: tuple[int, int]) -> int:
        return shape.tucker_params(*choice)

    def losses(self, name: str, weight: torch.Tensor, choices: list,
               hessian: torch.Tensor) -> list:
        bases = hosvd_bases(weight)
        return [_relative_output_error(weight, tucker2_project(weight, r_in, r_out, bases),
                                       hessian) for r_in, r_out in choices]

    def build(self, name: str, module: nn.Conv2d, choice: tuple[int, int]) -> TuckerConv2d:
        r_in, r_out = choice
        first, core, last = tucker2_conv(module.weight, r_in, r_out, self.config.n_iter_max)
        mod = TuckerConv2d(conv_args(module), [r_in, r_out])
        with torch.no_grad():
            mod.first.weight.copy_(first[:, :, None, None])
            mod.core.weight.copy_(core)
            mod.last.weight.copy_(last[:, :, None, None])
            if module.bias is not None:
                mod.last.bias.copy_(module.bias)
        return mod


class CPFactorizer(_ConvFactorizer):
    grid = CP_GRID

    def choice_for(self, shape: ConvShape, fraction: float) -> int | None:
        rank = shape.cp_rank(fraction)
        return rank if rank >= 1 else None

    def fixed_choice(self, shape: ConvShape, rank: int) -> int:
        return rank

    def params(self, shape: ConvShape, choice: int) -> int:
        return shape.cp_params(choice)

    def __init__(self, config: CPConfig) -> None:
        super().__init__(config)
        self.fits: dict[str, dict[int, tuple[torch.Tensor, ...]]] = {}  # kept from measuring

    def losses(self, name: str, weight: torch.Tensor, choices: list,
               hessian: torch.Tensor) -> list:
        fits = self.fits.setdefault(name, {})
        out = []
        for rank in choices:
            fits[rank] = cp_conv(weight, rank, self.config.n_iter_max)
            approx = torch.einsum("or,ir,hr,wr->oihw", *fits[rank])
            out.append(_relative_output_error(weight, approx, hessian))
        return out

    def build(self, name: str, module: nn.Conv2d, choice: int) -> CPConv2d:
        fit = self.fits.get(name, {}).get(choice)
        a, b, c, d = fit if fit is not None else cp_conv(module.weight, choice,
                                                         self.config.n_iter_max)
        mod = CPConv2d(conv_args(module), [choice])
        with torch.no_grad():
            mod.first.weight.copy_(b.T[:, :, None, None])
            mod.vertical.weight.copy_(c.T[:, None, :, None])
            mod.horizontal.weight.copy_(d.T[:, None, None, :])
            mod.last.weight.copy_(a[:, :, None, None])
            if module.bias is not None:
                mod.last.bias.copy_(module.bias)
        return mod


@register_method("lowrank", "tucker", TuckerConfig)
def apply_tucker(adapter: Adapter, config: TuckerConfig, context: StageContext) -> dict[str, Any]:
    """Tucker-2 of convolutions: 1×1 → k×k core → 1×1."""
    return apply_lowrank(adapter, TuckerFactorizer(config), context, "tucker")


@register_method("lowrank", "cp", CPConfig)
def apply_cp(adapter: Adapter, config: CPConfig, context: StageContext) -> dict[str, Any]:
    """CP decomposition of convolutions into 1×1, separable depthwise and 1×1 convolutions."""
    return apply_lowrank(adapter, CPFactorizer(config), context, "cp")
