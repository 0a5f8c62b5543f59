"""Round-to-nearest weight quantization of linear layers and embedding tables."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PositiveInt
from torch import nn

from ..adapters import Adapter
from ..modules import QuantEmbedding, QuantLinear
from ..modules.replace import replace_modules
from ..progress import progress_bar
from ..quantization.grid import QuantGrid
from .base import MethodConfig, StageContext, register_method, selected


class WeightQuantConfig(MethodConfig):
    """Weight grid shared by weight-quantization methods."""

    bits: int = Field(8, ge=2, le=8, description="integer bits per weight")
    group_size: PositiveInt | None = Field(None, description="values per scale; null = per channel")
    symmetric: bool = True
    embeddings: bool = Field(True, description="also quantize embedding tables")

    def grid(self) -> QuantGrid:
        return QuantGrid(self.bits, self.group_size, self.symmetric)


class RTNConfig(WeightQuantConfig):
    method: str = "rtn"


def quantizable_kinds(config: WeightQuantConfig) -> tuple[type[nn.Module], ...]:
    return (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)


def check_group_size(modules: dict[str, nn.Module], config: WeightQuantConfig) -> None:
    """Refuse a group size that does not divide every selected layer's rows."""
    from ..errors import RecipeError

    g = config.group_size
    if g is None:
        return
    bad = [n for n, m in modules.items() if _row_length(m) % g]
    if bad:
        raise RecipeError(
            f"group_size {g} does not divide the input width of {len(bad)} "
            f"layer(s), e.g. {bad[0]} ({_row_length(modules[bad[0]])}); "
            "choose a common divisor, or null for per-channel"
        )


def _row_length(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.embedding_dim


@register_method("quantize", "rtn", RTNConfig)
def apply_rtn(adapter: Adapter, config: RTNConfig, context: StageContext) -> dict[str, Any]:
    """Round-to-nearest min-max quantization, per channel or per group."""
    modules = selected(adapter, config, quantizable_kinds(config))
    check_group_size(modules, config)
    grid = config.grid()
    replacements: dict[str, nn.Module] = {}
    for name, module in progress_bar(
        modules.items(), desc=f"rtn int{config.bits}", enabled=context.progress
    ):
        if isinstance(module, nn.Linear):
            replacements[name] = QuantLinear.from_linear(module, grid)
        else:
            replacements[name] = QuantEmbedding.from_embedding(module, grid)
    replace_modules(adapter.model, replacements)
    return {"modules": len(replacements)}
