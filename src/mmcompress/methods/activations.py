"""Static activation quantization settings, shared by SmoothQuant and QAT."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..quantization.observers import OBSERVERS
from ..settings_base import Settings


class ActivationQuantConfig(Settings):
    """``activations: {bits: 8, observer: minmax|percentile|mse, percentile: 99.99}``."""

    bits: int = Field(8, description="activation bits (int8 kernels only)")
    observer: Literal["minmax", "percentile", "mse"] = Field(
        "minmax", description=f"how the static range is chosen: {', '.join(OBSERVERS)}")
    percentile: float = Field(99.99, gt=50, le=100, description="for observer: percentile")

    @field_validator("bits")
    @classmethod
    def _int8_only(cls, v: int) -> int:
        if v != 8:
            raise ValueError(f"activation bits must be 8 (the int8 kernels), got {v}")
        return v
