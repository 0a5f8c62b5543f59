"""Fusion classifiers (early, late, hybrid): shapes, missing modalities, compression, reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmcompress
from mmcompress.adapters.fusion import FusionAdapter
from mmcompress.data import Dataset
from mmcompress.evaluation.multimodal import CONDITIONS
from mmcompress.models.fusion import FUSIONS, FusionClassifier, combine_late

TINY = {"dim": 16, "heads": 2, "hidden": 16, "vocab": 64, "max_text_len": 12,
        "text_layers": 1, "fusion_layers": 1, "image_channels": [4, 8], "image_layers": 1,
        "audio_layers": 1, "n_mels": 16, "audio_samples": 1024}
FAST = {"metrics": ["size_bytes", "params", "top1", "top1_all", "top1_no_image",
                    "top1_audio_only", "fidelity_cosine"], "latency_repeats": 1}


def tiny_adapter(fusion: str) -> FusionAdapter:
    torch.manual_seed(0)
    return FusionAdapter(FusionClassifier(fusion=fusion, **TINY))


def tiny_data(n: int = 12, missing: bool = True) -> Dataset:
    rng = np.random.default_rng(0)
    images = [rng.random((8, 8, 1), dtype=np.float32) for _ in range(n)]
    texts = [f"digit {i % 10}" for i in range(n)]
    audio = [rng.normal(0, 0.2, 700 + 40 * i).astype(np.float32) for i in range(n)]
    if missing:
        images[1], texts[2], audio[3] = None, None, None
    return Dataset(name="tiny", task="multimodal", images=images, texts=texts, audio=audio,
                   labels=[i % 10 for i in range(n)], class_names=[str(i) for i in range(10)])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_and_finite_scores(fusion):
    adapter, data = tiny_adapter(fusion), tiny_data()
    logits = adapter.classify(data)
    assert logits.shape == (len(data), 10)
    assert torch.isfinite(logits).all()
    assert set(adapter.towers()) == {"vision", "text", "audio", "fusion"}


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("absent", [0, 1, 2])
def test_a_missing_modality_is_ignored(fusion, absent):
    """Whatever a masked-out modality's input holds, the scores do not change."""
    adapter = tiny_adapter(fusion)
    b = adapter.dataset_batch(tiny_data(missing=False), range(6))
    b["present"][:, absent] = False
    b["present"][0] = torch.tensor([True, True, True])  # other examples keep theirs
    noisy = {k: v.clone() for k, v in b.items()}
    key = ("pixels", "ids", "wave")[absent]
    noisy[key][1:] = torch.randint(2, 40, noisy[key][1:].shape) if key == "ids" \
        else torch.randn_like(noisy[key][1:])
    with torch.no_grad():
        assert torch.allclose(adapter.model(**b)[1:], adapter.model(**noisy)[1:], atol=1e-6)


def test_late_fusion_averages_the_present_modalities():
    adapter = tiny_adapter("late")
    b = adapter.dataset_batch(tiny_data(missing=False), range(4))
    b["present"][:, 2] = False
    with torch.no_grad():
        fused, parts = adapter.model.forward_parts(**b)
    expected = (parts["image"].log_softmax(-1) + parts["text"].log_softmax(-1)) / 2
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.allclose(combine_late(parts, torch.zeros(4, 3, dtype=torch.bool)),
                          torch.zeros(4, 10))


def test_evaluation_reports_every_condition():
    adapter, data = tiny_adapter("hybrid"), tiny_data()
    metrics = mmcompress.evaluate(adapter, data, {"metrics": ["top1", *CONDITIONS],
                                                  "latency_repeats": 1})["metrics"]
    assert set(metrics) == {"top1", *CONDITIONS}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_load_identical_after_int8(fusion, tmp_path):
    data = tiny_data()
    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}], "evaluate": FAST}
    result = mmcompress.compress(tiny_adapter(fusion), recipe, out=tmp_path / "q", data=data,
                                 progress=False)
    assert result.report["after"]["size_bytes"] < 0.7 * result.report["before"]["size_bytes"]
    loaded = mmcompress.load(tmp_path / "q")
    assert torch.equal(loaded.classify(data), result.adapter.classify(data))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_structured_half_then_gptq_reloads(fusion, tmp_path):
    data = tiny_data()
    recipe = {"stages": [
        {"prune": {"method": "structured", "heads": 0.5, "neurons": 0.5, "channels": 0.5}},
        {"quantize": {"method": "gptq", "bits": 4}}],
        "calibration": {"samples": 8, "batch_size": 4}, "evaluate": FAST}
    result = mmcompress.compress(tiny_adapter(fusion), recipe, out=tmp_path / "p", data=data,
                                 progress=False)
    assert result.report["after"]["params"] < 0.75 * result.report["before"]["params"]
    loaded = mmcompress.load(tmp_path / "p")
    assert torch.equal(loaded.classify(data), result.adapter.classify(data))


@pytest.mark.parametrize("stage", [
    {"prune": {"method": "structured", "layers": 1, "targets": ["text"]}},
    {"distill": {"method": "kd", "epochs": 1, "batch_size": 4, "evaluate": False,
                 "student": {"layers": [1], "targets": ["text"]}}},
])
def test_fusion_blocks_can_be_removed_whole_and_reload(stage, tmp_path):
    """The fusion models' transformer blocks are removable layers, for structured pruning and
    for students alike."""
    torch.manual_seed(0)
    data = tiny_data()
    adapter = FusionAdapter(FusionClassifier(fusion="hybrid", **{**TINY, "text_layers": 2}))
    result = mmcompress.compress(adapter, {"stages": [stage], "calibration": {
        "samples": 8, "batch_size": 4}, "evaluate": FAST}, out=tmp_path / "l", data=data,
                                 progress=False)
    assert len(result.adapter.model.text.layers) == 1
    loaded = mmcompress.load(tmp_path / "l")
    assert torch.equal(loaded.classify(data), result.adapter.classify(data))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_asymmetric_svd_whiten_runs_the_reference_through_every_tower(fusion, tmp_path):
    """svd-whiten's reference run reaches every tower's layers (the engine refuses an adapter
    whose batches bypass `adapter.model`), and the factored model reloads identically."""
    data = tiny_data()
    recipe = {"stages": [{"lowrank": {"method": "svd-whiten", "param_ratio": 0.6,
                                      "allocation": "uniform"}}],
              "calibration": {"samples": 8, "batch_size": 4}, "evaluate": FAST}
    result = mmcompress.compress(tiny_adapter(fusion), recipe, out=tmp_path / "f", data=data,
                                 progress=False)
    assert result.report["stages"][0]["summary"]["modules"] > 0
    loaded = mmcompress.load(tmp_path / "f")
    assert torch.equal(loaded.classify(data), result.adapter.classify(data))


@pytest.mark.parametrize("stage", [
    {"finetune": {"method": "task", "epochs": 4, "batch_size": 4, "lr": 1e-2, "warmup": 0}},
    {"distill": {"method": "kd", "alpha": 1.0, "epochs": 4, "batch_size": 4, "lr": 1e-2,
                 "warmup": 0}},
])
def test_pruned_fusion_model_recovers_by_training(stage, tmp_path):
    """finetune and distill train a fusion classifier on its multimodal examples (after
    pruning), the loss falls, and the trained model reloads identically."""
    data = tiny_data()
    recipe = {"stages": [{"prune": {"method": "structured", "neurons": 0.5,
                                    "importance": "magnitude"}}, stage],
              "evaluate": FAST}
    result = mmcompress.compress(tiny_adapter("hybrid"), recipe, out=tmp_path / "t", data=data,
                                 progress=False)
    losses = [e["loss"] for e in result.report["stages"][1]["summary"]["epochs"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    loaded = mmcompress.load(tmp_path / "t")
    assert torch.equal(loaded.classify(data), result.adapter.classify(data))


def test_multimodal_training_refuses_image_augmentation(tmp_path):
    from mmcompress.errors import DataError
    from mmcompress.training.tasks import make_task

    with pytest.raises(DataError, match="multimodal examples are trained as given"):
        make_task(tiny_adapter("late"), tiny_data(), augment=True)


def test_tower_sensitivity_covers_each_modality():
    from mmcompress.inspect_model import sensitivity
    from mmcompress.quantization.grid import QuantGrid

    out = sensitivity(tiny_adapter("early"), tiny_data(), QuantGrid(2, None), 8, layers=False)
    assert set(out["towers"]) == {"vision", "text", "audio", "fusion"}
    assert all("top1_drop" in m for m in out["towers"].values())


def test_bit_budget_reports_bits_per_tower():
    recipe = {"stages": [{"quantize": {"method": "rtn", "targets": ["vision", "audio"],
                                       "budget": {"size_ratio": 0.95, "bits": [2, 8],
                                                  "samples": 4}}}], "evaluate": FAST}
    result = mmcompress.compress(tiny_adapter("late"), recipe, data=tiny_data(4),
                                 progress=False)
    summary = result.report["stages"][0]["summary"]
    assert set(summary["mean_bits_per_tower"]) == {"vision", "audio"}
    assert all(2 <= b <= 8 for b in summary["mean_bits_per_tower"].values())
    assert summary["predicted_size_ratio"] <= 0.95


def test_unknown_fusion_kind_is_refused():
    with pytest.raises(ValueError, match="fusion must be one of"):
        FusionClassifier(fusion="middle")


def test_demo_refuses_an_unknown_model(tmp_path):
    from typer.testing import CliRunner

    from mmcompress.cli import app

    result = CliRunner().invoke(app, ["demo", "--model", "fusion-middle", "--out",
                                      str(tmp_path / "d")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "fusion-hybrid" in result.output
    assert not (tmp_path / "d").exists()


def test_fitted_modality_weights_discount_a_modality_that_misleads():
    from mmcompress.models.fusion_training import Scores, fit_modality_weights

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 10
    right = 3.0 * torch.nn.functional.one_hot(labels, 10).float()
    parts = {"image": right + torch.randn(400, 10, generator=g),
             "text": right + torch.randn(400, 10, generator=g),
             "audio": 3.0 * torch.randn(400, 10, generator=g)}  # confident and uninformative
    present = torch.ones(400, 3, dtype=torch.bool)
    present[:200, 0] = False  # half the examples only have text and audio
    scores = Scores(parts, torch.zeros(400, 10), present, labels, torch.zeros(400))
    weights = fit_modality_weights(scores)
    assert weights.max() == 1.0
    assert weights[2] < 0.3 * min(weights[0], weights[1])
    fused = combine_late(parts, present, weights).argmax(1)
    plain = combine_late(parts, present).argmax(1)
    assert (fused == labels).float().mean() > (plain == labels).float().mean()


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_modality_weights_weigh_the_combination_and_reload(fusion, tmp_path):
    adapter = tiny_adapter(fusion)
    data = tiny_data(missing=False)
    before = adapter.classify(data)
    adapter.model.fusion.modality_weights.copy_(torch.tensor([1.0, 0.5, 0.1]))
    weighted = adapter.classify(data)
    assert not torch.allclose(before, weighted)
    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}], "evaluate": FAST}
    result = mmcompress.compress(adapter, recipe, out=tmp_path / "q", data=data, progress=False)
    loaded = mmcompress.load(tmp_path / "q")
    assert torch.equal(loaded.model.fusion.modality_weights, torch.tensor([1.0, 0.5, 0.1]))
    assert torch.equal(loaded.classify(data), result.adapter.classify(data))


def test_cross_validation_pools_every_fold_and_sets_the_weights(monkeypatch):
    import mmcompress.models.fusion_training as ft
    from mmcompress.data.trimodal import FOLDS, TrimodalSplit

    data = tiny_data(n=10, missing=False)
    items = np.repeat(np.asarray(data.labels)[:, None], 3, axis=1)
    asked = []

    def split(name, source, fold=0):
        asked.append((name, fold))
        return TrimodalSplit(data, items, source)

    monkeypatch.setattr(ft, "build_split", split)
    monkeypatch.setitem(ft.TRAINING, "epochs", 1)
    adapter = tiny_adapter("late")
    initial = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    scores = ft.cross_validate(adapter, "tones", progress=False)
    assert sorted(asked) == sorted([("fit", k) for k in range(FOLDS)]
                                   + [("validation", k) for k in range(FOLDS)])
    assert len(scores.labels) == len(ft.CONDITIONS) * FOLDS * len(data)
    assert set(scores.accuracy()) == set(ft.CONDITIONS)
    # each condition pools the same examples of every fold (the folds are stacked fold-major)
    assert (scores.condition.bincount() == FOLDS * len(data)).all()
    right = (scores.fused.argmax(1) == scores.labels).float().view(FOLDS, len(ft.CONDITIONS), -1)
    expected = right.mean((0, 2)).tolist()
    assert list(scores.accuracy().values()) == pytest.approx(expected)
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in initial.items())
    summary = ft.train_fusion_model(adapter, "tones", progress=False)
    weights = adapter.model.fusion.modality_weights
    assert weights.max() == 1.0 and list(summary["modality_weights"].values()) == weights.tolist()


def test_a_late_model_saved_before_modality_weights_loads_with_equal_weights():
    adapter = tiny_adapter("late")
    state = {k: v for k, v in adapter.model.state_dict().items() if "modality_weights" not in k}
    fresh = FusionClassifier(fusion="late", **TINY)
    fresh.fusion.modality_weights.fill_(0.5)
    fresh.load_state_dict(state)  # strict: nothing else may be missing
    assert torch.equal(fresh.fusion.modality_weights, torch.ones(3))
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict({k: v for k, v in state.items() if "heads.audio" not in k})


def test_the_report_states_the_latency_texts_own_length():
    """Every report said 'text padded to 32 tokens'; the fusion models' latency text is not
    padded, and an image classifier reads no text."""
    from mmcompress.adapters.fusion import LATENCY_TEXT
    from mmcompress.report import measurement_note

    adapter = tiny_adapter("late")
    width = adapter.batch([None], [LATENCY_TEXT], [None])["ids"].shape[1]
    assert adapter.latency_text_tokens() == width != 32
    base = {"latency_statistic": "median", "latency_repeats": 2, "latency_batch_size": 2,
            "threads": 1}
    assert f"texts of {width} tokens" in measurement_note({**base, "latency_text_tokens": width})
    assert "texts of" not in measurement_note({**base, "latency_text_tokens": None})


def _input_hessians(adapter: FusionAdapter, data: Dataset, batch_size: int) -> dict:
    """(rows, Hessian) of every linear and conv layer's inputs, calibrated in batches of
    `batch_size`."""
    from mmcompress.calibration import HessianCollector, calibrate_layers

    layers = {n: m for n, m in adapter.model.named_modules()
              if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    seen = {}

    def keep(name, module, collector):
        seen[name] = (collector.rows, collector.xtx)

    calib = adapter.calibration_data(data, samples=len(data), batch_size=batch_size, seed=0)
    calibrate_layers(adapter, layers, calib, lambda n, m: HessianCollector(), keep, "t",
                     progress=False)
    return seen


@pytest.mark.parametrize("fusion", FUSIONS)
def test_calibration_statistics_leave_out_padding_and_absent_modalities(fusion):
    """Every layer's calibration statistics are the same whether the examples come one by
    one or in batches: text padding, the inputs of absent modalities and the fusion module's
    stand-in tokens never count."""
    adapter, data = tiny_adapter(fusion), tiny_data()
    data.texts[4] = "a much longer text than the others"
    one, batched = _input_hessians(adapter, data, 1), _input_hessians(adapter, data, 5)
    assert one.keys() == batched.keys()
    for name, (rows, xtx) in one.items():
        assert batched[name][0] == rows, name
        torch.testing.assert_close(batched[name][1], xtx, rtol=1e-4, atol=1e-5, msg=name)
    assert one["vision.convs.0"][0] == 11 * 64  # 11 images of 8×8 pixels, one missing


def _compressed_state(fusion: str, stage: dict, batch_size: int, data: Dataset) -> dict:
    recipe = {"stages": [stage], "evaluate": {"metrics": ["top1"]},
              "calibration": {"samples": len(data), "batch_size": batch_size}}
    result = mmcompress.compress(tiny_adapter(fusion), recipe, data=data, progress=False)
    return result.adapter.model.state_dict()


def test_smoothquant_folds_cross_attention_norms_alike_in_any_batching():
    """A hybrid block's first norm runs on its own tokens and on the context: each output
    counts under the mask of the layer reading it, so the fold does not depend on batching."""
    data = tiny_data()
    stage = {"quantize": {"method": "smoothquant"}}
    one, batched = (_compressed_state("hybrid", stage, b, data) for b in (1, 5))
    for name, t in one.items():
        torch.testing.assert_close(batched[name], t, rtol=1e-4, atol=1e-5, msg=name)


def test_hybrid_keys_and_values_count_only_for_examples_that_have_the_block_modality():
    model = tiny_adapter("hybrid").model
    present = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    text_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    masks = model.input_masks(text_mask, present)
    image_context = masks["fusion.cross.image.self_attn.k_proj"]
    assert image_context[0].sum() == 2 + model.audio.tokens  # example 0: text (2) and audio
    assert not image_context[1].any()  # example 1 has no image: its image block is not used
    assert not masks["fusion.cross.image.self_attn.q_proj"][2].any()  # nothing to attend to
    assert masks["fusion.cross.image"][2].all()


def test_smoothquant_without_any_example_of_a_modality_is_a_data_error():
    data = tiny_data()
    data.audio = [None] * len(data.audio)
    with pytest.raises(mmcompress.errors.DataError,
                       match="'fusion.heads.audio.mlp.fc1' with no real input"):
        _compressed_state("late", {"quantize": {"method": "smoothquant",
                                                "targets": ["fusion"]}}, 4, data)


@pytest.mark.parametrize("stage", [
    {"lowrank": {"method": "svd", "param_ratio": 0.5, "sensitivity_samples": 4,
                 "targets": ["audio", "text"]}},
    {"prune": {"method": "wanda", "sparsity": 0.5, "layer_sparsity": "sensitivity",
               "sensitivity_samples": 4, "targets": ["audio", "text"]}}])
def test_a_sensitivity_probe_that_never_runs_a_layer_is_refused(stage):
    """The probe's examples hold no audio: measured there, the audio layers would look free
    and take the whole budget (as the bit budget already refuses)."""
    data = tiny_data(missing=False)
    for i in (0, 3, 6, 9):  # the four evenly spaced examples the probe takes
        data.audio[i] = None
    recipe = {"stages": [stage], "calibration": {"samples": 12, "batch_size": 4},
              "evaluate": {"metrics": ["top1"]}}
    with pytest.raises(mmcompress.errors.DataError,
                       match="never reached layer 'audio.proj' while measuring"):
        mmcompress.compress(tiny_adapter("late"), recipe, data=data, progress=False)
