import json

import pytest
import torch

import mmcompress
from mmcompress.errors import CheckpointError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import METHODS, StageContext
from mmcompress.recipe import load_recipe


def _quantize(adapter, **cfg):
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", **cfg}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(adapter, stage.config, StageContext(progress=False))


def _outputs(adapter):
    torch.manual_seed(1)
    images = [torch.rand(40, 30, 3).numpy() for _ in range(3)]
    return adapter.encode_images(images), adapter.encode_texts(["a cat", "two dogs on a sofa"])


@pytest.mark.parametrize("cfg", [{"bits": 8}, {"bits": 4, "group_size": 16},
                                 {"bits": 3, "group_size": 8, "symmetric": False}])
def test_save_load_gives_bitwise_identical_outputs(tiny_clip, tmp_path, cfg):
    _quantize(tiny_clip, **cfg)
    before = _outputs(tiny_clip)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    for a, b in zip(before, _outputs(loaded), strict=True):
        assert torch.equal(a, b)
    manifest = json.loads((tmp_path / "mmcompress.json").read_text())
    assert manifest["modules"]["text_model.embeddings.token_embedding"]["type"] == "QuantEmbedding"


@pytest.fixture
def saved(tiny_clip, tmp_path):
    _quantize(tiny_clip, bits=4, group_size=16)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    return tmp_path


def test_truncated_weights_are_refused(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or altered"):
        mmcompress.load(saved)


def test_altered_weights_are_refused(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or altered"):
        mmcompress.load(saved)


def test_corrupted_manifest_is_refused(saved):
    (saved / "mmcompress.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        mmcompress.load(saved)


def test_manifest_shape_mismatch_is_refused(saved):
    manifest = json.loads((saved / "mmcompress.json").read_text())
    entry = manifest["modules"]["text_model.encoder.layers.0.mlp.fc1"]
    entry["group_size"] = 8
    (saved / "mmcompress.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not match"):
        mmcompress.load(saved)


def test_nan_weights_are_refused(tiny_clip, tmp_path):
    with torch.no_grad():
        tiny_clip.model.visual_projection.weight[0, 0] = float("nan")
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        mmcompress.load(tmp_path)
