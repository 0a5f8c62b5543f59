"""Error types: a `UserError` is bad input and becomes one `error:` line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (recipe, paths, data, checkpoints). Printed as one line."""


class RecipeError(UserError):
    """A recipe that cannot be parsed or validated."""


class CheckpointError(UserError):
    """A saved model folder that is missing, truncated, altered or inconsistent."""


class DataError(UserError):
    """A data spec that cannot be read, or data that does not suit the model."""
