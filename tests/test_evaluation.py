import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import FAST_EVAL, toy_image_data

from mmcompress.data import Dataset
from mmcompress.errors import DataError
from mmcompress.evaluation.config import METRICS
from mmcompress.evaluation.evaluate import (
    check_data_fits,
    count_params,
    evaluate_adapter,
    quality,
    saved_size_bytes,
)
from mmcompress.evaluation.metrics import (
    class_embeddings,
    fidelity_cosine,
    retrieval_recall,
    similarity_fidelity,
    zeroshot_top1,
)
from mmcompress.recipe import EvaluateConfig


def test_retrieval_recall_reports_at_10_by_default_and_data_must_be_retrievable():
    image, text = F.normalize(torch.randn(12, 4), dim=-1), F.normalize(torch.randn(12, 4), dim=-1)
    r = retrieval_recall(image, text, owner=list(range(12)))
    assert set(r) == {f"recall_{d}@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert r["recall_i2t@1"] <= r["recall_i2t@5"] <= r["recall_i2t@10"]
    from mmcompress.data import Dataset
    from mmcompress.errors import DataError

    bad = Dataset("pets", "retrieval", images=[np.zeros((4, 4, 3))] * 2, captions=[["a"], []])
    with pytest.raises(DataError, match="image 1 has no captions"):
        bad.check()
    with pytest.raises(DataError, match="holds no examples"):
        Dataset("none", "classification", images=[], labels=[], class_names=["a"]).check()


def test_retrieval_recall_on_known_ranking():
    image = torch.eye(3)
    # captions 0,1 describe image 0, caption 2 image 1, caption 3 image 2 (but looks like 0)
    text = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [1, 0, 0.1]])
    r = retrieval_recall(image, F.normalize(text, dim=-1), owner=[0, 0, 1, 2], ks=(1, 5))
    assert r["recall_i2t@1"] == 1.0  # each image's best caption is one of its own
    assert r["recall_t2i@1"] == pytest.approx(3 / 4)  # caption 3 retrieves image 0
    assert r["recall_t2i@5"] == 1.0


def test_zeroshot_and_class_embeddings():
    prompts = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=-1)
    classes = class_embeddings(prompts, 2)
    torch.testing.assert_close(classes, torch.eye(2))
    images = torch.tensor([[1.0, 0], [0, 1], [1, 0]])
    assert zeroshot_top1(images, classes, [0, 1, 1]) == pytest.approx(2 / 3)


def test_fidelity_is_one_for_identical_and_lower_otherwise():
    emb = {"image": F.normalize(torch.randn(5, 4), dim=-1)}
    assert abs(fidelity_cosine(emb, emb) - 1) < 1e-6
    noisy = {"image": F.normalize(emb["image"] + 0.5 * torch.randn(5, 4), dim=-1)}
    assert fidelity_cosine(noisy, emb) < 0.999


def test_similarity_fidelity_ignores_a_rotation_but_not_noise():
    torch.manual_seed(0)
    emb = {"image": F.normalize(torch.randn(20, 8), dim=-1),
           "text": F.normalize(torch.randn(30, 8), dim=-1)}
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    rotated = {k: v @ rotation for k, v in emb.items()}
    assert fidelity_cosine(rotated, emb) < 0.9
    assert similarity_fidelity(rotated, emb) == pytest.approx(1.0, abs=1e-9)
    noisy = {k: F.normalize(v + 0.3 * torch.randn_like(v), dim=-1) for k, v in emb.items()}
    assert similarity_fidelity(noisy, emb) < 0.99
    assert math.isnan(similarity_fidelity({"logits": torch.randn(4, 3)}, emb))  # nothing shared


def test_similarity_fidelity_of_three_items_by_hand():
    """Only pairs of distinct items count: the diagonal (every item's similarity to itself,
    1 in both models) adds agreement that is not there (0.92 here instead of √3/2).
    Reference cosines (1,2), (1,3), (2,3): 0, −1, 0; the other model's: 0, −1/√2, 1/√2.
    Centred: (1, −2, 1)/3 and (0, −1, 1)/√2, so Pearson r = 3 / (√6 · √2) = √3/2."""
    reference = {"image": torch.tensor([[1.0, 0], [0, 2], [-3, 0]])}  # not unit length
    other = {"image": torch.tensor([[2.0, 0], [0, 1], [-1, 1]])}
    assert similarity_fidelity(other, reference) == pytest.approx(math.sqrt(3) / 2, rel=1e-9)
    assert similarity_fidelity(reference, other) == pytest.approx(math.sqrt(3) / 2, rel=1e-9)


def test_evaluate_adapter_on_retrieval_data(tiny_clip):
    images = [torch.rand(20, 20, 3).numpy() for _ in range(4)]
    data = Dataset("toy", "retrieval", images=images, captions=[["a"], ["b c"], ["d"], ["e f"]])
    cfg = EvaluateConfig(latency_repeats=1, latency_batch_size=2,
                         metrics=["recall_i2t@1", "recall_t2i@5", "params", "size_bytes",
                                  "latency_ms_text"])
    result = evaluate_adapter(tiny_clip, data, cfg)
    assert set(result.metrics) == {"recall_i2t@1", "recall_t2i@5", "params", "size_bytes",
                                   "latency_ms_text"}
    assert result.metrics["recall_t2i@5"] == 1.0  # only 4 images: every caption hits in top 5
    assert result.metrics["params"] == sum(p.numel() for p in tiny_clip.model.parameters())
    assert result.metrics["size_bytes"] > 4 * result.metrics["params"]
    assert result.measurement["threads"] == torch.get_num_threads()


def test_quantized_params_count_logical_weights(tiny_clip):
    from mmcompress.methods import METHODS, StageContext
    from mmcompress.recipe import load_recipe

    dense = count_params(tiny_clip.model)
    size = saved_size_bytes(tiny_clip.model)
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, StageContext(progress=False))
    assert count_params(tiny_clip.model) == dense
    assert saved_size_bytes(tiny_clip.model) < 0.45 * size


def test_spearman_handles_ties_and_order():
    from mmcompress.evaluation.metrics import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks [1.5, 1.5, 3, 4], y ranks [1, 2, 3.5, 3.5]
    assert spearman([5, 5, 7, 9], [1, 2, 8, 8]) == pytest.approx(8 / 9, abs=1e-9)


def test_nan_images_are_refused_when_evaluating_too(tiny_clip):
    """Calibration, training and evaluation share the image preprocessing that refuses them."""
    data = toy_image_data()
    data.images[3] = np.full((16, 16, 3), np.nan, dtype=np.float32)
    with pytest.raises(DataError, match="an image holds NaN or Inf values"):
        quality(tiny_clip, data)


def test_non_finite_outputs_are_refused_not_scored(tiny_clip):
    """Huge but finite inputs (float WAV samples of 1e30) gave NaN outputs, scored and
    reported as if they meant something."""
    data = toy_image_data()
    data.images[3] = np.full((16, 16, 3), 3e38, dtype=np.float32)
    with pytest.raises(DataError, match="image outputs on toy hold NaN or Inf"):
        evaluate_adapter(tiny_clip, data, EvaluateConfig(metrics=["zeroshot_top1"]))


def test_compress_refuses_to_save_a_model_holding_nan(tiny_clip, tmp_path, monkeypatch):
    import mmcompress
    from mmcompress import api
    from mmcompress.errors import UserError

    def broken(adapter, *args, **kwargs):
        adapter.model.logit_scale.data.fill_(float("nan"))
        return []

    monkeypatch.setattr(api, "_run_stages", broken)
    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}]}
    with pytest.raises(UserError, match="compressed model is broken, weight 'logit_scale'"):
        mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_image_data(),
                            progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("summary,line", [
    ({"modules": 12}, "12 modules changed"),
    ({"params_kept_ratio": 0.5012, "removed": {}}, "parameters ×0.501"),
    ({"steps": 40, "epochs": [{"step": 20}, {"step": 40}], "final_loss": 0.25},
     "40 training steps over 2 epochs, final loss 0.25"),
    ({"steps": 3, "epochs": [{"step": 3}], "final_loss": None},
     "3 training steps over 1 epoch, final loss n/a"),
    # max_steps ending an epoch early; a run resumed after a kill
    ({"steps": 3, "steps_per_epoch": 4, "epochs": [{"step": 3}], "final_loss": 0.5},
     "3 training steps over 0.75 epochs, final loss 0.5"),
    ({"steps": 8, "steps_per_epoch": 4, "resumed_at": 6, "epochs": [{}, {}], "final_loss": 0.5},
     "8 training steps over 2 epochs (resumed at step 6: its time counts from there), "
     "final loss 0.5"),
    ({"steps": 4, "steps_per_epoch": 4, "final_loss": 0.5,
      "training_data": {"name": "demo-train", "examples": 1257}},
     "4 training steps over 1 epoch, final loss 0.5, trained on 1,257 examples of demo-train"),
    ({"norms": 3}, "done"),
    ({"modules": 4, "mean_bits_per_tower": {"vision": 5.5, "text": 3.0}},
     "4 modules changed, mean bits per tower: vision 5.5, text 3"),
])
def test_report_says_what_each_kind_of_stage_did(summary, line):
    """Structured pruning and training replace no module: '0 modules changed' misled."""
    from mmcompress.report import stage_outcome

    assert stage_outcome(summary) == line


def test_evaluation_decodes_images_a_batch_at_a_time(tiny_clip, monkeypatch):
    """Every image was decoded into one list before the first batch ran (15 GiB for COCO
    val2017's 5,000 images)."""
    import mmcompress.data.dataset as dataset_module
    from mmcompress.evaluation.tasks import eval_classification

    decoded, seen_at_embed = [0], []
    real_load, real_embed = dataset_module.load_image, tiny_clip.embed_image_tensor

    def counting_load(ref):
        decoded[0] += 1
        return real_load(ref)

    def recording_embed(pixels):
        seen_at_embed.append(decoded[0])
        return real_embed(pixels)

    monkeypatch.setattr(dataset_module, "load_image", counting_load)
    monkeypatch.setattr(tiny_clip, "embed_image_tensor", recording_embed)
    eval_classification(tiny_clip, toy_image_data(130), progress=False)
    assert seen_at_embed == [64, 128, 130]


def test_data_whose_metric_means_nothing_is_refused(tiny_clip):
    """One class gave top-1 1.0 whatever the model; constant STS scores a null Spearman."""
    one_class = Dataset("one", "classification", images=toy_image_data(2).images,
                        labels=[0, 0], class_names=["cat"], templates=["a {}"])
    with pytest.raises(DataError, match="one class: zero-shot top-1 would be 1.0"):
        check_data_fits(tiny_clip, one_class)
    classifier = SimpleNamespace(tasks=frozenset({"classification"}), name="resnet",
                                 classify=None, label_indices=lambda data: None)
    check_data_fits(classifier, one_class)  # a classifier still chooses among its outputs
    flat = Dataset("flat", "sts", texts=["a", "b"], texts_b=["c", "d"], scores=[3.0, 3.0])
    sentence_model = SimpleNamespace(tasks=frozenset({"sts"}), name="sentence")
    with pytest.raises(DataError, match="two pairs of different scores"):
        check_data_fits(sentence_model, flat)


def test_a_half_precision_hugging_face_folder_is_sized_as_the_float32_model_evaluated(
        tiny_clip_folder, tmp_path):
    """Loading makes the model float32: its size is what mmcompress would save, the same as
    `compress` reports before it, not the folder's own half-size file."""
    from transformers import CLIPModel

    import mmcompress
    from mmcompress.evaluation.evaluate import saved_size_bytes
    from mmcompress.model_specs import load_model

    half = tmp_path / "half"
    CLIPModel.from_pretrained(tiny_clip_folder).half().save_pretrained(half)
    result = mmcompress.evaluate(half, toy_image_data(), {"metrics": ["size_bytes"]},
                                 progress=False)
    fp32 = saved_size_bytes(load_model(half).model)
    assert result["metrics"]["size_bytes"] == fp32
    assert fp32 > 1.9 * (half / "model.safetensors").stat().st_size


@pytest.mark.integration  # a fresh process: about 4 s
def test_peak_memory_counts_the_model_not_the_import_of_transformers(tiny_clip_folder):
    """When transformers' model code became imported on first use, the memory probe's
    baseline lost it and a tiny CLIP 'took' 165 MiB (the demo 281 instead of 138)."""
    from mmcompress.evaluation.speed import peak_memory_mb

    peak = peak_memory_mb(str(tiny_clip_folder), 8)
    assert peak is not None and peak < 60


def test_interleaved_timing_keeps_the_ratio_when_the_machine_gets_busier(monkeypatch):
    """Timed in two phases, a model 2× faster than its base read 2× *slower* when the machine
    became 4× busier between the phases; timed round-robin, the ratio holds."""
    from mmcompress.evaluation import speed

    clock = {"now": 0.0, "calls": 0}

    def work(cost: float):
        def run():
            clock["calls"] += 1
            clock["now"] += cost * (4.0 if clock["calls"] > 16 else 1.0)  # busier from here
        return run

    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock["now"] / 1e3)
    ms = speed.interleaved_latency_ms({"before": work(2.0), "after": work(1.0)}, repeats=10)
    assert ms["after"] / ms["before"] == pytest.approx(0.5)
    clock.update(now=0.0, calls=0)
    before = speed.median_latency_ms(work(2.0), repeats=10)  # the phases timed apart
    after = speed.median_latency_ms(work(1.0), repeats=10)
    assert after / before == pytest.approx(2.0)


def test_compress_times_before_and_after_together_when_the_base_reloads(tiny_clip_folder,
                                                                       tiny_clip, monkeypatch):
    """A model given by its spec is loaded again at the end, and each tower is timed in
    alternation with its compressed self (and only then: the base is not also timed before
    the stages); one given as an object keeps the two phases."""
    import mmcompress
    from mmcompress.evaluation import evaluate

    alone = []
    timer = evaluate.median_latency_ms
    monkeypatch.setattr(evaluate, "median_latency_ms",
                        lambda *a, **kw: alone.append(1) or timer(*a, **kw))

    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}], "evaluate": FAST_EVAL}
    by_spec = mmcompress.compress(str(tiny_clip_folder), recipe, data=toy_image_data(8),
                                  progress=False).report
    assert "timed in alternation with the model before" in \
        by_spec["measurement"]["latency_statistic"]
    assert by_spec["before"]["latency_ms_image"] > 0 and by_spec["after"]["latency_ms_text"] > 0
    assert alone == [] and list(by_spec["before"]) == [k for k in METRICS
                                                        if k in by_spec["before"]]
    by_object = mmcompress.compress(tiny_clip, recipe, data=toy_image_data(8),
                                    progress=False).report
    assert by_object["measurement"]["latency_statistic"] == "median after 3 warm-up runs"


def test_a_built_in_model_missing_from_the_cache_is_not_trained_for_a_cheap_load(tmp_path,
                                                                                 monkeypatch):
    """Reloading the base to time it trained the demo model a second time when its cache
    could not be written."""
    from mmcompress.adapters.frozen_text import cached_only, load_or_train
    from mmcompress.errors import CheckpointError

    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path))
    model, trained = torch.nn.Linear(2, 2), []
    with cached_only(), pytest.raises(CheckpointError, match="not in the cache"):
        load_or_train(model, "toy", "k", lambda: trained.append(1), frozen=())
    assert trained == []
    load_or_train(model, "toy", "k", lambda: trained.append(1), frozen=())  # trains, caches
    with cached_only():
        load_or_train(model, "toy", "k", lambda: trained.append(1), frozen=())
    assert trained == [1]


@pytest.mark.parametrize("failing", ["reload", "timing"])
def test_compress_times_alone_when_the_base_cannot_be_timed_again(tiny_clip_folder,
                                                                  monkeypatch, capsys, failing):
    """A base that no longer loads, or fails to run, must not lose a finished run: its
    latency is timed alone, as before; the caller's random state is kept either way."""
    import mmcompress
    import mmcompress.api

    def broken(*args, **kwargs):
        torch.rand(3)  # as building a model would
        raise RuntimeError("out of memory")

    if failing == "reload":  # the first load (the model to compress) works
        load = mmcompress.api.load_model
        calls = []
        monkeypatch.setattr(mmcompress.api, "load_model", lambda *a, **kw: (
            calls.append(1), load(*a, **kw) if len(calls) == 1 else broken())[1])
    else:
        monkeypatch.setattr(mmcompress.api, "time_against_base", broken)
    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}], "evaluate": FAST_EVAL}
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    report = mmcompress.compress(str(tiny_clip_folder), recipe, data=toy_image_data(8),
                                 progress=False).report
    if failing == "reload":  # the compression itself draws nothing
        assert torch.equal(torch.rand(1), expected)
    assert report["measurement"]["latency_statistic"] == "median after 3 warm-up runs"
    assert report["after"]["latency_ms_image"] > 0 and report["after"]["latency_ms_text"] > 0
    assert "latency_ms_image" not in report["before"]  # timed once, at the end: not there
    assert list(report["after"]) == [k for k in METRICS if k in report["after"]]
    assert ("timing it against the model before compression failed" in capsys.readouterr().err) \
        == (failing == "timing")


def test_reloading_the_base_does_not_repeat_what_loading_it_said(tiny_clip_folder, capsys,
                                                                 monkeypatch):
    """The folder's 'no tokenizer files' note was printed twice: once per load."""
    import mmcompress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}], "evaluate": FAST_EVAL}
    report = mmcompress.compress(str(tiny_clip_folder), recipe, data=toy_image_data(8),
                                 progress=False).report
    assert "in alternation" in report["measurement"]["latency_statistic"]  # it did reload
    assert capsys.readouterr().err.count("has no tokenizer files") == 1
