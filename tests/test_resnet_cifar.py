"""CIFAR ResNets: architecture, state-dict layout, loading, specs, and RTN save → load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mmcompress.adapters.classifier import ImageClassifierAdapter
from mmcompress.errors import CheckpointError, UserError
from mmcompress.io.checkpoint import load_checkpoint, save_checkpoint
from mmcompress.methods import StageContext
from mmcompress.methods.rtn import RTNConfig, apply_rtn
from mmcompress.model_specs import load_model
from mmcompress.models.resnet_cifar import BasicBlock, CifarResNet, depth_from_keys
from mmcompress.modules import QuantLinear

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (SHARED / "resnet_cifar10").is_dir() or not (SHARED / "cifar10" / "test").is_dir(),
    reason=f"shared data not found at {SHARED}",
)


def _random_bn_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics, so eval-mode outputs depend on every buffer."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((32, 32, 3), dtype=np.float32) for _ in range(n)]


def _data_md_keys(depth: int) -> set[str]:
    """The state-dict keys DATA.md describes, written out independently of the model code."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {"conv1.weight", "linear.weight", "linear.bias"} | {f"bn1.{p}" for p in bn}
    for stage in (1, 2, 3):
        for i in range((depth - 2) // 6):
            pre = f"layer{stage}.{i}"
            keys |= {f"{pre}.conv1.weight", f"{pre}.conv2.weight"}
            keys |= {f"{pre}.{b}.{p}" for b in ("bn1", "bn2") for p in bn}
    return keys


@pytest.mark.parametrize("depth, params", [(20, 269722), (32, 464154), (44, 658586), (56, 853018)])
def test_depths_have_published_parameter_counts(depth, params):
    model = CifarResNet(depth)
    assert sum(p.numel() for p in model.parameters()) == params  # as in models.json


def test_shapes():
    model = CifarResNet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert model.features(x).shape == (2, 64)
    assert CifarResNet(20, num_classes=0).eval()(x).shape == (2, 64)


def test_option_a_shortcut_is_parameter_free():
    block = BasicBlock(16, 32, stride=2)
    own = {n.split(".")[0] for n, _ in block.named_parameters()}
    assert own == {"conv1", "bn1", "conv2", "bn2"}
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    same = BasicBlock(16, 16)
    assert same.shortcut(x) is x


@pytest.mark.parametrize("depth", [20, 56])
def test_state_dict_keys_match_data_md(depth):
    keys = {k for k in CifarResNet(depth).state_dict() if not k.endswith("num_batches_tracked")}
    assert keys == _data_md_keys(depth)
    assert depth_from_keys(keys) == depth
    assert depth_from_keys(keys - {"linear.bias"}) is None
    assert depth_from_keys({"weight", "bias"}) is None


def test_towers_cover_every_parameter():
    adapter = ImageClassifierAdapter(CifarResNet(20))
    prefixes = [p for ps in adapter.towers().values() for p in ps]
    for name, _ in adapter.model.named_parameters():
        assert any(name == p or name.startswith(p + ".") for p in prefixes), name
    assert adapter.towers()["head"] == ["linear"]


def test_from_file_loads_a_state_dict_without_bn_counters(tmp_path):
    model = _random_bn_stats(CifarResNet(20))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet20.safetensors"
    save_file(state, str(path))
    adapter = load_model(path, progress=False)
    assert isinstance(adapter, ImageClassifierAdapter)
    images = _images(4)
    expected = ImageClassifierAdapter(model).classify(images)
    torch.testing.assert_close(adapter.classify(images), expected, rtol=0, atol=0)
    assert adapter.classify(images).shape == (4, 10)


def test_from_file_refuses_other_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a CIFAR ResNet"):
        load_model(path, progress=False)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(bad, progress=False)


def test_named_spec_without_shared_data_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOMPRESS_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="MMCOMPRESS_SHARED_DATA"):
        load_model("resnet20", progress=False)


def test_rtn_int8_head_save_load_identical(tmp_path):
    torch.manual_seed(0)
    adapter = ImageClassifierAdapter(_random_bn_stats(CifarResNet(20)))
    images = _images(6)
    dense = adapter.classify(images)
    summary = apply_rtn(adapter, RTNConfig(targets=["head"]), StageContext(progress=False))
    assert summary == {"modules": 1} and isinstance(adapter.model.linear, QuantLinear)
    quantized = adapter.classify(images)
    error = (quantized - dense).norm() / dense.norm()
    assert error < 0.02  # int8 per-channel: about 1% relative error on the logits
    save_checkpoint(adapter, tmp_path, "test", [])
    assert json.loads((tmp_path / "mmcompress.json").read_text())["architecture"]["depth"] == 20
    reloaded = load_checkpoint(tmp_path)
    assert isinstance(reloaded, ImageClassifierAdapter)
    assert isinstance(reloaded.model.linear, QuantLinear)
    torch.testing.assert_close(reloaded.classify(images), quantized, rtol=0, atol=0)


@pytest.mark.integration
@needs_data
def test_resnet20_loads_strictly_and_classifies_cifar10(monkeypatch):
    from mmcompress.data import load_data
    from mmcompress.data.cifar import split_per_class
    from mmcompress.evaluation.evaluate import quality

    monkeypatch.setenv("MMCOMPRESS_SHARED_DATA", str(SHARED))
    adapter = load_model("resnet20", progress=False)
    assert isinstance(adapter, ImageClassifierAdapter) and adapter.model.depth == 20
    subset, _ = split_per_class(load_data(adapter.default_data), 50, ("subset", "rest"))
    assert len(subset) == 500
    assert quality(adapter, subset).metrics["top1"] > 0.75


def test_a_class_folder_is_scored_against_the_classes_of_the_same_name(tmp_path):
    """A folder of cats and dogs was labelled 0 and 1 by position and compared with CIFAR-10's
    outputs 0 and 1 (airplane, automobile): top-1 0.0 for a model that gets them right."""
    from PIL import Image

    from mmcompress.data import load_data
    from mmcompress.errors import DataError
    from mmcompress.evaluation.evaluate import check_data_fits
    from mmcompress.evaluation.tasks import eval_classification

    torch.manual_seed(0)
    adapter = ImageClassifierAdapter(CifarResNet(20).eval())
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pets" / name / f"{i}.png")
    data = load_data(tmp_path / "pets")
    assert adapter.label_indices(data).tolist() == [3, 3, 3, 5, 5, 5]
    logits = adapter.classify([data.load_image(i) for i in range(6)])
    expected = float((logits.argmax(1) == torch.tensor([3, 3, 3, 5, 5, 5])).float().mean())
    assert eval_classification(adapter, data, False)[0]["top1"] == expected
    (tmp_path / "pets" / "cat").rename(tmp_path / "pets" / "ferret")
    with pytest.raises(DataError, match="classes the model does not classify: 'ferret'"):
        check_data_fits(adapter, load_data(tmp_path / "pets"))
