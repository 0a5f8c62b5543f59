"""Structural edits (as structured pruning makes them) survive save → load."""

import torch
from torch import nn

import mmcompress
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.io.structure import structure_diff


def _shrink_mlp(mlp, keep):
    fc1, fc2 = mlp.fc1, mlp.fc2
    new1, new2 = nn.Linear(fc1.in_features, len(keep)), nn.Linear(len(keep), fc2.out_features)
    with torch.no_grad():
        new1.weight.copy_(fc1.weight[keep])
        new1.bias.copy_(fc1.bias[keep])
        new2.weight.copy_(fc2.weight[:, keep])
        new2.bias.copy_(fc2.bias)
    mlp.fc1, mlp.fc2 = new1, new2


def test_resized_layers_shorter_lists_and_attrs_reload_identically(tiny_clip, tmp_path):
    model = tiny_clip.model
    _shrink_mlp(model.vision_model.encoder.layers[0].mlp, torch.arange(0, 64, 2))
    del model.text_model.encoder.layers[1]
    model.text_model.encoder.layers[0].self_attn.scale = 0.5  # an attribute edit
    texts, images = ["a cat", "a dog"], [torch.rand(32, 32, 3).numpy()]
    before = (tiny_clip.encode_texts(texts), tiny_clip.encode_images(images))
    base = type(tiny_clip).from_architecture(tiny_clip.architecture(), None).model
    diff = structure_diff(base, model)
    assert diff["lists"] == {"text_model.encoder.layers": 1}
    assert diff["resized"]["vision_model.encoder.layers.0.mlp.fc1"]["out_features"] == 32
    assert diff["attrs"]["text_model.encoder.layers.0.self_attn"] == {"scale": 0.5}
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    assert torch.equal(loaded.encode_texts(texts), before[0])
    assert torch.equal(loaded.encode_images(images), before[1])


def test_unchanged_model_has_an_empty_diff(tiny_clip):
    base = type(tiny_clip).from_architecture(tiny_clip.architecture(), None).model
    assert structure_diff(base, tiny_clip.model) == {}


def test_a_structure_setting_what_the_module_lacks_is_refused(tiny_clip):
    """An edited manifest could set any attribute ('forward' to a string: an internal error
    when the model ran)."""
    import pytest

    from mmcompress.errors import CheckpointError
    from mmcompress.io.structure import apply_structure

    attn = "text_model.encoder.layers.0.self_attn"
    for values in ({"forward": "x"}, {"scale": "x"}, {"dropout": None}):
        with pytest.raises(CheckpointError, match=f"sets {attn}.* not one of that module's"):
            apply_structure(tiny_clip.model, {"attrs": {attn: values}})
    apply_structure(tiny_clip.model, {"attrs": {attn: {"scale": 0.25}}})
    assert tiny_clip.model.text_model.encoder.layers[0].self_attn.scale == 0.25
