"""Benchmark results JSON files: load (to merge runs into) and store (atomically)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mmcompress.io.atomic import write_text_atomic


def load(path: Path, default: dict | list | None = None) -> Any:
    """The parsed JSON in `path`, or a copy of `default` (``{}`` if None) when there is none."""
    path = Path(path)
    if not path.is_file():
        return {} if default is None else copy.deepcopy(default)
    return json.loads(path.read_text())


def store(path: Path, results: Any) -> None:
    """Write `results` as indented JSON ending with a newline, creating the parent folder;
    atomic: a failure (e.g. while serialising) leaves any earlier file as it was."""
    path = Path(path)
    text = json.dumps(results, indent=1, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
