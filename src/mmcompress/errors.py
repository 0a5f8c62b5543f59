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



def require_spec(value: object, what: str, other: type, error: type[UserError] = UserError
                 ) -> None:
    """Refuse a `what` spec that is neither a name, a path nor an `other`, with a one-line
    `error` rather than a TypeError from deep inside."""
    from pathlib import Path

    if not isinstance(value, str | Path | other):
        name = other.__name__
        article = "an" if name[0].lower() in "aeiou" else "a"
        raise error(f"{what} must be a name, a path or {article} {name}, not "
                    f"{type(value).__name__} {value!r:.60}")
    if isinstance(value, str) and not value.strip():  # Path("") would be the working folder
        raise error(f"{what} is empty: give a name or a path")
