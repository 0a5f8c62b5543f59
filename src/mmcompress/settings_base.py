"""The base of every settings model read from a recipe or given by a caller: stages, their
nested settings, calibration, evaluation and training."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Read strictly (unknown keys, text for a number or a boolean, and infinite or NaN numbers
    are refused; `recipe.plain_values` turns tuples and numpy numbers from Python into what
    YAML gives) and frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)
