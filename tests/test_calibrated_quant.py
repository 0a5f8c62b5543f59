"""GPTQ and AWQ numerics, the calibration engine, and their end-to-end save/reload."""

import copy

import numpy as np
import pytest
import torch
from _helpers import layer_inputs, output_error
from torch import nn

import mmcompress
from mmcompress.calibration import HessianCollector, calibrate_layers, layer_groups
from mmcompress.data import Dataset
from mmcompress.errors import DataError, RecipeError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import METHODS, StageContext, run_stages
from mmcompress.quantization.awq import awq_quantize
from mmcompress.quantization.gptq import gptq_quantize
from mmcompress.quantization.grid import (
    QuantGrid,
    compute_scales,
    dequantize,
    fake_quantize,
    quantize,
)
from mmcompress.recipe import CalibrationConfig, load_recipe
from mmcompress.report import calibrated_on


@pytest.mark.parametrize("grid", [QuantGrid(4, 16), QuantGrid(3, None, False), QuantGrid(8)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_layer_error_below_rtn(grid, act_order):
    x, w = layer_inputs(), torch.randn(32, 64)
    codes, scale, zero = gptq_quantize(w, 2 * x.T @ x / len(x), grid, act_order=act_order)
    assert codes.max() <= grid.qmax and scale.shape == (32, grid.groups(64))
    gptq = output_error(x, w, dequantize(codes, grid, scale, zero))
    assert gptq < 0.7 * output_error(x, w, fake_quantize(w, grid))


@pytest.mark.parametrize("grid", [QuantGrid(4, 24), QuantGrid(3, 40, False)])
def test_gptq_group_scales_do_not_depend_on_the_block_size(grid):
    """A group running past a lazy block took its scale from columns that lacked the block's
    updates: with groups of 96 and blocks of 128, ~1,100 codes differed from the
    column-by-column algorithm (block size 1), which block sizes must not change."""
    torch.manual_seed(0)
    x, w = layer_inputs(), torch.randn(24, 64)
    h = (2 * x.T @ x / len(x)).double()
    runs = [gptq_quantize(w.double(), h, grid, block_size=b) for b in (1, 16, 64)]
    for codes, scale, _ in runs[1:]:
        assert torch.equal(codes, runs[0][0])
        assert torch.allclose(scale, runs[0][1], rtol=1e-5)


@pytest.mark.parametrize("grid", [QuantGrid(4, 16), QuantGrid(3, None, False), QuantGrid(4, 16,
                                                                                   False)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_on_a_pruned_layer_keeps_its_zeros_and_beats_rtn(grid, act_order):
    """Without the mask, GPTQ's updates landed on pruned weights, whose codes the sparse layer
    then dropped: 0.85-1.02x RTN's error here, against 0.78-0.93x with it."""
    torch.manual_seed(0)
    x, w = layer_inputs(), torch.randn(32, 64)
    keep = torch.rand(32, 64) > 0.5
    w, h = w * keep, 2 * x.T @ x / len(x)
    codes, scale, zero = gptq_quantize(w, h, grid, act_order=act_order, keep=keep)
    deq = dequantize(codes, grid, scale, zero)
    assert torch.equal(deq[~keep], torch.zeros_like(deq[~keep]))
    codes, scale, zero = gptq_quantize(w, h, grid, act_order=act_order)
    unaware = dequantize(codes, grid, scale, zero) * keep
    error = output_error(x, w, deq)
    assert error < 0.95 * output_error(x, w, fake_quantize(w, grid) * keep)
    assert error < 0.95 * output_error(x, w, unaware)


@pytest.mark.parametrize("grid", [QuantGrid(4, 16), QuantGrid(4, 16, False)])
def test_gptq_group_scales_ignore_the_updates_on_pruned_weights(grid):
    """Group scales must come from kept weights only: counting the error updates GPTQ pushes
    onto pruned positions gave a fully pruned group a scale of ~0.01 (not the empty group's 1)
    and moved the zero points of a group with one kept weight off the grid's end."""
    torch.manual_seed(0)
    x, w = layer_inputs(), torch.randn(8, 64)
    keep = torch.rand(8, 64) > 0.5
    keep[:, 16:48] = False  # group 1 fully pruned; group 2 keeps only its first column
    keep[:, 32] = True
    codes, scale, zero = gptq_quantize(w * keep, 2 * x.T @ x / len(x), grid, keep=keep)
    assert torch.equal(scale[:, 1], torch.ones(8))  # compute_scales' empty group
    value = dequantize(codes, grid, scale, zero)[:, 32]
    assert (value != 0).all()
    if zero is None:  # the kept weight alone sets the range: it lands on code ±7
        assert set(codes[:, 32].tolist()) <= {1, 15}
    else:  # range [min(v, 0), max(v, 0)]: v at one end, 0 (the zero point) at the other
        assert torch.equal(zero[:, 1], torch.zeros(8, dtype=torch.uint8))
        assert torch.equal(zero[:, 2], torch.where(value > 0, 0, 15).to(torch.uint8))
        assert torch.equal(codes[:, 32], torch.where(value > 0, 15, 0).to(torch.uint8))


def test_gptq_on_a_grouped_convolution_quantizes_each_group_with_its_own_inputs():
    """The unfolded input of a grouped convolution spans every input channel (groups × the
    weight's columns); GPTQ used to fail there with an IndexError."""
    from mmcompress.calibration.collectors import layer_input_rows

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=4)
    x = nn.functional.interpolate(torch.randn(16, 8, 3, 3), size=6, mode="bilinear") + 0.5
    stats = HessianCollector()
    stats.add(layer_input_rows(conv, x))
    grid = QuantGrid(4, None)
    w = conv.weight.detach().reshape(12, -1)
    codes, scale, zero = gptq_quantize(w, stats.hessian, grid)
    assert codes.shape == w.shape and scale.shape == (12, 1)

    def error(weight):
        with torch.no_grad():
            out = nn.functional.conv2d(x, weight.view_as(conv.weight), conv.bias, padding=1,
                                       groups=4)
            return float((out - conv(x)).pow(2).mean())

    assert error(dequantize(codes, grid, scale, zero)) < 0.6 * error(fake_quantize(w, grid))


def test_awq_layer_error_below_rtn_with_outlier_channels():
    x, w, grid = layer_inputs(outliers=True), torch.randn(32, 64), QuantGrid(4, 16)
    (codes, scale, zero), s = awq_quantize(w, x[:512], x.abs().mean(0), grid)
    awq = output_error(x, w, dequantize(codes, grid, scale, zero) / s)
    assert awq < 0.6 * output_error(x, w, fake_quantize(w, grid))


def test_awq_clipping_picks_each_groups_best_ratio_on_the_scaled_inputs():
    """The clip search must score each candidate range by the error of rounding the weight
    itself (not the shrunk weight) on the inputs the layer sees (x / s, not x). Scoring the
    shrunk weight gave an output error of 48.3, scoring on x 53.5, against 39.5 (and 50.7
    unclipped)."""
    x, w, grid = layer_inputs(outliers=True), torch.randn(32, 64), QuantGrid(4, 16)
    w[:, 10] *= 8  # a few large weights: clipping pays
    calib = x[:512]
    (codes, scale, zero), s = awq_quantize(w, calib, x.abs().mean(0), grid)
    (plain, p_scale, p_zero), s_plain = awq_quantize(w, calib, x.abs().mean(0), grid, clip=False)
    assert torch.equal(s, s_plain)
    clipped = output_error(x, w, dequantize(codes, grid, scale, zero) / s)
    unclipped = output_error(x, w, dequantize(plain, grid, p_scale, p_zero) / s)
    assert clipped < 0.85 * unclipped

    ws, xs = w * s, calib / s

    def group_errors(deq):  # [rows, groups]: each group's share of the output error on x / s
        d = deq - ws
        return torch.stack([((xs[:, g:g + 16] @ d[:, g:g + 16].T) ** 2).mean(0)
                            for g in range(0, 64, 16)], dim=1)

    def shrunk(r):  # W·diag(s) rounded on its min-max grid shrunk by r
        q_scale, q_zero = compute_scales(ws * r, grid)
        return dequantize(quantize(ws, grid, q_scale, q_zero), grid, q_scale, q_zero)

    best = torch.stack([group_errors(shrunk(r)) for r in torch.linspace(1.0, 0.5, 20)]).amin(0)
    chosen = group_errors(dequantize(codes, grid, scale, zero))
    assert (chosen <= best * (1 + 1e-4) + 1e-9).all()  # no group could do better


def test_layer_groups_follow_blocks():
    names = ["enc.layers.0.q", "enc.layers.0.fc", "enc.layers.1.q", "proj", "conv1"]
    assert layer_groups(names) == [["enc.layers.0.q", "enc.layers.0.fc"], ["enc.layers.1.q"],
                                   ["proj"], ["conv1"]]


def _data(n=12, images=True, texts=True):
    rng = np.random.default_rng(0)
    return Dataset("toy", "classification",
                   images=[rng.random((16, 16, 3), dtype=np.float32) for _ in range(n)]
                   if images else [],
                   labels=[i % 2 for i in range(n)], class_names=["cat", "dog"] if texts else [],
                   templates=["a {}", "the {}"] if texts else [])


def _apply(adapter, method, data, **cfg):
    stage = load_recipe({"stages": [{"quantize": {"method": method, **cfg}}]}).stages[0]
    ctx = StageContext(data=data, calibration=CalibrationConfig(samples=8, batch_size=4),
                       progress=False)
    return METHODS[("quantize", method)].apply(adapter, stage.config, ctx)


def test_engine_streams_each_block_once_and_stops_early(tiny_clip):
    layers = {n: m for n, m in tiny_clip.model.named_modules()
              if isinstance(m, nn.Linear) and n.startswith("vision_model")}
    calib = tiny_clip.calibration_data(_data(), samples=8, batch_size=4, seed=0)
    seen = {}

    def keep(name, module, stats):
        seen[name] = stats.rows
        return None

    assert calibrate_layers(tiny_clip, layers, calib, lambda n, m: HessianCollector(), keep,
                            "test", progress=False) == 0
    assert set(seen) == set(layers)
    tokens = (32 // 8) ** 2 + 1  # patches + class token, per image
    assert all(rows == 8 * tokens for rows in seen.values())


def test_merged_passes_group_consecutive_blocks_that_need_the_same_inputs():
    from mmcompress.calibration.engine import _runs

    needs = [("image",)] * 3 + [("text",)] * 2 + [("image",)]
    assert _runs(needs, merge=False) == [[0], [1], [2], [3], [4], [5]]
    assert _runs(needs, merge=True) == [[0, 1, 2], [3, 4], [5]]


def test_merged_passes_give_the_same_statistics_in_fewer_passes(tiny_clip):
    layers = {n: m for n, m in tiny_clip.model.named_modules() if isinstance(m, nn.Linear)
              and n.startswith(("vision_model.encoder", "text_model.encoder"))}
    stem = tiny_clip.model.vision_model.embeddings  # runs once per pass over an image batch
    calls = []
    stem.register_forward_hook(lambda *_: calls.append(1))

    def statistics(merge):
        calls.clear()
        stats = {}
        calib = tiny_clip.calibration_data(_data(), samples=8, batch_size=4, seed=0)
        calibrate_layers(tiny_clip, dict(layers), calib, lambda n, m: HessianCollector(),
                         lambda n, m, c: stats.__setitem__(n, c), "test", progress=False,
                         merge=merge, replay=False)
        return stats, len(calls)

    (apart, passes_apart), (merged, passes_merged) = statistics(False), statistics(True)
    blocks = len(tiny_clip.model.vision_model.encoder.layers)
    assert blocks > 1 and passes_apart == blocks * passes_merged == blocks * 2  # 2 batches
    assert set(merged) == set(apart) == set(layers)
    assert all(torch.equal(merged[n].hessian, apart[n].hessian) for n in layers)
    with pytest.raises(RuntimeError, match="statistics only"):
        calibrate_layers(tiny_clip, dict(layers), tiny_clip.calibration_data(
            _data(), samples=4, batch_size=4, seed=0), lambda n, m: HessianCollector(),
            lambda n, m, c: nn.Identity(), "test", progress=False, merge=True)


def _rounded(module):
    """A copy of the linear `module` with coarsely rounded weights (a stand-in compression)."""
    new = nn.Linear(module.in_features, module.out_features)
    new.load_state_dict(module.state_dict())
    with torch.no_grad():
        new.weight.copy_((new.weight * 4).round() / 4)
    return new


def _sequential(adapter, replay, paired):
    """Hessians (and, `paired` with the unmodified model, cross-covariances) and new layers of a
    sequential calibration of the vision encoder that rounds each layer, and how often the
    vision stem ran in either model."""
    layers = {n: m for n, m in adapter.model.named_modules()
              if isinstance(m, nn.Linear) and n.startswith("vision_model.encoder")}
    reference = copy.deepcopy(adapter.model) if paired else None
    calls, stats = [], {}
    for model in (adapter.model, reference) if paired else (adapter.model,):
        model.vision_model.embeddings.register_forward_hook(lambda *_: calls.append(1))

    def replace(name, module, collector):
        stats[name] = (collector.hessian, collector.cross)
        return _rounded(module)

    calib = adapter.calibration_data(_data(), samples=8, batch_size=4, seed=0)
    calibrate_layers(adapter, dict(layers), calib, lambda n, m: HessianCollector(), replace,
                     "test", progress=False, replay=replay, reference=reference)
    return stats, {n: adapter.model.get_submodule(n).weight for n in layers}, len(calls)


@pytest.mark.parametrize("paired", [False, True])
def test_replayed_blocks_see_the_same_inputs_as_rerunning_the_compressed_prefix(tiny_clip,
                                                                                paired):
    twin = copy.deepcopy(tiny_clip)
    (h_rerun, w_rerun, rerun), (h_replay, w_replay, replay) = (
        _sequential(twin, replay=False, paired=paired),
        _sequential(tiny_clip, replay=True, paired=paired))
    blocks, models = len(tiny_clip.model.vision_model.encoder.layers), 1 + paired
    assert blocks > 1 and rerun == blocks * 2 * models  # 2 batches, the prefix for every block
    assert replay == 2 * models + 1  # once per batch, and one batch to check the chain
    assert set(h_replay) == set(h_rerun) and len(h_rerun) == 6 * blocks
    for n, (hessian, cross) in h_rerun.items():
        assert torch.equal(h_replay[n][0], hessian)
        assert (cross is None) != paired and (cross is None or torch.equal(h_replay[n][1], cross))
    assert all(torch.equal(w_replay[n], w_rerun[n]) for n in w_rerun)


def test_one_probe_serves_every_group_that_needs_the_same_inputs(tiny_clip):
    vision = tiny_clip.model.vision_model
    layers = {"vision_model.embeddings.patch_embedding": vision.embeddings.patch_embedding,
              **{n: m for n, m in tiny_clip.model.named_modules()
                 if isinstance(m, nn.Linear) and n.startswith("vision_model.encoder")}}
    calls = []
    vision.embeddings.register_forward_hook(lambda *_: calls.append(1))
    calib = tiny_clip.calibration_data(_data(), samples=8, batch_size=4, seed=0)
    calibrate_layers(tiny_clip, layers, calib, lambda n, m: HessianCollector(),
                     lambda n, m, c: None, "test", progress=False)
    # the image stem finishes once for the probe and once per batch (2) to catch the encoder
    # chain's inputs; the patch embedding's own passes stop inside the stem. The chain starts
    # at the second group, which the first group's probe already covered: no second probe
    assert len(vision.encoder.layers) == 2 and len(calls) == 1 + 2


def test_blocks_not_fed_by_the_one_before_are_not_replayed():
    from mmcompress.calibration import replay
    from mmcompress.calibration.replay import probe_chain

    class Scaled(nn.Module):  # block 1 reads twice block 0's output, not the output itself
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

        def forward(self, x):
            return self.layers[2](self.layers[1](2 * self.layers[0](x)))

    model, x = Scaled(), torch.randn(2, 4)
    chain = probe_chain(model, list(model.layers), lambda: model(x))
    assert chain.links == [None, 0]  # block 2 reads block 1's output, block 1 not block 0's
    assert chain.slots(0, batches=1) == [] and chain.slots(1, batches=1) == [0]
    assert chain.sizes == [x.numel() * x.element_size()] * 3
    too_many = replay.REPLAY_BYTES // (2 * chain.sizes[1]) + 1
    assert chain.slots(1, too_many - 1) == [0] and chain.slots(1, too_many) == []

    class InPlace(nn.Module):  # the middle block changes its input in place
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.ReLU(inplace=True),
                                         nn.Linear(4, 4)])

        def forward(self, x):
            return self.layers[2](self.layers[1](self.layers[0](x)))

    model = InPlace()
    chain = probe_chain(model, list(model.layers), lambda: model(x))
    assert chain.links == [None, None] and chain.sizes[1] is None
    model.layers[1].inplace = False
    assert probe_chain(model, list(model.layers), lambda: model(x)).links == [0, 0]


def test_chain_slots_follow_keyword_arguments_and_require_the_same_other_arguments():
    from mmcompress.calibration.replay import BlockCall, chain_slot

    h, out, mask = torch.zeros(1), torch.ones(1), torch.ones(2)
    call = BlockCall((), {"hidden_states": h, "mask": mask, "flag": True}, None)
    assert chain_slot(call, (out,), BlockCall((), {"hidden_states": out, "mask": mask,
                                                   "flag": True}, None)) == "hidden_states"
    assert chain_slot(call, (out,), BlockCall((), {"hidden_states": out, "mask": mask.clone(),
                                                   "flag": True}, None)) is None
    assert chain_slot(call, out, BlockCall((), {"hidden_states": out, "mask": mask,
                                                "flag": False}, None)) is None
    moved = call.passing("hidden_states", out)
    assert moved.kwargs["hidden_states"] is out and call.kwargs["hidden_states"] is h


@pytest.mark.parametrize("method,cfg", [("gptq", {"bits": 4, "group_size": 16}),
                                        ("gptq", {"bits": 3, "act_order": True}),
                                        ("awq", {"bits": 4, "group_size": 16, "n_grid": 4})])
def test_calibrated_methods_save_and_reload_identically(tiny_clip, tmp_path, method, cfg):
    summary = _apply(tiny_clip, method, _data(), **cfg)
    assert summary["modules"] > 0
    texts = ["a cat", "the dog"]
    before = tiny_clip.encode_texts(texts)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    assert torch.equal(mmcompress.load(tmp_path).encode_texts(texts), before)


def test_awq_on_convolutions_keeps_the_function(tiny_clip):
    conv = tiny_clip.model.vision_model.embeddings.patch_embedding
    pixels = torch.randn(2, 3, 32, 32)
    ref = conv(pixels)
    _apply(tiny_clip, "awq", _data(), bits=8, n_grid=5, targets=["re:patch_embedding"])
    quant = tiny_clip.model.vision_model.embeddings.patch_embedding
    assert type(quant).__name__ == "QuantConv2d" and quant.input_scale is not None
    torch.testing.assert_close(quant(pixels), ref, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("data,message", [
    (Dataset("empty", "classification"), "empty"),
    (_data(images=False), "needs image inputs"),
])
def test_bad_calibration_data_is_refused(tiny_clip, data, message):
    with pytest.raises(DataError, match=message):
        _apply(tiny_clip, "gptq", data, bits=4)


def test_nan_calibration_images_are_refused(tiny_clip):
    data = _data()
    data.images[0] = np.full((16, 16, 3), np.nan, dtype=np.float32)
    with pytest.raises(DataError, match="NaN"):
        tiny_clip.calibration_data(data, samples=12, batch_size=4, seed=0)


def _sentences(n: int) -> Dataset:
    sentence = "a man is playing the guitar while two dogs run across snowy fields"
    texts = [" ".join(sentence.split(" ")[: 2 + i % 11]) for i in range(n)]
    return Dataset("sentences", "sts", texts=texts, texts_b=texts[::-1], scores=[1.0] * n)


def _tokens(batches) -> int:
    return sum(int(b.token_mask.sum()) for b in batches)


def test_auto_samples_draw_texts_until_the_token_target(tiny_clip):
    data = _sentences(300)
    samples, tokens = CalibrationConfig(text_tokens=2000).amounts()
    calib = tiny_clip.calibration_data(data, samples, 16, 0, tokens)
    drawn, batches = calib.drawn["text"], calib.batches["text"]
    assert drawn["tokens"] == _tokens(batches) >= 2000 > _tokens(batches[:-1])
    assert drawn["examples"] > samples == 128 and "image" not in calib.drawn
    # the first `samples` texts are those an explicit `samples: 128` draws
    fixed = tiny_clip.calibration_data(data, 128, 16, 0)
    assert fixed.drawn["text"]["examples"] == 128
    assert [b.load()["input_ids"].tolist() for b in fixed.batches["text"]] == \
        [b.load()["input_ids"].tolist() for b in calib.batches["text"][:8]]


def test_auto_samples_stop_when_the_texts_run_out(tiny_clip):
    samples, tokens = CalibrationConfig().amounts()
    calib = tiny_clip.calibration_data(_sentences(150), samples, 16, 0, tokens)
    assert calib.drawn["text"]["examples"] == 300 and calib.drawn["text"]["tokens"] < tokens


def test_explicit_samples_draw_exactly_that_many_of_each_input(tiny_clip):
    data = _data(12)
    calib = tiny_clip.calibration_data(data, 10, 4, 0)
    assert calib.drawn == {"image": {"examples": 10},
                           "text": {"examples": 4, "tokens": _tokens(calib.batches["text"])}}
    assert [len(b.load()) for b in calib.batches["image"]] == [4, 4, 2]


def test_text_tokens_needs_auto_samples():
    with pytest.raises(ValueError, match="text_tokens"):
        CalibrationConfig(samples=64, text_tokens=1000)
    assert CalibrationConfig(samples=64).amounts() == (64, 0)


def test_stage_summary_records_what_it_calibrated_on(tiny_clip):
    stages = load_recipe({"stages": [
        {"quantize": {"method": "gptq", "bits": 4, "targets": ["vision", "text"]}},
        {"quantize": {"method": "rtn", "bits": 8, "targets": ["projector"]}}]}).stages
    ctx = StageContext(data=_data(), calibration=CalibrationConfig(samples=8, batch_size=4),
                       progress=False)
    gptq, rtn = run_stages(tiny_clip, stages, ctx)
    assert gptq["calibration"] == {"image": {"examples": 8},
                                   "text": {"examples": 4, "tokens": 16}}
    assert "calibration" not in rtn  # round-to-nearest draws nothing
    assert calibrated_on(gptq["calibration"]) == "8 images and 4 texts (16 tokens)"


@pytest.mark.parametrize("second", ["rtn", "gptq", "smoothquant"])
def test_a_second_quantize_stage_on_quantized_layers_is_refused(tiny_clip, second):
    """It would pass over them without a word (the stage used to report 0 modules)."""
    _apply(tiny_clip, "rtn", _data(), bits=8)
    with pytest.raises(RecipeError, match="a Quant.* quantize each layer once"):
        _apply(tiny_clip, second, _data(), targets=["text"])
