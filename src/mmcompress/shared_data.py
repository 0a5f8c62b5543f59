"""Where the shared real data lives (``../shared/data`` beside the project, read-only)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

SHARED_DATA_ENV = "MMCOMPRESS_SHARED_DATA"


def shared_data_dir(sub: str) -> Path:
    """`$MMCOMPRESS_SHARED_DATA/sub`, else `<cwd>/../shared/data/sub`; it must exist.

    Raises:
        DataError: naming where it looked and how to point elsewhere.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    root = Path(env).expanduser() if env else Path.cwd().parent / "shared" / "data"
    folder = root / sub
    if not folder.exists():
        raise DataError(
            f"shared data {folder} not found; run from the project folder beside ../shared, "
            f"or set {SHARED_DATA_ENV} to the folder holding {sub}/"
        )
    return folder
