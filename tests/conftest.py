"""Shared fixtures: tiny in-process models, temporary caches, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _helpers import SHARED_DATA, tiny_clip_config


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches (the trained demo model) go to a session temp folder unless one is given."""
    if not os.environ.get("MMCOMPRESS_CACHE"):
        os.environ["MMCOMPRESS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def tiny_clip():
    """A tiny random CLIP dual encoder with the word-hash tokenizer."""
    from mmcompress.adapters.hf_dual import CLIPAdapter

    torch.manual_seed(0)
    return CLIPAdapter.random(tiny_clip_config())


@pytest.fixture
def tiny_clip_folder(tmp_path: Path) -> Path:
    """A tiny CLIP saved as a local Hugging Face folder (no tokenizer files)."""
    from transformers import CLIPModel

    torch.manual_seed(0)
    folder = tmp_path / "tiny-clip"
    CLIPModel(tiny_clip_config()).save_pretrained(folder)
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
