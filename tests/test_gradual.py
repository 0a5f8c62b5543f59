"""Gradual pruning: the cubic schedule, masks that hold through optimizer steps, exact final
sparsity, structured units removed physically, save → reload, and refused settings."""

import numpy as np
import pytest
import torch
from _helpers import FAST_EVAL, tiny_clip_config
from _tiny_training import EmbeddingTargets, context, run_stage, toy_data
from pydantic import ValidationError
from torch import nn

import mmcompress
from mmcompress.adapters.classifier import ImageClassifierAdapter
from mmcompress.adapters.hf_dual import CLIPAdapter
from mmcompress.errors import CheckpointError, RecipeError
from mmcompress.io.checkpoint import load_checkpoint, save_checkpoint
from mmcompress.methods import METHODS
from mmcompress.methods.training_hooks import Schedule, take_armed
from mmcompress.models.resnet_cifar import CifarResNet
from mmcompress.modules.sparse import SparseConv2d, SparseLinear
from mmcompress.recipe import load_recipe
from mmcompress.sparsity.masks import pruned_count
from mmcompress.structured.allocate import how_many
from mmcompress.training import TrainCallback, TrainSettings, train
from mmcompress.training.gradual import cubic_sparsity, scheduled_sparsity
from mmcompress.training.masks import StructuredMasks

SCHEDULE = {"kind": "cubic", "start": 0, "end": 6, "every": 2}


def test_cubic_schedule_at_known_steps():
    assert cubic_sparsity(0, 0, 100, 0.0, 0.8) == 0.0
    assert cubic_sparsity(50, 0, 100, 0.0, 0.8) == pytest.approx(0.8 - 0.8 / 8)
    assert cubic_sparsity(40, 10, 100, 0.2, 0.8) == pytest.approx(0.8 - 0.6 * (2 / 3) ** 3)
    assert cubic_sparsity(100, 0, 100, 0.0, 0.8) == cubic_sparsity(150, 0, 100, 0.0, 0.8) == 0.8
    assert cubic_sparsity(5, 10, 100, 0.2, 0.8) == 0.0  # dense before t0
    assert cubic_sparsity(10, 10, 100, 0.2, 0.8) == pytest.approx(0.2)
    # between events the last event's value holds; events every Δt from t0, then t_end
    assert scheduled_sparsity(57, 0, 100, 10, 0.0, 0.8) == cubic_sparsity(50, 0, 100, 0.0, 0.8)
    assert scheduled_sparsity(99, 0, 100, 30, 0.0, 0.8) == cubic_sparsity(90, 0, 100, 0.0, 0.8)
    assert scheduled_sparsity(100, 0, 100, 30, 0.0, 0.8) == 0.8
    values = [scheduled_sparsity(t, 0, 100, 10, 0.0, 0.8) for t in range(120)]
    assert values == sorted(values)  # never decreases


def test_schedule_steps_and_bad_values():
    assert Schedule(start=0.1, end=0.5).steps(200) == (20, 100)
    assert Schedule(start=3, end=40).steps(200) == (3, 40)
    for bad in ({"end": 1.5}, {"start": True}, {"every": 0}, {"kind": "linear"}, {"step": 1}):
        with pytest.raises(ValidationError):
            Schedule(**bad)


class _Watch(TrainCallback):
    """After each step: how many weights the masks hold, and how many masked weights are not
    zero (placed before the pruning callback, it sees what the optimizer did)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.masked, self.nonzero = model, [], []

    def on_step_end(self, trainer, step, total_steps) -> None:
        layers = [m for m in self.model.modules() if hasattr(m, "weight_mask")]
        self.masked.append([int((~m.weight_mask).sum()) for m in layers])
        self.nonzero.append(sum(int((m.weight.detach()[~m.weight_mask] != 0).sum())
                                for m in layers))


def _train(adapter, ctx, steps: int, before=(), after=()) -> EmbeddingTargets:
    objective = EmbeddingTargets(adapter)
    settings = TrainSettings(epochs=steps, max_steps=steps, batch_size=4, lr=1e-2, warmup=0,
                             weight_decay=0.1, evaluate=False)
    train(adapter, objective, settings, callbacks=[*before, *take_armed(ctx), *after],
          progress=False)
    return objective


def _roundtrip(adapter, objective: EmbeddingTargets, tmp_path) -> None:
    save_checkpoint(adapter, tmp_path, "tiny", [])
    loaded = load_checkpoint(tmp_path)
    objective_loaded = EmbeddingTargets(loaded)
    for a, b in zip(objective.outputs(), objective_loaded.outputs(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured_sparsity_follows_the_schedule_and_masked_weights_stay_zero(
        tiny_clip, tmp_path, scope):
    ctx = context()
    summary = run_stage(tiny_clip, "prune", ctx, method="magnitude", sparsity=0.5, scope=scope,
                        schedule=SCHEDULE)
    layers = {n: m for n, m in tiny_clip.model.named_modules() if hasattr(m, "weight_mask")}
    sizes = [m.weight.numel() for m in layers.values()]
    assert summary["masked_modules"] == len(layers) > 0
    before, after = _Watch(tiny_clip.model), _Watch(tiny_clip.model)
    objective = _train(tiny_clip, ctx, 8, before=[before], after=[after])
    for step, masked in enumerate(after.masked, start=1):
        s = scheduled_sparsity(step, 0, 6, 2, 0.0, 0.5)
        if scope == "layer":
            assert masked == [pruned_count(n, s) for n in sizes], step
        else:
            assert sum(masked) == pruned_count(sum(sizes), s), step
    assert after.masked[0] == [0] * len(sizes) and after.masked[1] != after.masked[0]
    assert any(before.nonzero[1:])  # AdamW moved masked weights ...
    assert not any(after.nonzero)  # ... and the masks put them back to zero
    sparse = {n: tiny_clip.model.get_submodule(n) for n in layers}
    assert all(isinstance(m, SparseLinear | SparseConv2d) for m in sparse.values())
    nnz = [m.nnz for m in sparse.values()]
    if scope == "layer":
        assert nnz == [n - pruned_count(n, 0.5) for n in sizes]  # exact final sparsity
    else:
        assert sum(nnz) == sum(sizes) - pruned_count(sum(sizes), 0.5)
    assert not any(hasattr(m, "weight_mask") for m in tiny_clip.model.modules())
    _roundtrip(tiny_clip, objective, tmp_path)


def test_wanda_schedule_reaches_its_exact_sparsity_by_its_comparison_rule(tiny_clip):
    ctx = context()
    run_stage(tiny_clip, "prune", ctx, method="wanda", sparsity=0.25, targets=["vision"],
              schedule={"start": 1, "end": 3, "every": 1, "initial": 0.1})
    names = [n for n, m in tiny_clip.model.named_modules() if hasattr(m, "weight_mask")]
    _train(tiny_clip, ctx, 4)
    for n in names:
        m = tiny_clip.model.get_submodule(n)
        keep = m.keep_mask()
        assert int((~keep).sum()) == pruned_count(keep.numel(), 0.25)
        per_row = (~keep).sum(1)
        if "patch_embedding" in n:  # a convolution's weights compete as one layer
            assert int(per_row.max() - per_row.min()) > 1
        else:
            assert int(per_row.max() - per_row.min()) <= 1  # Wanda compares within each row


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_structured_schedule_masks_units_then_removes_them(tiny_clip, tmp_path, importance):
    ctx = context()
    run_stage(tiny_clip, "prune", ctx, method="structured", heads=0.5, neurons=0.5,
              importance=importance, targets=["vision", "text"], schedule=SCHEDULE)
    layer = tiny_clip.model.vision_model.encoder.layers[0]
    fc1, q_proj = layer.mlp.fc1, layer.self_attn.q_proj
    seen: dict[str, object] = {}

    class Units(TrainCallback):  # after the pruning callback
        def on_step_end(self, trainer, step, total_steps):
            rows = fc1.weight_mask.all(1)
            seen.setdefault("neurons", []).append(int((~rows).sum()))
            assert (fc1.weight.detach()[~rows] == 0).all() and (fc1.bias[~rows] == 0).all()

    class Outputs(TrainCallback):  # before the pruning callback: masked, not yet removed
        def on_train_end(self, trainer):
            seen["masked_outputs"] = objective.outputs()

    objective = EmbeddingTargets(tiny_clip)
    settings = TrainSettings(epochs=8, max_steps=8, batch_size=4, lr=1e-2, warmup=0,
                             evaluate=False)
    train(tiny_clip, objective, settings, callbacks=[Outputs(), *take_armed(ctx), Units()],
          progress=False)
    expected = [how_many(scheduled_sparsity(t, 0, 6, 2, 0.0, 0.5), 64) for t in range(1, 9)]
    assert seen["neurons"] == expected and expected[-1] == 32
    layer = tiny_clip.model.vision_model.encoder.layers[0]  # modules were replaced
    assert layer.mlp.fc1.out_features == 32 and layer.mlp.fc2.in_features == 32
    assert layer.self_attn.q_proj.out_features == 16 and layer.self_attn.num_heads == 1
    assert q_proj is not layer.self_attn.q_proj
    for masked, removed in zip(seen["masked_outputs"], objective.outputs(), strict=True):
        torch.testing.assert_close(removed, masked, rtol=1e-5, atol=1e-6)
    _roundtrip(tiny_clip, objective, tmp_path)


def test_resnet_channel_masks_compute_what_the_physically_pruned_model_computes():
    torch.manual_seed(0)
    adapter = ImageClassifierAdapter(CifarResNet(20).eval())
    config = METHODS[("prune", "structured")].config_cls.model_validate(
        {"method": "structured", "channels": 0.5, "importance": "magnitude",
         "schedule": SCHEDULE})
    masks = StructuredMasks(adapter, config, context())
    masks.prune({"channels": 0.5})
    block = adapter.model.layer2[1]
    assert int((~block.bn1.weight_mask).sum()) == 16  # BatchNorm entries masked with the conv
    adapter.model.train()
    adapter.model(torch.rand(4, 3, 32, 32))  # BatchNorm statistics of masked channels stay 0
    adapter.model.eval()
    images = [np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)] * 2
    masked = adapter.classify(images)
    masks.finish()
    assert block is adapter.model.layer2[1] and adapter.model.layer2[1].conv1.out_channels == 16
    assert adapter.model.layer2[1].bn1.num_features == 16
    torch.testing.assert_close(adapter.classify(images), masked, rtol=1e-5, atol=1e-5)


def test_settings_a_schedule_cannot_follow_are_refused(tiny_clip):
    cases = [({"method": "sparsegpt", "sparsity": 0.5}, "magnitude and wanda"),
             ({"method": "admm", "sparsity": 0.5}, "magnitude and wanda"),
             ({"method": "magnitude", "pattern": "2:4"}, "N:M pattern"),
             ({"method": "structured", "heads": 1}, "fractions"),
             ({"method": "structured", "neurons": 0.5, "scope": "global"}, "one-shot only")]
    for cfg, message in cases:
        with pytest.raises(RecipeError, match=message):
            run_stage(tiny_clip, "prune", context(), schedule=SCHEDULE, **cfg)
    with pytest.raises(RecipeError, match="add a finetune or distill stage"):
        load_recipe({"stages": [{"prune": {"method": "magnitude", "sparsity": 0.5,
                                           "schedule": SCHEDULE}}]})


def test_a_schedule_ending_after_the_last_step_is_refused(tiny_clip):
    ctx = context()
    run_stage(tiny_clip, "prune", ctx, method="magnitude", sparsity=0.5,
              schedule={"start": 0, "end": 20, "every": 2})
    with pytest.raises(RecipeError, match="end step 20"):
        _train(tiny_clip, ctx, 4)



def test_stages_that_replace_masked_layers_before_training_are_refused(tiny_clip):
    ctx = context()
    run_stage(tiny_clip, "prune", ctx, method="magnitude", sparsity=0.5, schedule=SCHEDULE)
    with pytest.raises(RecipeError, match="being pruned gradually"):
        run_stage(tiny_clip, "quantize", ctx, method="rtn", bits=4, qat=True)
    run_stage(tiny_clip, "quantize", ctx, method="rtn", bits=8)
    with pytest.raises(RecipeError, match="was replaced by a stage after the prune stage"):
        _train(tiny_clip, ctx, 2)


def test_recipe_prune_schedule_then_finetune_saves_the_pruned_model(tiny_clip, tmp_path):
    recipe = {"stages": [
        {"prune": {"method": "structured", "neurons": 0.5, "importance": "magnitude",
                   "schedule": {"start": 0, "end": 2, "every": 1}}},
        {"finetune": {"method": "task", "epochs": 1, "batch_size": 4, "lr": 1e-3,
                      "warmup": 0, "evaluate": False}}], "evaluate": FAST_EVAL}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_data(),
                                 progress=False)
    summary = result.report["stages"][0]["summary"]
    assert summary["removed"]["neurons"]["removed"] * 2 == summary["removed"]["neurons"]["of"]
    assert result.adapter.model.vision_model.encoder.layers[0].mlp.fc1.out_features == 32
    trained = result.report["stages"][1]["summary"]["training_data"]  # said in report.md too
    assert trained["examples"] == len(toy_data()) and trained["name"] in (
        tmp_path / "out" / "report.md").read_text()
    loaded = mmcompress.load(tmp_path / "out")
    texts = ["a cat", "the dog"]
    assert torch.equal(loaded.encode_texts(texts), result.adapter.encode_texts(texts))


def test_a_training_stage_hashes_its_data_once(tiny_clip, tmp_path, monkeypatch):
    """The checkpoint fingerprint and the stage summary each hashed every training example."""
    from mmcompress.data import Dataset

    calls = []
    digest = Dataset.digest
    monkeypatch.setattr(Dataset, "digest", lambda self: calls.append(1) or digest(self))
    recipe = {"stages": [{"finetune": {"method": "task", "epochs": 1, "batch_size": 4,
                                       "lr": 1e-3, "warmup": 0, "evaluate": False}}],
              "evaluate": FAST_EVAL}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_data(),
                                 progress=False)
    assert result.report["stages"][0]["summary"]["training_data"]["examples"] == len(toy_data())
    assert len(calls) == 1


class _Crash(TrainCallback):
    """Stops training after step `at` (as a killed process would), when `at` is set."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_step_end(self, trainer, step, total_steps) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def _resumable_run(folder, crash_at: int | None, **prune) -> dict[str, torch.Tensor]:
    """The trained model's state (structured pruning: its smaller shapes) and outputs."""
    torch.manual_seed(0)
    adapter = CLIPAdapter.random(tiny_clip_config())
    ctx = context()
    run_stage(adapter, "prune", ctx, schedule=SCHEDULE, **prune)
    objective = EmbeddingTargets(adapter)
    settings = TrainSettings(epochs=8, max_steps=8, batch_size=4, lr=1e-2, warmup=0,
                             evaluate=False, checkpoint_dir=str(folder), checkpoint_every=3)
    train(adapter, objective, settings, callbacks=[*take_armed(ctx), _Crash(crash_at)],
          progress=False)
    image, text = objective.outputs()
    return {**adapter.model.state_dict(), "image": image, "text": text}


STRUCTURED = {"method": "structured", "neurons": 0.5, "importance": "magnitude",
              "targets": ["vision", "text"]}


@pytest.mark.parametrize(("crash_at", "prune"), [
    (5, {"method": "magnitude", "sparsity": 0.5}),  # last checkpoint at step 3
    (5, STRUCTURED),
    (7, STRUCTURED)])  # last checkpoint at step 6, where the schedule ends
def test_gradual_pruning_resumed_after_a_crash_ends_as_an_uninterrupted_run(
        tmp_path, crash_at, prune):
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(tmp_path / "resumed", crash_at, **prune)
    resumed = _resumable_run(tmp_path / "resumed", None, **prune)
    straight = _resumable_run(tmp_path / "straight", None, **prune)
    assert resumed.keys() == straight.keys()
    for name, tensor in resumed.items():
        assert torch.equal(tensor, straight[name]), name


@pytest.mark.parametrize("changed", [
    {"method": "wanda", "sparsity": 0.5},
    {"method": "magnitude", "sparsity": 0.5, "scope": "global"},
    {**STRUCTURED, "importance": "activation"}])
def test_a_checkpoint_of_other_prune_settings_is_refused_on_resume(tmp_path, changed):
    """The prune settings choose the masks: a run resumed with others would continue masks
    it did not choose, so its checkpoint is refused."""
    first = STRUCTURED if changed.get("method") == "structured" else \
        {"method": "magnitude", "sparsity": 0.5}
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(tmp_path / "run", 5, **first)
    with pytest.raises(CheckpointError):
        _resumable_run(tmp_path / "run", None, **changed)
