"""Structured pruning: removed units equal masked units, attributes stay consistent, pruned
models reload, global and per-tower allocation differ, bad values are one-line errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from _helpers import FAST_EVAL, toy_image_data
from torch import nn
from transformers import BertConfig, BertTokenizer, SiglipConfig
from typer.testing import CliRunner

import mmcompress
from mmcompress.adapters.classifier import ImageClassifierAdapter
from mmcompress.adapters.hf_dual import SiglipAdapter
from mmcompress.adapters.sentence import SentenceAdapter
from mmcompress.cli import app
from mmcompress.data import Dataset
from mmcompress.errors import RecipeError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import METHODS, StageContext
from mmcompress.models.demo import DemoDualEncoder
from mmcompress.models.resnet_cifar import CifarResNet
from mmcompress.models.sentence_encoder import SentenceEncoder
from mmcompress.recipe import CalibrationConfig, load_recipe
from mmcompress.structured import find_structure, prune_units, remove_layers
from mmcompress.structured.groups import UnitGroup, _expand
from mmcompress.structured.importance import consumer_stats

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "the", "photo", "of",
         "small", "big"]
TEXTS = ["a cat", "the big dog", "a photo of a small cat"]


def _sts_data() -> Dataset:
    a, b = ["a cat", "the dog", "a small cat", "a big dog"], ["a dog", "the cat", "a cat", "dog"]
    return Dataset("pairs", "sts", texts=a, texts_b=b, scores=[1.0, 2.0, 4.0, 3.0])


def _prune(adapter, data=None, **cfg):
    stage = load_recipe({"stages": [{"prune": {"method": "structured", **cfg}}]}).stages[0]
    ctx = StageContext(data=data, calibration=CalibrationConfig(samples=8, batch_size=4),
                       progress=False)
    return METHODS[("prune", "structured")].apply(adapter, stage.config, ctx)


def _bert_config(vocab: int = len(VOCAB)) -> BertConfig:
    return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=48, max_position_embeddings=32)


def _sentence_adapter() -> SentenceAdapter:
    torch.manual_seed(0)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    return SentenceAdapter(SentenceEncoder(_bert_config()), tokenizer, max_seq_length=16)


def _siglip() -> SiglipAdapter:
    torch.manual_seed(0)
    return SiglipAdapter.random(SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=100, max_position_embeddings=16,
                         pad_token_id=1, eos_token_id=1, bos_token_id=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8)))


def _resnet() -> CifarResNet:
    torch.manual_seed(0)
    model = CifarResNet(20)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics: eval outputs depend on every buffer
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


_IDS = torch.tensor([[2, 5, 6, 3, 0], [2, 8, 12, 7, 3]])
_MASK = (_IDS != 0).long()
_PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _family(name: str):
    """(model, run) for each family a pruning spec knows; `run` gives its outputs."""
    if name in ("clip", "siglip"):
        from _helpers import tiny_clip_config
        from transformers import CLIPModel

        torch.manual_seed(0)
        model = CLIPModel(tiny_clip_config()) if name == "clip" else _siglip().model
        ids = torch.tensor([[98, 5, 6, 99], [98, 7, 99, 0]] if name == "clip"
                           else [[5, 6, 7, 1], [8, 9, 1, 1]])
        return model.eval(), lambda m: (m.vision_model(pixel_values=_PIXELS).pooler_output,
                                        m.text_model(input_ids=ids).pooler_output)
    if name == "bert":
        torch.manual_seed(0)
        return SentenceEncoder(_bert_config()).eval(), lambda m: m(_IDS, _MASK)
    if name == "demo":
        torch.manual_seed(0)
        pixels = _PIXELS[:, :1, :8, :8]
        return DemoDualEncoder(SentenceEncoder(_bert_config())).eval(), lambda m: (
            m.encode_image(pixels), m.encode_text(_IDS, _MASK))
    return _resnet(), lambda m: m(_PIXELS[:, :, :16, :16])  # any size pools to 64 features


def _mask(model: nn.Module, group, units) -> None:
    """Zero what the removed units feed into: the consumer's columns."""
    idx = _expand(units, group.in_width)
    with torch.no_grad():
        for name in group.inputs:
            model.get_submodule(name).weight[:, idx] = 0


@pytest.mark.parametrize("family", ["clip", "siglip", "bert", "demo", "resnet"])
def test_removing_units_equals_masking_them(family):
    model, run = _family(family)
    masked, groups = copy.deepcopy(model), find_structure(model).units
    assert {g.kind for g in groups} >= ({"channels"} if family == "resnet"
                                        else {"heads", "neurons"})
    for i, g in enumerate(groups):  # a different count and set in every group: non-uniform
        units = [u for u in range(g.size) if (u + i) % (2 + i % 3) == 0][: g.size - 1]
        prune_units(model, g, units)
        _mask(masked, g, units)
    got, want = run(model), run(masked)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in masked.parameters())


def _weaken(model: nn.Module, group, units, factor: float = 0.01) -> None:
    out_idx, in_idx = _expand(units, group.out_width), _expand(units, group.in_width)
    with torch.no_grad():
        for name in group.outputs:
            model.get_submodule(name).weight[out_idx] *= factor
        for name in group.inputs:
            model.get_submodule(name).weight[:, in_idx] *= factor


def test_method_removes_the_weakest_units_and_updates_attention(tiny_clip):
    model = tiny_clip.model
    groups = find_structure(model).units
    weak = {g.name: ([1] if g.kind == "heads" else list(range(0, 64, 4))) for g in groups}
    for g in groups:
        _weaken(model, g, weak[g.name])
    masked = copy.deepcopy(tiny_clip)
    for g in groups:
        _mask(masked.model, g, weak[g.name])
    summary = _prune(tiny_clip, heads=1, neurons=0.25, importance="magnitude")
    assert summary["removed"]["vision"]["heads"] == {"removed": 2, "of": 4}
    assert summary["removed"]["text"]["neurons"] == {"removed": 32, "of": 128}
    for tower in ("vision_model", "text_model"):
        for layer in getattr(model, tower).encoder.layers:
            assert layer.self_attn.num_heads == 1 and layer.self_attn.q_proj.out_features == 16
            assert layer.self_attn.out_proj.in_features == 16
            assert (layer.mlp.fc1.out_features, layer.mlp.fc2.in_features) == (48, 48)
    torch.testing.assert_close(tiny_clip.encode_texts(TEXTS), masked.encode_texts(TEXTS),
                               atol=2e-5, rtol=1e-4)
    images = toy_image_data(2).images
    torch.testing.assert_close(tiny_clip.encode_images(images), masked.encode_images(images),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("importance", ["magnitude", "activation", "taylor"])
def test_each_importance_removes_a_dead_unit_first(tiny_clip, importance):
    layer = tiny_clip.model.vision_model.encoder.layers[0]
    with torch.no_grad():  # head 0 and neuron 5 contribute nothing
        for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            p.weight[:16] = 0
            p.bias[:16] = 0
        layer.self_attn.out_proj.weight[:, :16] = 0
        layer.mlp.fc1.weight[5] = 0
        layer.mlp.fc2.weight[:, 5] = 0
    kept_head = layer.self_attn.q_proj.weight[16:].clone()
    kept_neuron = layer.mlp.fc1.weight[6].clone()
    _prune(tiny_clip, toy_image_data(), heads=1, neurons=1, importance=importance,
           targets=["vision"])
    assert torch.equal(layer.self_attn.q_proj.weight, kept_head)
    assert not (layer.mlp.fc1.weight == 0).all(1).any()
    assert torch.equal(layer.mlp.fc1.weight[5], kept_neuron)
    assert tiny_clip.model.text_model.encoder.layers[0].mlp.fc1.out_features == 64


def test_compensation_keeps_a_constant_unit_exactly(tiny_clip):
    layer = tiny_clip.model.vision_model.encoder.layers[0]
    with torch.no_grad():  # neuron 5 outputs the same value for every token
        layer.mlp.fc1.weight[5] = 0
        layer.mlp.fc1.bias[5] = 1.0
    images = toy_image_data(3).images
    before = tiny_clip.encode_images(images)
    group = next(g for g in find_structure(tiny_clip.model).units
                 if g.name == "vision_model.encoder.layers.0.mlp")
    calib = tiny_clip.calibration_data(toy_image_data(), samples=8, batch_size=4, seed=0)
    stats = consumer_stats(tiny_clip, [group], calib, progress=False)
    plain = copy.deepcopy(tiny_clip)
    prune_units(plain.model, group, [5])
    prune_units(tiny_clip.model, group, [5], {n: s.mean for n, s in stats.items()})
    torch.testing.assert_close(tiny_clip.encode_images(images), before, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain.encode_images(images), before, atol=1e-3)


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_with_compensation_a_constant_unit_goes_first_and_costs_nothing(tiny_clip, importance):
    layer = tiny_clip.model.vision_model.encoder.layers[0]
    with torch.no_grad():  # neuron 5 outputs the same large value for every token
        layer.mlp.fc1.weight[5] = 0
        layer.mlp.fc1.bias[5] = 3.0
    images = toy_image_data(3).images
    before = tiny_clip.encode_images(images)
    _prune(tiny_clip, toy_image_data(), neurons=1, importance=importance, compensate=True,
           targets=["vision_model.encoder.layers.0"])
    assert layer.mlp.fc1.out_features == 63 and (layer.mlp.fc1.bias != 3.0).all()
    torch.testing.assert_close(tiny_clip.encode_images(images), before, atol=1e-5, rtol=1e-5)


def test_compensation_gives_a_bias_to_a_conv_without_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3, bias=False))
    with torch.no_grad():  # channel 1 is the constant 0.5 everywhere
        model[0].weight[1] = 0
        model[0].bias[1] = 0.5
    x = torch.randn(2, 2, 9, 9)
    before = model(x)
    group = UnitGroup("channels", "0", ("0",), ("2",), size=4)
    mean = torch.zeros(4, 9)
    mean[1] = 0.5
    prune_units(model, group, [1], {"2": mean.flatten()})
    assert model[2].in_channels == 3 and model[2].bias is not None
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_method_with_compensation_reloads_identically(tiny_clip, tmp_path):
    summary = _prune(tiny_clip, toy_image_data(), heads=1, neurons=0.5, compensate=True)
    assert summary["removed"]["text"]["neurons"]["removed"] == 64
    _roundtrip(tiny_clip, tmp_path, lambda a: (a.encode_texts(TEXTS),))


def test_layer_removal_drops_the_block_that_changes_nothing(tiny_clip):
    layers = tiny_clip.model.text_model.encoder.layers
    with torch.no_grad():  # a pre-LN block with no residual update is the identity
        for lin in (layers[0].self_attn.out_proj, layers[0].mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    keep = layers[1]
    before = tiny_clip.encode_texts(TEXTS)
    summary = _prune(tiny_clip, toy_image_data(), layers=0.5, scope="tower")
    assert len(layers) == 1 and layers[0] is keep
    assert len(tiny_clip.model.vision_model.encoder.layers) == 1
    assert summary["removed"]["text"]["layers"] == {"removed": 1, "of": 2}
    assert "text_model.encoder.layers.0" in summary["removed_layers"]
    torch.testing.assert_close(tiny_clip.encode_texts(TEXTS), before, atol=1e-5, rtol=1e-5)


def test_statistics_and_block_influence_ignore_padding():
    from mmcompress.structured.importance import layer_scores

    adapter, data = _sentence_adapter(), _sts_data()  # texts of 2 to 5 tokens, padded together
    structure = find_structure(adapter.model)
    ctx = StageContext(data=data, calibration=CalibrationConfig(samples=8), progress=False)
    padded, single = (ctx.calibration_data(adapter, batch_size=b) for b in (4, 1))
    assert any(not b.token_mask.all() for b in padded.batches["text"])

    def scores(calib):
        stats = consumer_stats(adapter, structure.units, calib, progress=False)
        return stats, layer_scores(adapter, structure.layer_lists, lambda: calib)

    (stats_p, layers_p), (stats_1, layers_1) = scores(padded), scores(single)
    assert set(stats_p) == set(stats_1) and set(layers_p) == set(layers_1)
    for name, s in stats_1.items():
        for field in ("abs_mean", "mean", "std"):
            torch.testing.assert_close(getattr(stats_p[name], field), getattr(s, field))
    for name, s in layers_1.items():
        assert layers_p[name] == pytest.approx(s, rel=1e-3)


def test_block_influence_of_conv_blocks_is_the_cosine_over_channels():
    """A ResNet block's influence is the mean, over images and pixels, of 1 − cos between the
    channel vectors of its input and output (not a cosine along image rows)."""
    from mmcompress.structured.importance import layer_scores

    adapter = ImageClassifierAdapter(_resnet())
    ctx = StageContext(data=toy_image_data(4), calibration=CalibrationConfig(samples=4),
                       progress=False)
    calib = ctx.calibration_data(adapter)
    lists = find_structure(adapter.model).layer_lists
    names = [ll.entry(i) for ll in lists for i in ll.removable]
    seen = {n: [] for n in names}
    handles = [adapter.model.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen[n].append((args[0].clone(), out.clone())))
        for n in names]
    try:
        scores = layer_scores(adapter, lists, lambda: calib)
    finally:
        for h in handles:
            h.remove()
    assert set(scores) == set(names) and len(names) >= 4
    for name in names:
        x, y = (torch.cat(t) for t in zip(*seen[name], strict=True))  # [images, C, H, W]
        cos = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-8)
        assert scores[name] == pytest.approx(float((1 - cos).mean()), rel=1e-4), name


def _roundtrip(adapter, tmp_path, encode):
    before = encode(adapter)
    save_checkpoint(adapter, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    after = encode(loaded)
    for a, b in zip(after, before, strict=True):
        assert torch.equal(a, b)
    return loaded


def test_clip_with_non_uniform_widths_reloads_identically(tiny_clip, tmp_path):
    data = toy_image_data()
    _prune(tiny_clip, data, heads=1, neurons=0.5, scope="global", importance="activation")
    _prune(tiny_clip, data, layers=1, importance="magnitude")
    widths = {(t, len(getattr(tiny_clip.model, t).encoder.layers))
              for t in ("vision_model", "text_model")}
    assert widths == {("vision_model", 1), ("text_model", 1)}
    first = copy.deepcopy(tiny_clip)
    prune_units(first.model, find_structure(first.model).units[1], [0, 1, 2])  # uneven
    fc1 = {m.out_features for n, m in first.model.named_modules() if n.endswith("mlp.fc1")}
    assert len(fc1) == 2
    images = data.images[:2]
    loaded = _roundtrip(first, tmp_path, lambda a: (a.encode_texts(TEXTS),
                                                    a.encode_images(images)))
    assert loaded.model.text_model.encoder.layers[0].self_attn.num_heads == 1


def test_sentence_encoder_reloads_identically(tmp_path):
    adapter = _sentence_adapter()
    summary = _prune(adapter, _sts_data(), heads=0.5, neurons=0.5, layers=1,
                     importance="taylor")
    assert summary["removed"]["text"]["heads"] == {"removed": 2, "of": 4}
    attn = adapter.model.bert.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size) == (2, 16)
    _roundtrip(adapter, tmp_path, lambda a: (a.encode_texts(TEXTS),))


def test_demo_cnn_channels_and_text_reload_identically(tmp_path):
    from mmcompress.adapters.demo import DemoAdapter
    from mmcompress.adapters.tokenizers import load_tokenizer
    from mmcompress.models.sentence_encoder import minilm_path

    torch.manual_seed(0)
    tokenizer = load_tokenizer(minilm_path())
    adapter = DemoAdapter(DemoDualEncoder(SentenceEncoder(_bert_config(tokenizer.vocab_size)),
                                          channels=8, hidden=16), tokenizer)
    rng = np.random.default_rng(0)
    data = Dataset("digits", "classification",
                   images=[rng.random((8, 8, 1), dtype=np.float32) for _ in range(8)],
                   labels=[i % 2 for i in range(8)], class_names=["zero", "one"],
                   templates=["a {}"])
    summary = _prune(adapter, data, channels=0.5, neurons=0.25, heads=1, scope="global")
    vision = adapter.model.vision
    assert vision.conv2.in_channels == vision.conv1.out_channels
    assert vision.fc.in_features == vision.conv2.out_channels * 16
    assert adapter.model.visual_projection.in_features == vision.fc.out_features
    assert summary["params"]["vision"]["after"] < summary["params"]["vision"]["before"]
    _roundtrip(adapter, tmp_path, lambda a: (a.encode_texts(TEXTS),
                                             a.encode_images(data.images[:3])))


def test_resnet_inner_channels_and_blocks_reload_identically(tmp_path):
    adapter = ImageClassifierAdapter(_resnet())
    _prune(adapter, channels=0.25, importance="magnitude")
    model = adapter.model
    assert model.layer2[1].conv1.out_channels == 24 and model.layer2[1].bn1.num_features == 24
    assert model.layer2[1].conv2.out_channels == 32  # residual channels stay
    lists = {ll.name: ll for ll in find_structure(model).layer_lists}
    assert lists["layer2"].removable == (1, 2)  # the stride-2 block has a shortcut to keep
    remove_layers(model, lists["layer2"], [1])
    images = [np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)] * 2
    _roundtrip(adapter, tmp_path, lambda a: (a.classify(images),))


def _dead_half(tiny_clip) -> None:
    """Vision neurons: half of them nearly dead; text neurons all alike."""
    for layer in tiny_clip.model.vision_model.encoder.layers:
        with torch.no_grad():
            layer.mlp.fc1.weight[::2] *= 1e-3
            layer.mlp.fc2.weight[:, ::2] *= 1e-3


def test_global_scope_takes_more_from_the_tower_with_unimportant_units(tiny_clip):
    _dead_half(tiny_clip)
    other = copy.deepcopy(tiny_clip)
    uniform = _prune(tiny_clip, neurons=0.3, importance="magnitude", scope="tower")
    ranked = _prune(other, neurons=0.3, importance="magnitude", scope="global")
    u, g = uniform["removed"], ranked["removed"]
    assert u["vision"]["neurons"]["removed"] == u["text"]["neurons"]["removed"] == 2 * 19
    assert g["vision"]["neurons"]["removed"] >= 64  # every dead neuron goes first
    assert g["text"]["neurons"]["removed"] < 19
    total = sum(v["neurons"]["removed"] for v in g.values())
    assert abs(total - 4 * 19) <= 1  # the same parameters freed (every neuron frees the same)


def _taylor(adapter) -> list[torch.Tensor]:
    from mmcompress.structured.importance import taylor_scores

    groups = [g for g in find_structure(adapter.model).units if g.kind == "neurons"]
    calib = adapter.calibration_data(toy_image_data(), 8, 4, 0)
    return taylor_scores(adapter, groups, calib)


def test_taylor_scores_are_relative_to_the_tower_output(tiny_clip):
    """Scores measure the output's change relative to its size, so towers compare."""
    before = _taylor(tiny_clip)
    unit_norm = tiny_clip.embed_text_tensors
    tiny_clip.embed_text_tensors = lambda inputs: 10 * unit_norm(inputs)  # 10x larger text
    after = _taylor(tiny_clip)
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6 * float(b.max()))


def test_global_taylor_takes_from_the_tower_whose_units_matter_less(tiny_clip):
    """Every vision neuron weakened alike: ranked within its own tower it would look as
    important as before; ranked by relative output change it goes first."""
    for layer in tiny_clip.model.vision_model.encoder.layers:
        with torch.no_grad():
            layer.mlp.fc2.weight *= 1e-2
    ranked = _prune(tiny_clip, toy_image_data(), neurons=0.3, importance="taylor",
                    scope="global")["removed"]
    assert ranked["vision"]["neurons"]["removed"] >= 2 * 19 + 30
    assert ranked["text"]["neurons"]["removed"] <= 19 - 15


def _params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def test_params_ratio_keeps_that_share_of_the_model_within_the_caps(tiny_clip):
    _dead_half(tiny_clip)
    before = _params(tiny_clip)
    summary = _prune(tiny_clip, neurons=0.9, heads=0.5, importance="magnitude",
                     scope="global", params_ratio=0.8)
    kept = _params(tiny_clip) / before
    assert abs(kept - 0.8) <= 2096 / 2 / before  # to the nearest unit (a head: 2,096)
    assert summary["params_kept_ratio"] == pytest.approx(kept, abs=1e-4)
    removed = summary["removed"]
    for tower in ("vision", "text"):  # at most half of each layer's 4 heads
        assert removed[tower]["heads"]["removed"] <= 2 * 2
    assert removed["vision"]["neurons"]["removed"] >= 64  # the dead half still goes first


def test_params_ratio_counts_quantized_layers_by_their_logical_weights(tiny_clip):
    """An earlier stage's int8 tower keeps its weights in buffers: the budget still counts
    them, as the report's `params` does, so the share kept is the share asked."""
    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8, "targets": ["vision"]}},
                         {"prune": {"method": "structured", "heads": 0.5, "neurons": 0.9,
                                    "scope": "global", "params_ratio": 0.8,
                                    "targets": ["text"]}}],
              "calibration": {"samples": 8, "batch_size": 4},
              "evaluate": {"max_samples": 8, "metrics": ["params"]}}
    report = mmcompress.compress(tiny_clip, recipe, data=toy_image_data(),
                                 progress=False).report
    kept = report["after"]["params"] / report["before"]["params"]
    assert abs(kept - 0.8) <= 2096 / 2 / report["before"]["params"]  # the nearest head
    assert report["stages"][-1]["summary"]["params_kept_ratio"] == pytest.approx(kept, abs=1e-4)


def test_params_ratio_caps_keep_one_unit_of_every_layer(tiny_clip):
    summary = _prune(tiny_clip, heads=0.9, neurons=0.99, importance="magnitude",
                     scope="global", params_ratio=0.5)  # 0.9 of 2 heads rounds to 2
    assert summary["params_kept_ratio"] <= 0.51
    for tower in summary["removed"].values():
        assert tower["heads"]["removed"] <= 2 and tower["neurons"]["removed"] <= 2 * 63


def test_params_ratio_out_of_reach_of_the_caps_changes_nothing(tiny_clip):
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    with pytest.raises(RecipeError, match="params_ratio 0.2: out of reach"):
        _prune(tiny_clip, neurons=0.25, importance="magnitude", scope="global",
               params_ratio=0.2)
    assert all(torch.equal(before[k], v) for k, v in tiny_clip.model.state_dict().items())


@pytest.mark.parametrize("fusion", ["early", "hybrid"])
def test_params_after_counts_what_pruning_leaves_exactly(fusion):
    """Chained convolutions share the weights between them: counted once, as pruned."""
    from test_fusion import tiny_adapter

    from mmcompress.structured.groups import params_after

    model = tiny_adapter(fusion).model
    groups = find_structure(model).units
    assert any(set(a.inputs) & set(b.outputs) for a in groups for b in groups)  # a chain
    removed = {i: (i % 3 + 1) % g.size for i, g in enumerate(groups)}
    predicted = params_after(model, groups, removed)
    for i, g in enumerate(groups):
        prune_units(model, g, list(range(removed[i])))
    assert predicted == sum(p.numel() for p in model.parameters())


def test_params_ratio_counts_chained_convolutions_once():
    """Out of reach, the error names what the caps leave, counted as pruning would leave it."""
    from test_fusion import tiny_adapter, tiny_data

    from mmcompress.structured.groups import params_after

    adapter = tiny_adapter("early")
    model = adapter.model
    groups = [g for g in find_structure(model).units if g.kind == "channels"]
    most = params_after(model, groups, {i: g.size - 1 for i, g in enumerate(groups)})
    share = most / sum(p.numel() for p in model.parameters())
    with pytest.raises(RecipeError, match=f"keeps {share:.4f} of the parameters"):
        _prune(adapter, tiny_data(), scope="global", params_ratio=0.5, channels=0.9)


def test_prune_then_quantize_in_one_recipe(tiny_clip, tmp_path):
    recipe = {"stages": [{"prune": {"method": "structured", "heads": 0.5, "neurons": 0.5}},
                         {"quantize": {"method": "rtn", "bits": 8}}],
              "evaluate": {"max_samples": 8, "metrics": ["params", "fidelity_cosine"]}}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_image_data(),
                                 progress=False)
    report = result.report
    assert report["after"]["params"] < 0.7 * report["before"]["params"]
    assert report["stages"][0]["summary"]["removed"]["text"]["heads"]["removed"] == 2
    fc1 = result.adapter.model.vision_model.encoder.layers[0].mlp.fc1
    assert type(fc1).__name__ == "QuantLinear" and fc1.spec()["out_features"] == 32
    loaded = mmcompress.load(tmp_path / "out")
    assert torch.equal(loaded.encode_texts(TEXTS), result.adapter.encode_texts(TEXTS))


@pytest.mark.parametrize("cfg,message", [
    ({"heads": 1.0}, "fraction must be in"),
    ({"neurons": 1.5}, "fraction must be in"),
    ({"layers": -1}, "count must be 0 or more"),
    ({"channels": "half"}, "fraction in"),
    ({"heads": True}, "fraction in"),
    ({}, "at least one of"),
    ({"heads": 0.5, "scope": "model"}, "scope"),
    ({"heads": 0.5, "importance": "random"}, "importance"),
    ({"heads": 0.5, "importance": "magnitude", "compensate": True}, "compensate needs"),
    ({"heads": 0.5, "params_ratio": 0.5}, "params_ratio needs scope 'global'"),
    ({"heads": 0.5, "layers": 1, "scope": "global", "params_ratio": 0.5}, "no layers"),
    ({"heads": 0.5, "scope": "global", "params_ratio": 1.0}, "less than 1"),
])
def test_bad_values_are_recipe_errors(cfg, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"stages": [{"prune": {"method": "structured", **cfg}}]})


@pytest.mark.parametrize("cfg,message", [
    ({"heads": 2}, "would remove all"),
    ({"layers": 2}, "would remove all"),
    ({"channels": 0.5}, "no channels"),
    ({"heads": 1, "targets": ["projector"]}, "no attention heads"),
])
def test_impossible_amounts_are_refused_before_anything_changes(tiny_clip, cfg, message):
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    with pytest.raises(RecipeError, match=message):
        _prune(tiny_clip, toy_image_data(), neurons=0.5, **cfg)
    after = tiny_clip.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_fraction_rounding_to_every_unit_leaves_one(tiny_clip):
    """0.9 of 2 heads rounds to 2; a fraction never asks for every unit, so one head stays
    (a count of 2 is refused above); 0.75 of a two-layer list likewise removes one layer."""
    _prune(tiny_clip, toy_image_data(), heads=0.9, layers=0.75, importance="magnitude")
    for tower in (tiny_clip.model.vision_model, tiny_clip.model.text_model):
        assert len(tower.encoder.layers) == 1
        assert tower.encoder.layers[0].self_attn.num_heads == 1


def test_quantized_layers_are_refused(tiny_clip):
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, StageContext(progress=False))
    with pytest.raises(RecipeError, match="before unstructured pruning, quantizing"):
        _prune(tiny_clip, neurons=0.5, importance="magnitude")


def test_quantized_convolutions_are_refused_as_every_quantized_layer_is():
    """The demo CNN's quantized convolutions had no `out_channels`: an internal error."""
    from mmcompress.adapters.demo import DemoAdapter
    from mmcompress.adapters.tokenizers import load_tokenizer
    from mmcompress.models.sentence_encoder import minilm_path

    torch.manual_seed(0)
    tokenizer = load_tokenizer(minilm_path())
    adapter = DemoAdapter(DemoDualEncoder(SentenceEncoder(_bert_config(tokenizer.vocab_size)),
                                          channels=8, hidden=16), tokenizer)
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(adapter, stage.config, StageContext(progress=False))
    with pytest.raises(RecipeError, match=r"cannot shrink vision.conv1 \(QuantConv2d\)"):
        _prune(adapter, channels=0.5, importance="magnitude")


def test_factored_convolutions_are_refused_as_every_factored_layer_is():
    """A Tucker convolution had no `out_channels` either: an internal error."""
    from mmcompress.adapters.classifier import ImageClassifierAdapter
    from mmcompress.models.resnet_cifar import CifarResNet

    torch.manual_seed(0)
    adapter = ImageClassifierAdapter(CifarResNet(20).eval())
    stage = load_recipe({"stages": [{"lowrank": {"method": "tucker", "rank": 4,
                                                 "targets": ["layer1.0.conv1"]}}]}).stages[0]
    METHODS[("lowrank", "tucker")].apply(adapter, stage.config, StageContext(progress=False))
    with pytest.raises(RecipeError, match=r"cannot shrink layer1.0.conv1 \(TuckerConv2d\)"):
        _prune(adapter, channels=0.25, importance="magnitude")


def test_layers_in_quantization_aware_training_are_refused(tiny_clip):
    """A student shrunk while QAT is armed would swap its fake-quantized layers for plain
    ones, and the QAT would be lost without a word."""
    stages = load_recipe({"stages": [
        {"quantize": {"method": "rtn", "bits": 4, "group_size": 16, "qat": True}},
        {"finetune": {"method": "task"}}]}).stages
    ctx = StageContext(data=toy_image_data(), progress=False)
    METHODS[("quantize", "rtn")].apply(tiny_clip, stages[0].config, ctx)
    with pytest.raises(RecipeError, match=r"\(QATLinear\); run it before .* quantizing"):
        _prune(tiny_clip, neurons=0.5, importance="magnitude")


def test_sparse_layers_are_refused_not_densified(tiny_clip):
    """Sparse layers are nn.Linear subclasses: shrinking one would rebuild it dense."""
    stage = load_recipe({"stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]})
    METHODS[("prune", "magnitude")].apply(tiny_clip, stage.stages[0].config,
                                          StageContext(progress=False))
    with pytest.raises(RecipeError, match=r"SparseLinear\); run it before unstructured"):
        _prune(tiny_clip, neurons=0.5, importance="magnitude")


@pytest.mark.parametrize("prune,fragment", [
    ({"heads": 2}, "would remove all of them"),
    ({"heads": 1.0}, "fraction must be in [0, 1)"),
])
def test_cli_refusal_is_one_error_line_and_exit_2(tiny_clip_folder, tmp_path, prune, fragment):
    recipe = tmp_path / "recipe.yaml"
    evaluate = {**FAST_EVAL, "max_samples": 8, "metrics": ["params"]}
    recipe.write_text(yaml.safe_dump({"stages": [{"prune": {"method": "structured",
                                                            "importance": "magnitude",
                                                            **prune}}],
                                      "evaluate": evaluate}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                      str(recipe), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("given, expected", [
    ({}, "activation"),
    ({"scope": "global"}, "taylor"),
    ({"scope": "global", "importance": "magnitude"}, "magnitude"),
    ({"scope": "tower", "importance": None}, "activation"),
])
def test_importance_defaults_to_a_score_that_ranks_across_layers_for_global_scope(given,
                                                                                  expected):
    from mmcompress.methods.prune_structured import StructuredPruneConfig

    config = StructuredPruneConfig(heads=0.5, **given)
    assert config.importance == expected
    given_back = config.model_dump(exclude_unset=True)  # what recipe.yaml writes
    assert given_back.get("importance") == given.get("importance")
    assert StructuredPruneConfig(**given_back).importance == expected


def test_global_layer_removal_frees_what_per_tower_removal_frees():
    """On a ResNet the global plan kept one removable block per stage for nothing (the
    stride-2 block already keeps the list from emptying): 4 blocks instead of 6."""
    kept = {}
    for scope in ("tower", "global"):
        adapter = ImageClassifierAdapter(_resnet())
        _prune(adapter, toy_image_data(), layers=2, scope=scope)
        kept[scope] = sum(p.numel() for p in adapter.model.parameters())
    block = sum(p.numel() for p in _resnet().layer3[1].parameters())
    assert abs(kept["global"] - kept["tower"]) <= block


def test_after_half_precision_blocks_go_and_units_are_refused(tiny_clip):
    """Half-precision layers (and sparse int8 ones) lack `out_features`: finding the groups
    was an internal AttributeError, whatever the stage asked for."""
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 16}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, StageContext(progress=False))
    with pytest.raises(RecipeError, match=r"cannot shrink .*mlp\.fc1 \(HalfWeight\)"):
        _prune(tiny_clip, toy_image_data(), neurons=0.5)
    summary = _prune(tiny_clip, toy_image_data(), layers=1)  # whatever the blocks hold
    assert len(tiny_clip.model.text_model.encoder.layers) == 1
    assert summary["removed"]["vision"]["layers"] == {"removed": 1, "of": 2}


def test_a_layer_in_ignore_keeps_its_shape_and_its_group_its_units(tiny_clip):
    """Ignoring fc2 still shrank it (and the error advising 'ignore:' could not be followed)."""
    mlp = tiny_clip.model.vision_model.encoder.layers[0].mlp
    fc2 = mlp.fc2
    stage = load_recipe({"stages": [{"quantize": {
        "method": "rtn", "bits": 8, "targets": ["vision_model.encoder.layers.0.mlp.fc2"]}}]})
    METHODS[("quantize", "rtn")].apply(tiny_clip, stage.stages[0].config,
                                       StageContext(progress=False))
    _prune(tiny_clip, neurons=0.5, importance="magnitude",
           ignore=["vision_model.encoder.layers.0.mlp.fc2"])
    assert mlp.fc2 is not fc2 and mlp.fc1.out_features == 64  # quantized, left whole
    other = tiny_clip.model.vision_model.encoder.layers[1].mlp
    assert other.fc1.out_features == other.fc2.in_features == 32


def test_gradual_taylor_scores_equal_the_one_shot_stage_s(tiny_clip):
    """The schedule's masks ranked units by Taylor scores of whole text batches; the one-shot
    stage scores texts one per batch (its documented measure)."""
    from mmcompress.methods.prune_structured import _unit_groups, one_text_per_batch
    from mmcompress.structured.importance import unit_scores
    from mmcompress.training.masks import StructuredMasks

    config = METHODS[("prune", "structured")].config_cls.model_validate(
        {"method": "structured", "neurons": 0.5, "importance": "taylor",
         "schedule": {"kind": "cubic"}})
    ctx = StageContext(data=toy_image_data(), calibration=CalibrationConfig(samples=8,
                                                                            batch_size=4),
                       progress=False)
    masks = StructuredMasks(tiny_clip, config, ctx)
    groups = _unit_groups(tiny_clip, config, set(tiny_clip.model.modules()))
    calib = ctx.calibration_data(tiny_clip)
    tiny_clip.model.eval()
    one_shot = unit_scores(tiny_clip, groups, "taylor",
                           lambda: one_text_per_batch(tiny_clip, ctx, calib), dict)
    for a, b in zip(masks._scores(), one_shot, strict=True):
        torch.testing.assert_close(a, b)


def test_global_layer_removal_counts_quantized_blocks_by_their_logical_weights():
    """Quantized layers keep their weights in buffers: their blocks looked almost free to the
    global plan, which removed 6 of 8 int8 text blocks where per-tower removal took 2."""
    from _helpers import tiny_clip_config

    from mmcompress.adapters.hf_dual import CLIPAdapter
    from mmcompress.evaluation.evaluate import count_params

    cfg = tiny_clip_config()
    cfg.text_config.num_hidden_layers = cfg.vision_config.num_hidden_layers = 8
    torch.manual_seed(0)
    adapter = CLIPAdapter.random(cfg)
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8,
                                                  "targets": ["text"]}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(adapter, stage.config, StageContext(progress=False))
    kept = {}
    for scope in ("tower", "global"):
        pruned = copy.deepcopy(adapter)
        _prune(pruned, toy_image_data(), layers=0.25, scope=scope)
        kept[scope] = count_params(pruned.model)
    block = count_params(adapter.model.vision_model.encoder.layers[0])
    assert abs(kept["global"] - kept["tower"]) <= block


def test_a_list_of_one_unit_is_refused_with_advice_that_fits_it():
    """A one-layer list asked for `layers: 1` was told to 'ask for a count below 1'."""
    from mmcompress.structured.allocate import check_counts

    with pytest.raises(RecipeError, match="it has only one: leave it out with 'targets'"):
        check_counts("layers", "fusion.layers", 1, 1, "layers")
    with pytest.raises(RecipeError, match="ask for a count below 4, or a fraction"):
        check_counts("heads", "text.layer.0", 4, 4, "heads")
