"""The built-in demo model end to end (trains MiniLM-aligned digits CNN once per session)."""

import json

import pytest
import torch
from typer.testing import CliRunner

import mmcompress
from mmcompress.cli import app

pytestmark = pytest.mark.integration

QUALITY = {"metrics": ["size_bytes", "zeroshot_top1", "fidelity_cosine"]}


def _rtn(**cfg):
    return {"stages": [{"quantize": {"method": "rtn", **cfg}}], "evaluate": QUALITY}


@pytest.fixture(scope="module")
def int8_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "int8"
    return mmcompress.compress("demo", _rtn(bits=8), out=out, progress=False)


def test_demo_zero_shot_with_unseen_prompts(int8_demo):
    assert int8_demo.report["before"]["zeroshot_top1"] >= 0.97


def test_int8_keeps_accuracy_and_shrinks(int8_demo):
    before, after = int8_demo.report["before"], int8_demo.report["after"]
    assert before["zeroshot_top1"] - after["zeroshot_top1"] <= 0.005
    assert after["fidelity_cosine"] >= 0.995
    assert after["size_bytes"] <= 0.30 * before["size_bytes"]


def test_int4_group128_size():
    report = mmcompress.compress("demo", _rtn(bits=4, group_size=128), progress=False).report
    assert report["after"]["size_bytes"] <= 0.17 * report["before"]["size_bytes"]


def test_reload_is_bitwise_identical(int8_demo):
    loaded = mmcompress.load(int8_demo.out)
    texts = ["a scan of the numeral seven", "this is two"]
    images = [torch.rand(8, 8, 1).numpy() for _ in range(4)]
    assert torch.equal(loaded.encode_texts(texts), int8_demo.adapter.encode_texts(texts))
    assert torch.equal(loaded.encode_images(images), int8_demo.adapter.encode_images(images))
    assert json.loads((int8_demo.out / "report.json").read_text())["model"] == "demo"


def test_cli_demo_prints_before_after(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "zero-shot top-1" in result.output and "size (MB)" in result.output
    assert (tmp_path / "demo" / "report.md").is_file()
