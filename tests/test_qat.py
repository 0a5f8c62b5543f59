"""Quantization-aware training: exact fake quantization, STE gradients, conversion to the
post-training format, training through the shared trainer, save → reload."""

import numpy as np
import pytest
import torch
from _helpers import FAST_EVAL, tiny_clip_config
from _tiny_training import EmbeddingTargets, context, fit, run_stage, toy_data
from torch import nn

import mmcompress
from mmcompress.adapters.hf_dual import CLIPAdapter
from mmcompress.errors import RecipeError
from mmcompress.io.checkpoint import load_checkpoint, save_checkpoint
from mmcompress.methods.training_hooks import take_armed
from mmcompress.modules import QuantConv2d, QuantEmbedding, QuantLinear, W8A8Linear
from mmcompress.quantization.grid import (
    QuantGrid,
    compute_scales,
    dequantize,
    fake_quantize,
    fake_quantize_ste,
    quantize,
)
from mmcompress.recipe import load_recipe
from mmcompress.training import TrainCallback, TrainSettings, train
from mmcompress.training.qat import QAT_TYPES, latent_weight, qat_module

GRIDS = [QuantGrid(4, 8, True), QuantGrid(3, None, False), QuantGrid(4, 5, False)]


@pytest.mark.parametrize("grid", GRIDS)
def test_fake_quantization_is_the_stored_round_trip_bit_for_bit(grid):
    torch.manual_seed(0)
    w = torch.randn(12, 22)
    scale, zero = compute_scales(w, grid)
    expected = dequantize(quantize(w, grid, scale, zero), grid, scale, zero)
    assert torch.equal(fake_quantize_ste(w, grid, scale, zero), expected)


def test_ste_passes_gradients_inside_the_range_and_stops_them_where_clamped():
    torch.manual_seed(0)
    grid = QuantGrid(4, 8, True)
    w = torch.randn(6, 16, requires_grad=True)
    scale, zero = compute_scales(w.detach(), grid)
    scale = (scale * 0.5).requires_grad_()  # half the range: the largest weights clamp
    r = torch.randn(6, 16)
    (fake_quantize_ste(w, grid, scale, zero) * r).sum().backward()
    codes = torch.round(w.detach() / scale.detach().repeat_interleave(8, 1)) + grid.midpoint
    inside = (codes >= 0) & (codes <= grid.qmax)
    assert 0 < int(inside.sum()) < w.numel()
    torch.testing.assert_close(w.grad[inside], r[inside])  # d/dw of (w/s)·s: 1 up to rounding
    assert (w.grad[~inside] == 0).all()
    assert scale.grad is not None and scale.grad.abs().sum() > 0  # LSQ: scales learn too


def _layers():
    torch.manual_seed(0)
    lin, conv = nn.Linear(24, 10), nn.Conv2d(4, 6, 3, padding=1, stride=2)
    s_lin, s_conv = torch.rand(24) + 0.5, torch.rand(4) + 0.5
    return [(lin, None, torch.randn(5, 24)), (conv, None, torch.randn(2, 4, 9, 9)),
            (lin, s_lin, torch.randn(5, 24)), (conv, s_conv, torch.randn(2, 4, 9, 9))]


def _ptq(module, grid, input_scale):
    if isinstance(module, nn.Linear):
        return QuantLinear.from_linear(module, grid, None, input_scale)
    return QuantConv2d.from_conv(module, grid, None, input_scale)


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("grid", GRIDS)
def test_fake_quantized_layer_equals_its_converted_module(grid, learned):
    for module, input_scale, x in _layers():
        q = _ptq(module, grid, input_scale)
        qat = qat_module(q, module, learned)
        assert isinstance(qat, QAT_TYPES)
        with torch.no_grad():  # before training: exactly the post-training layer
            assert torch.equal(qat(x), q(x))
            qat.weight.add_(0.05 * torch.randn_like(qat.weight))  # "training" moved things
            if learned:
                qat.scale.mul_(1.1)
            converted = qat.to_quantized()
            assert type(converted) is type(q)
            assert torch.equal(qat(x), converted(x))


def test_training_starts_from_the_original_weight_unless_the_codes_differ():
    torch.manual_seed(0)
    lin, grid = nn.Linear(16, 4), QuantGrid(4, 8, True)
    q = QuantLinear.from_linear(lin, grid)
    scale, zero = compute_scales(lin.weight.detach(), grid)
    codes = quantize(lin.weight.detach(), grid, scale, zero)
    codes[0, 0] = (codes[0, 0] + 1) % grid.qmax  # as if GPTQ chose another rounding
    q2 = QuantLinear.from_linear(lin, grid, (codes, scale, zero))
    for learned in (False, True):  # RTN: keep sub-grid detail
        assert torch.equal(latent_weight(lin, q, learned), lin.weight.detach())
        assert torch.equal(latent_weight(lin, q2, learned), q2.dequantized_weight())


@pytest.mark.parametrize("scales", ["minmax", "learned"])
def test_qat_stage_trains_and_converts_to_the_saved_format(tiny_clip, tmp_path, scales):
    ctx = context()
    before = {n: type(m) for n, m in tiny_clip.model.named_modules()}
    summary = run_stage(tiny_clip, "quantize", ctx, method="rtn", bits=4, group_size=16,
                        qat={"scales": scales})
    layers = {n: m for n, m in tiny_clip.model.named_modules() if isinstance(m, QAT_TYPES)}
    assert summary["qat"]["layers"] == len(layers) > 0
    assert all(before[n] in (nn.Linear, nn.Conv2d) for n in layers)
    assert any(isinstance(m, QuantEmbedding) for m in tiny_clip.model.modules())
    start = {n: m.weight.detach().clone() for n, m in layers.items()}
    result = fit(tiny_clip, ctx, steps=4)
    assert result["steps"] == 4
    assert summary["qat"]["converted"] == len(layers)
    assert not any(isinstance(m, QAT_TYPES) for m in tiny_clip.model.modules())
    converted = {n: tiny_clip.model.get_submodule(n) for n in layers}
    assert all(type(m) in (QuantLinear, QuantConv2d) for m in converted.values())
    # training changed the integer weights (not just the float shadow)
    assert any(not torch.equal(m.dense_weight().reshape(start[n].shape), start[n])
               for n, m in converted.items())
    pixels = tiny_clip.image_tensor([torch.rand(32, 32, 3).numpy()])
    tokens = tiny_clip.text_tensors(["a small cat"])
    with torch.no_grad():
        ref = tiny_clip.embed_image_tensor(pixels), tiny_clip.embed_text_tensors(tokens)
    save_checkpoint(tiny_clip, tmp_path, "tiny", [])
    loaded = load_checkpoint(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded.embed_image_tensor(pixels), ref[0])
        assert torch.equal(loaded.embed_text_tensors(tokens), ref[1])


class _Outputs(TrainCallback):
    """Records the model's outputs when training ends (before callbacks after it run)."""

    def __init__(self, objective: EmbeddingTargets) -> None:
        self.objective, self.seen = objective, None

    def on_train_end(self, trainer) -> None:
        self.seen = self.objective.outputs()


def test_converting_keeps_exactly_what_the_fake_quantized_model_computed(tiny_clip):
    ctx = context()
    run_stage(tiny_clip, "quantize", ctx, method="rtn", bits=3, qat={"scales": "learned"},
              embeddings=False)
    objective = EmbeddingTargets(tiny_clip)
    probe = _Outputs(objective)
    settings = TrainSettings(epochs=1, max_steps=2, batch_size=4, lr=1e-2, warmup=0,
                             evaluate=False)
    train(tiny_clip, objective, settings, callbacks=[probe, *take_armed(ctx)], progress=False)
    assert not any(isinstance(m, QAT_TYPES) for m in tiny_clip.model.modules())
    for fake, converted in zip(probe.seen, objective.outputs(), strict=True):
        assert torch.equal(fake, converted)


def _quantized_clip(method: str, qat) -> tuple[CLIPAdapter, torch.Tensor]:
    """A tiny CLIP whose vision tower `method` quantized (with `qat`), and its image
    embedding of a grey image before any training."""
    torch.manual_seed(0)
    adapter = CLIPAdapter.random(tiny_clip_config())
    x = adapter.image_tensor([np.full((32, 32, 3), 0.3, dtype=np.float32)])
    ctx = context()
    extra = {"n_grid": 4} if method == "awq" else {}
    run_stage(adapter, "quantize", ctx, method=method, bits=4, group_size=16,
              targets=["vision"], embeddings=False, qat=qat, **extra)
    assert bool(take_armed(ctx)) == bool(qat)
    with torch.no_grad():
        return adapter, adapter.embed_image_tensor(x)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptq_and_awq_start_qat_from_their_own_rounding(method):
    ptq, expected = _quantized_clip(method, False)
    assert torch.equal(_quantized_clip(method, {"scales": "learned"})[1], expected)
    # min-max scales: their own stored weights, rounded again on their own min-max scales
    minmax, start = _quantized_clip(method, True)
    layers = {n: m for n, m in minmax.model.named_modules() if isinstance(m, QAT_TYPES)}
    assert layers
    for name, layer in layers.items():
        stored = ptq.model.get_submodule(name).dequantized_weight()
        assert torch.equal(layer.matrix(), stored), name
        with torch.no_grad():
            assert torch.equal(layer.fake_weight().reshape(stored.shape),
                               fake_quantize(stored, layer.grid)), name
    torch.testing.assert_close(start, expected, rtol=0, atol=0.05)  # AWQ: clipping lost


def test_recipe_refuses_qat_without_training_after_it_and_qat_on_half_precision():
    with pytest.raises(RecipeError, match="add a finetune or distill stage"):
        load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 4, "qat": True}}]})
    with pytest.raises(RecipeError, match="qat trains integer grids"):
        load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 16, "qat": True}}]})
    with pytest.raises(RecipeError, match=r"qat.step: Extra inputs .*\(options: scales, acti"):
        load_recipe({"stages": [{"quantize": {"method": "rtn", "qat": {"step": 1}}}]})


def test_recipe_quantize_with_qat_then_finetune_saves_the_quantized_model(tiny_clip, tmp_path):
    recipe = {"stages": [
        {"quantize": {"method": "rtn", "bits": 4, "group_size": 16, "qat": True}},
        {"finetune": {"method": "task", "epochs": 1, "batch_size": 4, "lr": 1e-3,
                      "warmup": 0, "evaluate": False}}], "evaluate": FAST_EVAL}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_data(),
                                 progress=False)
    qat = result.report["stages"][0]["summary"]["qat"]
    assert qat["converted"] == qat["layers"] > 0
    quantized = [m for m in result.adapter.model.modules() if type(m) in (QuantLinear,
                                                                          QuantConv2d)]
    assert len(quantized) == qat["layers"]
    loaded = mmcompress.load(tmp_path / "out")
    texts = ["a cat", "the dog"]
    assert torch.equal(loaded.encode_texts(texts), result.adapter.encode_texts(texts))


def test_w8a8_qat_layer_matches_its_converted_w8a8_linear_and_learns_through_inputs():
    torch.manual_seed(0)
    lin = nn.Linear(32, 12)
    q = QuantLinear.from_linear(lin, QuantGrid(8, None, True))
    qat = qat_module(q, lin, learned=False)
    qat.act_scale = torch.tensor([0.02])
    x = torch.randn(7, 32, requires_grad=True)
    qat(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # straight through the rounding
    converted = qat.to_quantized()
    assert isinstance(converted, W8A8Linear)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), qat(x), rtol=1e-5, atol=1e-5)
        converted.kernel = "reference"
        torch.testing.assert_close(converted(x), qat(x), rtol=1e-5, atol=1e-5)


def test_recipe_qat_with_activations_trains_w8a8_layers(tiny_clip, tmp_path):
    recipe = {"stages": [
        {"quantize": {"method": "rtn", "bits": 8, "qat": {"activations": {"observer": "mse"}}}},
        {"finetune": {"method": "task", "epochs": 1, "batch_size": 4, "lr": 1e-3,
                      "warmup": 0, "evaluate": False}}], "evaluate": FAST_EVAL}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_data(),
                                 progress=False)
    qat = result.report["stages"][0]["summary"]["qat"]
    w8a8 = [m for m in result.adapter.model.modules() if isinstance(m, W8A8Linear)]
    assert qat["w8a8"] == len(w8a8) > 0
    loaded = mmcompress.load(tmp_path / "out")
    texts = ["a cat", "the dog"]
    assert torch.equal(loaded.encode_texts(texts), result.adapter.encode_texts(texts))
    with pytest.raises(RecipeError, match="qat activations train W8A8 layers"):
        load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 4,
                                              "qat": {"activations": {}}}},
                                {"finetune": {"method": "task"}}]})
    with pytest.raises(RecipeError, match="a budget would give layers other widths"):
        load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8,
                                              "budget": {"size_ratio": 0.2},
                                              "qat": {"activations": {}}}},
                                {"finetune": {"method": "task"}}]})
