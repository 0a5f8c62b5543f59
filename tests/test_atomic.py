"""Outputs are all or nothing: a failed write leaves the previous output as it was."""

import errno
import os
from pathlib import Path

import pytest

from mmcompress.errors import UserError
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
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "rename", refuse_the_new_folder)
    with pytest.raises(UserError, match="No space left"), \
            atomic.atomic_folder(out, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_interrupt_between_the_renames_brings_the_previous_output_back(
        tmp_path, monkeypatch):
    """Ctrl-C after the old output was moved aside lost the new one and hid the old one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("previous")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic.atomic_folder(out, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_another_run_wrote_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    """Two runs to one new --out: the later one silently replaced the earlier one's output."""
    out = tmp_path / "out"
    with pytest.raises(UserError, match="another run wrote it meanwhile"), \
            atomic.atomic_folder(out) as tmp:
        (tmp / "model.safetensors").write_text("mine")
        out.mkdir()  # the other run finishes first
        (out / "model.safetensors").write_text("theirs")
    assert (out / "model.safetensors").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_left_aside_by_a_killed_run_is_never_taken_for_this_runs(tmp_path,
                                                                         monkeypatch):
    """A run killed between its renames leaves `.out.old-…` behind; a later run of the same
    process id restored that stale folder into --out when interrupted, or said another run
    had written --out when it had not."""
    stale = tmp_path / f".out.old-{os.getpid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_text("stale")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("previous")
    with atomic.atomic_folder(out, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "new"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "rename", interrupted)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt), atomic.atomic_folder(fresh) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert not fresh.exists()
    with pytest.raises(KeyboardInterrupt), atomic.atomic_folder(out, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("newer")
    assert (out / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name, "out"]


def test_a_failed_output_removes_the_folders_made_to_hold_it(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), atomic.atomic_folder(tmp_path / "kept/a/b/out") as tmp:
        (tmp / "model.safetensors").write_text("half")
        raise RuntimeError("stopped midway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert not any((tmp_path / "kept").iterdir())
    with atomic.atomic_folder(tmp_path / "kept/a/b/out") as tmp:  # a success keeps them
        (tmp / "model.safetensors").write_text("whole")
    assert (tmp_path / "kept/a/b/out/model.safetensors").read_text() == "whole"


def test_an_out_that_is_a_link_replaces_the_folder_it_points_to(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "model.safetensors").write_text("previous")
    (tmp_path / "link").symlink_to(target)
    with atomic.atomic_folder(tmp_path / "link", overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (tmp_path / "link").is_symlink()
    assert (tmp_path / "link/model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_outputs_get_the_permissions_a_plain_write_would_give(tmp_path):
    """Temporary folders (0700) and safetensors files (0600) are private to their owner."""
    import stat

    import torch
    from safetensors.torch import save_file

    old_mask = os.umask(0o022)
    try:
        out = tmp_path / "out"
        with atomic.atomic_folder(out) as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "sub").mkdir(mode=0o700)
        atomic.write_text_atomic(tmp_path / "note.md", "hello")
    finally:
        os.umask(old_mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode)
             for p in (out, out / "model.safetensors", out / "sub", tmp_path / "note.md")}
    assert modes == {"out": 0o755, "model.safetensors": 0o644, "sub": 0o755, "note.md": 0o644}


def test_a_terminated_command_removes_its_half_built_output(tmp_path):
    """SIGTERM (a job scheduler's stop) cleans up like Ctrl-C: exit 143, nothing left."""
    import signal
    import time

    import typer

    from mmcompress.cli import user_errors

    @user_errors
    def job() -> None:
        with atomic.atomic_folder(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_text("partial")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as stopped:
        job()
    assert stopped.value.exit_code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_out_naming_the_current_folder_or_a_long_name_is_refused_before_any_work(
        tmp_path, monkeypatch):
    """`--out .` ran the whole recipe and then failed renaming; a 300-character name failed
    with an OSError; a legal 245-character name was refused because of the probe's prefix."""
    from mmcompress.errors import UserError

    monkeypatch.chdir(tmp_path)
    for out in (Path("."), Path(""), tmp_path.parent):
        with pytest.raises(UserError, match="the folder this command runs in"):
            atomic.check_output_dir(out, overwrite=True)
    with pytest.raises(UserError, match="too long"):
        atomic.check_output_dir(Path("x" * 300), overwrite=False)
    for name in ("y" * 245, "é" * 127):  # 245 and 254 bytes: legal names
        long = tmp_path / name
        atomic.check_output_dir(long, overwrite=False)
        with atomic.atomic_folder(long) as tmp:
            (tmp / "a.txt").write_text("a")
        assert (long / "a.txt").read_text() == "a"


def test_out_replacing_what_the_run_reads_or_a_dangling_link_is_refused(tmp_path):
    """`--out` naming the model folder with --overwrite replaced the model by its compressed
    copy, whose manifest then named itself as the base (fidelity 1.0 ever after); a dangling
    link as --out failed renaming after all the work."""
    from mmcompress.errors import UserError

    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    data = tmp_path / "data" / "pairs.csv"
    data.parent.mkdir()
    data.write_text("x")
    reads = (model, data)
    for out in (model, model.parent, data.parent, tmp_path / "models" / ".." / "models" / "m"):
        with pytest.raises(UserError, match="which this run reads"):
            atomic.check_output_dir(out, overwrite=True, reads=reads)
    atomic.check_output_dir(model / "inside", overwrite=True, reads=reads)
    atomic.check_output_dir(tmp_path / "data-out", overwrite=True, reads=reads)
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="a link to a path that does not exist"):
        atomic.check_output_dir(link, overwrite=True)


def test_compress_refuses_out_replacing_its_model_or_data(tiny_clip, tmp_path, monkeypatch):
    """The model's folder (as a spec, or as the folder an adapter was loaded from) and a data
    folder may not be the output; a built-in name is no path even beside a folder so named."""
    import mmcompress
    from mmcompress.api import _paths_read
    from mmcompress.errors import UserError

    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8, "targets": ["text"]}}],
              "evaluate": {"max_samples": 4, "metrics": ["params"]}}
    data = tmp_path / "d"
    data.mkdir()
    with pytest.raises(UserError, match="which this run reads"):
        mmcompress.compress(tiny_clip, recipe, out=tmp_path, data=data, overwrite=True,
                            progress=False)
    assert data.is_dir()
    from _helpers import toy_image_data

    first = tmp_path / "o1"
    mmcompress.compress(tiny_clip, recipe, out=first, data=toy_image_data(), progress=False)
    for model in (str(first), mmcompress.load(first)):
        with pytest.raises(UserError, match="which this run reads"):
            mmcompress.compress(model, recipe, out=first, data=toy_image_data(),
                                overwrite=True, progress=False)
    assert (first / "mmcompress.json").is_file()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    recipe = mmcompress.recipe.load_recipe(recipe)
    assert _paths_read(recipe, "demo", "trimodal", "random:tiny", "o1") == (Path("o1"),)


def test_the_demo_replaces_only_a_folder_holding_an_output_and_nothing_else(tmp_path):
    from mmcompress.api import is_output_folder

    out = tmp_path / "out"
    out.mkdir()
    for name in ("mmcompress.json", "model.safetensors", "report.md"):
        (out / name).write_text("{}")
    (out / "tokenizer").mkdir()
    assert is_output_folder(out)
    (out / "notes.txt").write_text("mine")
    assert not is_output_folder(out)
    assert not is_output_folder(tmp_path / "missing")


def test_the_demo_replaces_only_an_output_of_its_own_recipe(tmp_path):
    """`mmcompress demo --out DIR` replaced any output, a `compress` run's included."""
    from importlib import resources

    from mmcompress.api import is_output_folder

    demo = resources.files("mmcompress").joinpath("recipes/demo.yaml").read_text()
    out = tmp_path / "out"
    out.mkdir()
    for name in ("mmcompress.json", "model.safetensors", "report.md"):
        (out / name).write_text("{}")
    (out / "recipe.yaml").write_text(demo)
    assert is_output_folder(out, demo)
    (out / "recipe.yaml").write_text("stages:\n  - quantize: {method: rtn, bits: 4}\n")
    assert is_output_folder(out) and not is_output_folder(out, demo)
    (out / "recipe.yaml").write_text("{not yaml")
    assert not is_output_folder(out, demo)


def test_the_demo_replaces_only_an_output_of_its_own_models(tiny_clip, tmp_path):
    """The demo recipe run by `compress` on another model is the user's output, not the
    demo's: `mmcompress demo` replaced it without --overwrite."""
    from importlib import resources

    from mmcompress.api import is_output_folder
    from mmcompress.io.checkpoint import save_checkpoint

    demo = resources.files("mmcompress").joinpath("recipes/demo.yaml").read_text()
    out = tmp_path / "out"
    out.mkdir()
    save_checkpoint(tiny_clip, out, "random:tiny", [])
    (out / "recipe.yaml").write_text(demo)
    assert is_output_folder(out, demo)
    assert not is_output_folder(out, demo, ("demo", "fusion"))
