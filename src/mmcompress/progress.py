"""Progress bars: shown on an interactive terminal, silent in logs and tests."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar, disabled when `enabled` is false, `TQDM_DISABLE` is set, or stderr is not
    a terminal (set `MMCOMPRESS_PROGRESS=1` to force it on)."""
    forced = os.environ.get("MMCOMPRESS_PROGRESS") == "1"
    show = enabled and not os.environ.get("TQDM_DISABLE") and (forced or sys.stderr.isatty())
    return tqdm(iterable, disable=not show, leave=False, dynamic_ncols=True, **kwargs)


def warn(message: str) -> None:
    """A `warning:` line on stderr, --quiet or not: something the user should act on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def announce(message: str) -> None:
    """One line on stderr before long silent work (training a built-in model on first use),
    even where no progress bar is drawn; nothing with `TQDM_DISABLE` (the CLI's --quiet)."""
    if not os.environ.get("TQDM_DISABLE"):
        print(f"note: {message}", file=sys.stderr, flush=True)
