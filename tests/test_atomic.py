"""Outputs are all or nothing: a failed write leaves the previous output as it was."""

import os

import pytest

from mmcompress.io import atomic


def test_a_failed_text_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "latest.txt"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic.write_text_atomic(path, "\udcff")  # a lone surrogate cannot be encoded
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.txt"]


def test_the_previous_output_comes_back_when_the_new_one_cannot_take_its_place(
        tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("previous")
    real_replace = os.replace

    def refuse_the_new_folder(src, dst):
        if ".tmp-" in str(src):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError), atomic.atomic_folder(out, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
