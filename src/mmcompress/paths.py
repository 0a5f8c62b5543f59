"""Where mmcompress keeps caches (never inside the project or ../shared)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$MMCOMPRESS_CACHE`, else `$XDG_CACHE_HOME/mmcompress`, else `~/.cache/mmcompress`."""
    if os.environ.get("MMCOMPRESS_CACHE"):
        return Path(os.environ["MMCOMPRESS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmcompress"
