"""Distillation losses, the distillation objective, students by inheritance, and the
`finetune` / `distill` stages on tiny in-process models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _helpers import FAST_EVAL, tiny_clip_config
from torch import nn
from transformers import BertConfig, BertTokenizer, CLIPModel

import mmcompress
from mmcompress.adapters.classifier import ImageClassifierAdapter
from mmcompress.adapters.hf_dual import CLIPAdapter
from mmcompress.adapters.sentence import SentenceAdapter
from mmcompress.data import Dataset
from mmcompress.errors import RecipeError, UserError
from mmcompress.io.checkpoint import load_checkpoint, save_checkpoint
from mmcompress.methods import METHODS, StageContext
from mmcompress.models.resnet_cifar import CifarResNet
from mmcompress.models.sentence_encoder import SentenceEncoder
from mmcompress.recipe import load_recipe
from mmcompress.training import losses
from mmcompress.training.distill import DistillObjective, spread
from mmcompress.training.students import StudentConfig, build_student, keep_layers
from mmcompress.training.tasks import TaskObjective, make_task

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "the", "photo", "of",
         "small", "big"]


def _images(n: int, size: int = 32) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset("toy", "classification",
                   images=[rng.random((size, size, 3), dtype=np.float32) for _ in range(n)],
                   labels=[i % 2 for i in range(n)], class_names=["cat", "dog"],
                   templates=["a {}", "the {}", "a photo of a {}"])


def _pairs() -> Dataset:
    a = ["a cat", "the dog", "a small cat", "a big dog", "the cat", "a dog"]
    b = ["a dog", "the cat", "a cat", "dog", "a big cat", "the small dog"]
    return Dataset("pairs", "sts", texts=a, texts_b=b, scores=[1.0, 2.0, 4.0, 3.0, 5.0, 0.5])


def _sentence(layers: int = 2) -> SentenceAdapter:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=layers,
                     num_attention_heads=4, intermediate_size=48, max_position_embeddings=32)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    return SentenceAdapter(SentenceEncoder(cfg), tokenizer, max_seq_length=16)


def _resnet() -> ImageClassifierAdapter:
    torch.manual_seed(0)
    return ImageClassifierAdapter(CifarResNet(20))


# -- losses ----------------------------------------------------------------------------------
def _emb(n: int = 6, d: int = 8, seed: int = 0) -> torch.Tensor:
    return nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)),
                                   dim=-1)


def test_losses_vanish_when_student_equals_teacher():
    img, txt = _emb(seed=1), _emb(seed=2)
    logits = torch.randn(5, 10)
    assert losses.hinton_kd(logits, logits, 4.0) == pytest.approx(0.0, abs=1e-6)
    assert losses.embedding_mse(img, img) == 0
    assert losses.feature_mse(logits, logits) == 0
    attn = torch.rand(2, 4, 5, 5).softmax(-1)
    assert losses.attention_kl(attn, attn) == pytest.approx(0.0, abs=1e-6)
    # soft cross-entropy is minimal, not zero: it equals the teacher's entropy
    scale = 10.0
    t_logits = scale * img @ txt.T
    probs = (t_logits.softmax(-1), t_logits.T.softmax(-1))
    entropy = [-(p * p.log()).sum(-1).mean() for p in probs]
    got = losses.affinity_mimic(img, txt, scale, img, txt, scale)
    assert got == pytest.approx(float(sum(entropy) / 2), rel=1e-5)
    # CLIP-KD's interactive loss of a model with itself is its own contrastive loss
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert losses.interactive_contrastive(img, txt, img, txt, scale, labels) == pytest.approx(
        float(losses.info_nce(img, txt, scale, labels)), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_hinton_kd_is_t_squared_kl_from_teacher_to_student(temperature):
    """T²·KL(p_T ‖ p_S) with batch mean, as F.kl_div computes it: a plain T factor (4× too
    small at T = 4) or KL(p_S ‖ p_T) (55% off at T = 1) both pass a same-logits check."""
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=gen), 3 * torch.randn(8, 10, generator=gen)
    t = temperature
    expected = t * t * nn.functional.kl_div((student / t).log_softmax(-1),
                                            (teacher / t).softmax(-1), reduction="batchmean")
    assert losses.hinton_kd(student, teacher, t) == pytest.approx(float(expected), rel=1e-5)


def test_affinity_is_smallest_at_the_teacher():
    img, txt = _emb(seed=1), _emb(seed=2)
    at_teacher = losses.affinity_mimic(img, txt, 10.0, img, txt, 10.0)
    away = losses.affinity_mimic(_emb(seed=3), txt, 10.0, img, txt, 10.0)
    assert away > at_teacher


def test_attention_with_other_head_counts_compares_head_averages():
    t = torch.rand(2, 4, 5, 5).softmax(-1)
    s = t.mean(1, keepdim=True).expand(2, 2, 5, 5)
    assert losses.attention_kl(s, t) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["hinton", "affinity", "embedding", "interactive", "feature",
                                  "attention"])
def test_loss_gradients_reach_the_student_only(name):
    torch.manual_seed(0)
    student, teacher = nn.Linear(8, 8), nn.Linear(8, 8).requires_grad_(False)
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    def norm(t):
        return nn.functional.normalize(t, dim=-1)

    s1, s2 = norm(student(x)), norm(student(y))
    with torch.no_grad():
        t1, t2 = norm(teacher(x)), norm(teacher(y))
    value = {
        "hinton": lambda: losses.hinton_kd(s1, t1, 2.0),
        "affinity": lambda: losses.affinity_mimic(s1, s2, 10.0, t1, t2, 10.0),
        "embedding": lambda: losses.embedding_mse(s1, t1),
        "interactive": lambda: losses.interactive_contrastive(s1, s2, t1, t2, 10.0),
        "feature": lambda: losses.feature_mse(s1, t1),
        "attention": lambda: losses.attention_kl(s1.view(1, 2, 3, 8).softmax(-1),
                                                 t1.view(1, 2, 3, 8).softmax(-1)),
    }[name]()
    value.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


# -- the objective -------------------------------------------------------------------------
def _backward_reaches_student_only(objective, student, teacher, indices) -> float:
    loss = objective.loss(indices)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.model.parameters())
    assert all(p.grad is None for p in teacher.model.parameters())
    return float(loss.detach())


def test_classifier_copy_has_zero_logits_and_feature_losses():
    student = _resnet()
    teacher = copy.deepcopy(student)
    task = make_task(student, _images(8))
    obj = DistillObjective(student, teacher, task, ["logits", "features"], alpha=1.0)
    parts = obj.parts(torch.arange(4))
    assert float(parts["logits"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(parts["features"].detach()) == pytest.approx(0.0, abs=1e-8)
    with torch.no_grad():
        student.model.linear.weight.mul_(1.5)
    assert _backward_reaches_student_only(obj, student, teacher, torch.arange(4)) > 0


def test_dual_encoder_copy_losses(tiny_clip):
    teacher = copy.deepcopy(tiny_clip)
    task = make_task(tiny_clip, _images(8))
    obj = DistillObjective(tiny_clip, teacher, task,
                           ["features", "attention", "affinity", "clip_kd"], alpha=1.0)
    torch.manual_seed(0)
    parts = obj.parts(torch.arange(6))
    assert float(parts["features"].detach()) == pytest.approx(0.0, abs=1e-8)
    assert float(parts["attention"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(parts["affinity"].detach()) > 0  # the teacher's entropy
    _backward_reaches_student_only(obj, tiny_clip, teacher, torch.arange(6))


def test_sentence_copy_has_zero_clip_kd():
    student = _sentence()
    teacher = copy.deepcopy(student)
    obj = DistillObjective(student, teacher, make_task(student, _pairs()), ["clip_kd", "attention"])
    parts = obj.parts(torch.arange(4))
    assert float(parts["clip_kd"].detach()) == pytest.approx(0.0, abs=1e-8)
    assert float(parts["attention"].detach()) == pytest.approx(0.0, abs=1e-6)


def _pair_data(a: list[str]) -> Dataset:
    b = ["a dog", "the cat", "a cat", "dog"]
    return Dataset("pairs", "sts", texts=a, texts_b=b, scores=[1.0, 2.0, 4.0, 3.0])


@pytest.mark.parametrize("loss", ["features", "attention"])
def test_sentence_pairs_distill_both_sides(loss):
    """The encoder runs once per side of a pair: both runs are compared, not only the last."""
    student, teacher = _sentence(), _sentence()
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    values = []
    for a in (["a cat", "the dog", "the dog", "a big dog"], ["big big", "of of", "the", "cat"]):
        task = make_task(student, _pair_data(a))
        obj = DistillObjective(student, teacher, task, [loss], alpha=1.0)
        values.append(float(obj.parts(torch.arange(4))[loss].detach()))
        calls = obj.s_taps.maps if loss == "attention" else obj.s_taps.outputs
        assert all(len(c) == 2 for c in calls.values())  # side a, then side b
    assert values[0] != pytest.approx(values[1], rel=1e-6)


@pytest.mark.parametrize("loss", ["features", "attention"])
def test_padding_is_left_out_of_feature_and_attention_losses(loss):
    """An example's terms do not depend on how far the batch pads it: the first pair scored
    alone equals it scored beside a longer sentence, up to the other example's share."""
    student, teacher = _sentence(), _sentence()
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    data = Dataset("pairs", "sts", texts=["a cat", "a small big cat of the dog photo"],
                   texts_b=["a cat", "a cat"], scores=[1.0, 2.0])
    obj = DistillObjective(student, teacher, make_task(student, data), [loss], alpha=1.0)
    obj.parts(torch.arange(2))
    calls = obj.s_taps.maps if loss == "attention" else obj.s_taps.outputs
    side_a = next(iter(calls.values()))[0]
    assert side_a.tokens is not None and int(side_a.tokens[0].sum()) == 4  # [CLS] a cat [SEP]
    alone = obj.parts(torch.tensor([0]))[loss]
    obj.parts(torch.arange(2))
    padded = [c for calls_ in calls.values() for c in calls_]
    t_calls = [c for calls_ in (obj.t_taps.maps if loss == "attention" else obj.t_taps.outputs)
               .values() for c in calls_]
    fn = losses.attention_kl if loss == "attention" else losses.feature_mse
    first = torch.stack([fn(s.value[:1], t.value[:1], s.tokens[:1] if s.tokens is not None
                            else None) for s, t in zip(padded, t_calls, strict=True)]).mean()
    torch.testing.assert_close(first, alone)


def test_features_of_other_widths_go_through_a_learned_projection():
    torch.manual_seed(0)
    wide = tiny_clip_config()
    wide.text_config.hidden_size, wide.vision_config.hidden_size = 48, 48
    teacher = CLIPAdapter.random(wide)
    student = CLIPAdapter.random(tiny_clip_config())
    obj = DistillObjective(student, teacher, make_task(student, _images(8)), ["features"])
    assert {type(m) for m in obj.modules.values()} == {nn.Linear}
    assert len(obj.modules) == 4  # 2 layers in each of 2 towers
    obj.loss(torch.arange(4)).backward()
    assert all(p.grad is not None for p in obj.modules.parameters())
    state = torch.get_rng_state()
    again = [DistillObjective(student, teacher, make_task(student, _images(8)), ["features"],
                              seed=seed).modules.state_dict() for seed in (0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    for name, t in again[0].items():  # the projections start from the seed alone
        assert torch.equal(again[1][name], t) and not torch.equal(again[2][name], t)


def test_teacher_of_another_task_is_refused(tiny_clip):
    with pytest.raises(UserError, match="teacher's outputs do not match"):
        DistillObjective(tiny_clip, _resnet(), make_task(tiny_clip, _images(8)), ["affinity"])


def test_loss_that_does_not_apply_is_a_recipe_error(tiny_clip):
    with pytest.raises(RecipeError, match="do not apply"):
        DistillObjective(tiny_clip, copy.deepcopy(tiny_clip), make_task(tiny_clip, _images(8)),
                         ["logits"])


def test_alpha_weighs_the_distillation_losses(monkeypatch):
    """L = (1 − α)·L_task + α·Σ w_k·L_k (docs/training.md); swapping the two weights is
    invisible at the default α = 0.5, so this checks α = 0.9."""
    student = _resnet()
    obj = DistillObjective(student, copy.deepcopy(student), make_task(student, _images(8)),
                           ["logits", "features"], alpha=0.9,
                           weights={"logits": 2.0, "features": 0.5})
    parts = {"task": torch.tensor(2.0), "logits": torch.tensor(0.5),
             "features": torch.tensor(3.0)}
    monkeypatch.setattr(obj, "parts", lambda indices: parts)
    expected = 0.1 * 2.0 + 0.9 * (2.0 * 0.5 + 0.5 * 3.0)
    assert float(obj.loss(torch.arange(4))) == pytest.approx(expected, rel=1e-6)


def test_frozen_teacher_outputs_are_computed_once_per_example():
    student = _resnet()
    teacher = copy.deepcopy(student)
    calls = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    obj = DistillObjective(student, teacher, make_task(student, _images(8)), ["logits"])
    calls.clear()
    obj.loss(torch.arange(4))
    obj.loss(torch.arange(4))
    assert len(calls) == 1


# -- students by inheritance -----------------------------------------------------------------
def test_every_second_layer_student_and_its_layer_map(tiny_clip, tmp_path):
    kept = keep_layers(tiny_clip, "every-2")
    assert kept == {"vision_model.encoder.layers": [0], "text_model.encoder.layers": [0]}
    assert len(tiny_clip.model.vision_model.encoder.layers) == 1
    save_checkpoint(tiny_clip, tmp_path, "tiny", [])
    again = load_checkpoint(tmp_path)
    texts = ["a cat", "the dog"]
    torch.testing.assert_close(again.encode_texts(texts), tiny_clip.encode_texts(texts))


def test_resnet_student_keeps_the_blocks_that_change_shape():
    adapter = _resnet()
    kept = keep_layers(adapter, "every-2")
    assert kept == {"layer1": [0, 2], "layer2": [0, 2], "layer3": [0, 2]}
    with pytest.raises(RecipeError, match="must be kept"):
        keep_layers(_resnet(), [1, 2])


def test_student_with_half_the_neurons_uses_structured_pruning(tiny_clip):
    summary = build_student(tiny_clip, StudentConfig(layers=[1], neurons=0.5),
                            StageContext(progress=False))
    assert summary["layer_map"]["text_model.encoder.layers"] == [1]
    assert tiny_clip.model.text_model.encoder.layers[0].mlp.fc1.out_features == 32
    assert summary["params"]["student"] < summary["params"]["teacher"]


def test_blocks_are_compared_with_the_teacher_blocks_they_were(monkeypatch):
    """An earlier stage removed block 1 of 4; the student keeps every second of the other three
    (originally 0 and 3): with the model before the recipe as teacher, they are compared with
    its blocks 0 and 3, not 0 and 2."""
    import mmcompress.methods.distill as stage
    from mmcompress.methods.base import run_stages
    from mmcompress.recipe import CalibrationConfig

    adapter = _sentence(layers=4)
    with torch.no_grad():  # the least important block by magnitude: the prune stage takes it
        for p in adapter.model.bert.encoder.layer[1].parameters():
            p.mul_(0.01)
    seen = {}

    def spy(*args, **kwargs):
        objective = DistillObjective(*args, **kwargs)
        seen.update(objective.pairs)
        return objective

    monkeypatch.setattr(stage, "DistillObjective", spy)
    recipe = load_recipe({"stages": [
        {"prune": {"method": "structured", "layers": 1, "importance": "magnitude"}},
        {"distill": {"method": "kd", "losses": ["features"], "student": {"layers": "every-2"},
                     "max_steps": 1, "batch_size": 4}}]})
    context = StageContext(data=_pairs(), calibration=CalibrationConfig(samples=6, batch_size=3),
                           progress=False, extra={"original": copy.deepcopy(adapter)})
    run_stages(adapter, recipe.stages, context)
    assert seen == {"bert.encoder.layer": [(0, 0), (1, 3)]}


def test_spread_maps_last_to_last():
    assert spread(3, 6) == [1, 3, 5] and spread(2, 2) == [0, 1]


# -- stages ----------------------------------------------------------------------------------
def test_finetune_sentence_encoder_lowers_its_loss():
    adapter = _sentence()
    obj = TaskObjective(adapter, make_task(adapter, _pairs()))
    before = float(obj.loss(torch.arange(6)).detach())
    stage = load_recipe({"stages": [{"finetune": {"method": "task", "epochs": 8,
                                                  "batch_size": 6, "lr": 1e-2,
                                                  "warmup": 0}}]}).stages[0]
    summary = METHODS[("finetune", "task")].apply(adapter, stage.config,
                                                  StageContext(data=_pairs(), progress=False))
    assert summary["steps"] == 8
    assert float(obj.loss(torch.arange(6)).detach()) < before


def test_distill_stage_builds_student_and_reloads(tiny_clip, tmp_path):
    recipe = {"stages": [{"distill": {"method": "kd", "losses": ["affinity", "features"],
                                      "student": {"layers": "every-2"}, "epochs": 2,
                                      "batch_size": 4, "lr": 1e-3}}],
              "evaluate": FAST_EVAL}
    data = _images(8)
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=data,
                                 progress=False)
    summary = result.report["stages"][0]["summary"]
    assert summary["steps"] == 4 and summary["student"]["layer_map"]
    assert result.report["after"]["params"] < result.report["before"]["params"]
    assert len(summary["epochs"]) == 2 and "zeroshot_top1" in summary["epochs"][0]["metrics"]
    assert not (tmp_path / ".out.training").exists()  # checkpoints go once the run is done
    again = mmcompress.load(tmp_path / "out")
    torch.testing.assert_close(again.encode_texts(["a cat"]),
                               result.adapter.encode_texts(["a cat"]))


def test_student_of_a_separate_teacher_spreads_its_blocks_over_the_teachers(
        tiny_clip, tmp_path, monkeypatch):
    """The inherited blocks came from the model shrunk, not from a `teacher: SPEC`: the
    teacher's blocks are spread evenly, and the summary counts the teacher's parameters."""
    from mmcompress.methods import distill

    seen = []

    class Spy(DistillObjective):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self.pairs)

    monkeypatch.setattr(distill, "DistillObjective", Spy)
    config = tiny_clip_config()
    config.text_config.num_hidden_layers = config.vision_config.num_hidden_layers = 3
    torch.manual_seed(1)
    teacher = CLIPModel(config)
    teacher.save_pretrained(tmp_path / "teacher")
    stage = load_recipe({"stages": [{"distill": {
        "method": "kd", "teacher": str(tmp_path / "teacher"), "losses": ["affinity", "features"],
        "student": {"layers": [0]}, "epochs": 1, "max_steps": 1, "batch_size": 4,
        "evaluate": False}}]}).stages[0]
    summary = METHODS[("distill", "kd")].apply(tiny_clip, stage.config,
                                               StageContext(data=_images(4), progress=False))
    assert summary["student"]["layer_map"]["vision_model.encoder.layers"] == [0]
    assert seen[0] == {"vision_model.encoder.layers": [(0, 2)],
                       "text_model.encoder.layers": [(0, 2)]}  # last ↔ last, not 0 ↔ 0
    assert summary["student"]["params"]["teacher"] == sum(p.numel() for p in teacher.parameters())


def test_distill_with_unknown_loss_is_a_recipe_error():
    with pytest.raises(RecipeError, match="losses"):
        load_recipe({"stages": [{"distill": {"method": "kd", "losses": ["logit"]}}]})


def test_augmented_batches_reach_the_teacher_identically_and_are_not_cached():
    student = _resnet()
    teacher = copy.deepcopy(student)
    calls = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    obj = DistillObjective(student, teacher, make_task(student, _images(8), augment=True),
                           ["logits"], alpha=1.0)
    calls.clear()
    torch.manual_seed(3)
    assert float(obj.parts(torch.arange(4))["logits"].detach()) == pytest.approx(0.0, abs=1e-6)
    obj.loss(torch.arange(4))
    assert len(calls) == 2  # random crops: every batch is new to the teacher
    a = make_task(student, _images(8), augment=True).images([0])
    assert a[0].shape == (32, 32, 3)


@pytest.mark.integration
def test_resnet20_distills_from_resnet56_on_shared_images(shared_data):
    """Real models and images: a few KD steps run, and the training split is disjoint from the
    evaluation split."""
    from mmcompress.data import load_data
    from mmcompress.model_specs import load_model

    train, held_out = load_data("lit-cifar-train"), load_data("lit-cifar-eval")
    assert not set(map(str, train.images)) & set(map(str, held_out.images))
    student = load_model("resnet20", progress=False)
    stage = load_recipe({"stages": [{"distill": {
        "method": "kd", "teacher": "resnet56", "max_steps": 2, "batch_size": 8,
        "max_examples": 16, "evaluate": False}}]}).stages[0]
    summary = METHODS[("distill", "kd")].apply(student, stage.config,
                                               StageContext(data=train, progress=False))
    assert summary["steps"] == 2 and summary["losses"] == ["logits"]
    assert summary["final_loss"] > 0


def test_the_teacher_is_part_of_what_a_resumed_run_must_share():
    student = _sentence()
    teacher = copy.deepcopy(student)
    task = make_task(student, _pairs())
    same = DistillObjective(student, teacher, task, ["clip_kd"]).describe()
    assert DistillObjective(student, copy.deepcopy(teacher), task, ["clip_kd"]).describe() == same
    with torch.no_grad():
        next(teacher.model.parameters()).add_(1e-3)
    assert DistillObjective(student, teacher, task, ["clip_kd"]).describe() != same


def test_training_stages_sharing_a_checkpoint_dir_each_keep_their_own(tiny_clip, tmp_path):
    """Two training stages given one `checkpoint_dir` used to meet each other's checkpoints
    there: the second refused the first's as 'written by a run with other settings'."""
    from _tiny_training import toy_data

    train = {"method": "task", "epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup": 0,
             "evaluate": False, "checkpoint_dir": str(tmp_path / "ck"), "checkpoint_every": 1}
    recipe = {"stages": [{"finetune": train}, {"finetune": {**train, "lr": 5e-4}}],
              "evaluate": FAST_EVAL}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_data(),
                                 progress=False)
    steps = [s["summary"]["steps"] for s in result.report["stages"]]
    assert steps[0] == steps[1] > 0
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"stage-0", "stage-1"}
    assert all(any((tmp_path / "ck" / s).glob("step-*")) for s in ("stage-0", "stage-1"))


@pytest.mark.parametrize("texts", [["a cat", "the dog"], ["a small cat sat on the mat", "dog"]])
def test_recorded_text_attention_maps_are_causal_with_or_without_padding(tiny_clip, texts):
    """CLIP's text tower is causal. Without padding HF passes ``is_causal`` and no mask; the
    recorded maps must still give no weight to later tokens, and equal the model's own."""
    from mmcompress.training.taps import Taps, block_lists

    name = next(n for n in block_lists(tiny_clip.model) if "text" in n)
    taps = Taps(tiny_clip.model, {name: [0]}, features=False, attention=True)
    tokens = tiny_clip.text_tensors(texts)
    with torch.no_grad(), taps.recording():
        tiny_clip.embed_text_tensors(tokens)
    [call] = taps.maps[(name, 0)]
    recorded = call.value
    text_model = tiny_clip.model.text_model
    text_model.config._attn_implementation = "eager"
    with torch.no_grad():
        own = text_model(**tokens, output_attentions=True).attentions[0]
    real = tokens["attention_mask"].bool()
    keys = real[:, None, None, :] & real[:, None, :, None]  # rows of real queries and keys
    torch.testing.assert_close(recorded * keys, own * keys)
    real_or_all = call.tokens if call.tokens is not None else torch.ones_like(real)
    assert torch.equal(real_or_all, real)  # the tokens the losses average over
