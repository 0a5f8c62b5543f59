"""Progress bars: shown on an interactive terminal, silent in logs and tests."""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar, disabled when `enabled` is false, `TQDM_DISABLE` is set, or stderr is not
    a terminal (set `MMCOMPRESS_PROGRESS=1` to force it on)."""
    forced = os.environ.get("MMCOMPRESS_PROGRESS") == "1"
    show = enabled and not os.environ.get("TQDM_DISABLE") and (forced or sys.stderr.isatty())
    return tqdm(iterable, disable=not show, leave=False, dynamic_ncols=True, **kwargs)


_REPEAT: contextvars.ContextVar[bool] = contextvars.ContextVar("repeat", default=False)


@contextlib.contextmanager
def said_already() -> Iterator[None]:
    """Within it, `warn` and `announce` print nothing: work that repeats what the user was
    just told about (loading the same model again)."""
    token = _REPEAT.set(True)
    try:
        yield
    finally:
        _REPEAT.reset(token)


def warn(message: str) -> None:
    """A `warning:` line on stderr, --quiet or not: something the user should act on."""
    if not _REPEAT.get():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def announce(message: str) -> None:
    """One line on stderr before long silent work (training a built-in model on first use),
    even where no progress bar is drawn; nothing with `TQDM_DISABLE` (the CLI's --quiet)."""
    if not os.environ.get("TQDM_DISABLE") and not _REPEAT.get():
        print(f"note: {message}", file=sys.stderr, flush=True)
