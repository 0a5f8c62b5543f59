"""finetune: {method: batchnorm}: BatchNorm statistics corrected for what compression changed."""

import copy

import pytest
import torch
from _helpers import FAST_EVAL, toy_image_data
from torch import nn

import mmcompress
from mmcompress.adapters.classifier import ImageClassifierAdapter
from mmcompress.errors import RecipeError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import METHODS, StageContext, run_stages
from mmcompress.models.resnet_cifar import CifarResNet
from mmcompress.recipe import CalibrationConfig, load_recipe


def _adapter() -> ImageClassifierAdapter:
    torch.manual_seed(0)
    model = CifarResNet(20)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # statistics unlike the data's, as after augmented training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 2.0)
    return ImageClassifierAdapter(model.eval())


def _apply(adapter, stages, original=None):
    recipe = load_recipe({"stages": stages})
    ctx = StageContext(data=toy_image_data(),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    if original is not None:
        ctx.extra["original"] = original
    return [METHODS[(s.kind, s.config.method)].apply(adapter, s.config, ctx)
            for s in recipe.stages]


def _pixels(adapter) -> torch.Tensor:
    return adapter.preprocess("image", toy_image_data().images[:8])


def _normalized_moments(adapter, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of BatchNorm `name`'s input after its own normalisation (eval mode,
    before the affine), over the calibration images."""
    bn, seen = adapter.model.get_submodule(name), []
    handle = bn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        adapter.model(_pixels(adapter))
    handle.remove()
    x = seen[0].movedim(1, -1).reshape(-1, bn.num_features).double()
    z = (x - bn.running_mean.double()) / (bn.running_var.double() + bn.eps).sqrt()
    return z.mean(0), z.var(0, unbiased=False)


def _zero_filter(adapter, channel: int = 3) -> None:
    """Zero one of conv1's filters (as pruning can): bn1's input channel is then constant."""
    with torch.no_grad():
        adapter.model.conv1.weight[channel].zero_()


@pytest.mark.parametrize("dead_filter", [False, True])
def test_an_unchanged_model_keeps_its_statistics_bit_for_bit(dead_filter):
    adapter = _adapter()
    if dead_filter:
        _zero_filter(adapter)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    (summary,) = _apply(adapter, [{"finetune": {"method": "batchnorm"}}],
                        copy.deepcopy(adapter))
    assert summary["modules"] == sum(isinstance(m, nn.BatchNorm2d)
                                     for m in adapter.model.modules())
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_channel_that_became_constant_keeps_its_normalised_mean():
    original = _adapter()
    adapter = copy.deepcopy(original)
    _zero_filter(adapter)
    _apply(adapter, [{"finetune": {"method": "batchnorm"}}], original)
    got, want = _normalized_moments(adapter, "bn1"), _normalized_moments(original, "bn1")
    assert abs(float(want[0][3])) > 0.1  # the original's normalised mean is not 0 ...
    torch.testing.assert_close(got[0][3], want[0][3], atol=1e-5, rtol=0)  # ... and is kept
    assert adapter.model.bn1.running_var[3] == original.model.bn1.running_var[3]
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-3)  # the other channels


@pytest.mark.parametrize("name", ["bn1", "layer3.2.bn2"])
def test_pruned_layers_normalise_as_the_original_did(name, tmp_path):
    """After pruning, each BatchNorm's normalised input has the moments it had in the original
    model (the last one too: layers are corrected in order)."""
    original = _adapter()
    adapter = copy.deepcopy(original)
    _apply(adapter, [{"prune": {"method": "magnitude", "sparsity": 0.7}}])
    drift = _normalized_moments(adapter, name)[0] - _normalized_moments(original, name)[0]
    assert drift.abs().max() > 0.05  # pruning moved it
    _apply(adapter, [{"finetune": {"method": "batchnorm"}}], original)
    for got, want in zip(_normalized_moments(adapter, name), _normalized_moments(original, name),
                         strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
    assert not adapter.model.training
    save_checkpoint(adapter, tmp_path, "resnet20-cifar10", [])
    with torch.no_grad():
        assert torch.equal(mmcompress.load(tmp_path).model(_pixels(adapter)),
                           adapter.model(_pixels(adapter)))


def test_refused_without_batchnorm_or_without_the_original(tiny_clip):
    with pytest.raises(RecipeError, match="no BatchNorm layer"):
        _apply(tiny_clip, [{"finetune": {"method": "batchnorm"}}], copy.deepcopy(tiny_clip))
    with pytest.raises(RecipeError, match="model before the recipe"):
        _apply(_adapter(), [{"finetune": {"method": "batchnorm"}}])


def test_it_does_not_count_as_the_training_a_schedule_waits_for():
    with pytest.raises(RecipeError, match="add a finetune or distill stage"):
        load_recipe({"stages": [
            {"prune": {"method": "magnitude", "sparsity": 0.5, "schedule": {"end": 0.5}}},
            {"finetune": {"method": "batchnorm"}}]})


def test_a_recipe_keeps_the_original_for_it(tmp_path):
    recipe = {"stages": [{"prune": {"method": "magnitude", "sparsity": 0.7}},
                         {"finetune": {"method": "batchnorm"}}],
              "calibration": {"samples": 8, "batch_size": 4}, "evaluate": FAST_EVAL}
    result = mmcompress.compress(_adapter(), recipe, out=tmp_path / "out", data=toy_image_data(),
                                 progress=False)
    pruned, corrected = result.report["stages"]
    assert corrected["method"] == "batchnorm" and corrected["summary"]["modules"] > 10
    assert corrected["metrics"]["fidelity_cosine"] > pruned["metrics"]["fidelity_cosine"]


def test_run_stages_keeps_the_model_before_them_when_a_stage_reads_it():
    stages = [{"prune": {"method": "magnitude", "sparsity": 0.7}},
              {"finetune": {"method": "batchnorm"}}]
    original = _adapter()
    given = copy.deepcopy(original)
    _apply(given, stages, original)
    adapter = _adapter()
    ctx = StageContext(data=toy_image_data(),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    summaries = run_stages(adapter, load_recipe({"stages": stages}).stages, ctx)
    assert [s["modules"] > 10 for s in summaries] == [True, True] and ctx.extra["stage"] == 1
    kept = ctx.extra["original"].model.state_dict()
    for k, v in original.model.state_dict().items():
        assert torch.equal(kept[k], v), k
    for k, v in given.model.state_dict().items():
        assert torch.equal(adapter.model.state_dict()[k], v), k


def test_batchnorms_narrowed_by_structured_pruning_are_skipped_and_named():
    original = _adapter()
    adapter = copy.deepcopy(original)
    _apply(adapter, [{"prune": {"method": "structured", "channels": 0.25,
                                "importance": "magnitude"}}])
    narrowed = {n for n, m in adapter.model.named_modules() if isinstance(m, nn.BatchNorm2d)
                and m.num_features != original.model.get_submodule(n).num_features}
    (summary,) = _apply(adapter, [{"finetune": {"method": "batchnorm"}}], original)
    assert narrowed and set(summary["skipped"]) == narrowed
    assert summary["modules"] + len(narrowed) == sum(isinstance(m, nn.BatchNorm2d)
                                                     for m in adapter.model.modules())


def test_equal_moments_keep_even_channels_of_a_spread_below_eps():
    """A channel whose input spread was below the BatchNorm's eps lost its statistics to the
    eps clamp although nothing had changed (running variance 3e-6 → 0)."""
    from types import SimpleNamespace

    from mmcompress.methods.batchnorm import _correct

    bn = torch.nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn.running_var.copy_(torch.tensor([3e-6, 2e-6, 0.5]))
    mean, var = torch.tensor([0.2, 0.1, 0.0]), torch.tensor([4e-6, 2e-6, 0.7])
    stored = bn.running_mean.clone(), bn.running_var.clone()
    moments = SimpleNamespace(moments=lambda: (mean, var))
    _correct(bn, moments, moments)
    assert torch.equal(bn.running_mean, stored[0]) and torch.equal(bn.running_var, stored[1])
