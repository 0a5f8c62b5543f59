"""``finetune: {method: batchnorm}``: correct BatchNorm statistics for what compression changed.

Pruning, factoring or quantizing a convolution shifts the mean and variance of its outputs, but
the BatchNorm after it still normalises with the statistics the original model was trained
with. The calibration data runs once through the model as it was before the recipe, and
then, for each selected BatchNorm in model order, through the compressed model (both in
evaluation mode, through the calibration engine); the running mean and variance are refitted
so that the compressed input, normalised, has the mean and variance the original input had
normalised by the stored statistics (a channel whose input became constant, a pruned or dead
filter, gets the mean only). An unchanged model keeps its statistics bit for bit. No weights
change. A BatchNorm whose width changed (structured pruning of its channels) or that
the original lacks is left as it is and named in the summary. Replacing the statistics outright
with the calibration data's (AdaBN) is not offered: on lit-cifar's ResNet-56 that alone cost
the dense model 0.04 zero-shot top-1 in a one-off run, since its stored statistics carry its
training augmentation.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..adapters import Adapter
from ..calibration import calibrate_layers
from ..calibration.collectors import MomentsCollector
from ..errors import RecipeError
from .base import MethodConfig, StageContext, register_method, selected

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BatchNormConfig(MethodConfig):
    method: Literal["batchnorm"] = "batchnorm"
    runs_trainer: ClassVar[bool] = False  # no gradients: `qat`/`schedule` need a real trainer

    def wants_original(self) -> bool:
        return True


def _correct(module: nn.Module, now: MomentsCollector, before: MomentsCollector) -> None:
    """Refit `module`'s running statistics so that its input now, normalised, has the mean
    and variance its input had before, normalised by the stored statistics. The mean always
    matches; the variance cannot where it would need a negative running variance, and a
    channel whose input is now constant (a pruned or dead filter) keeps its running variance.
    Written so that unchanged moments give back the stored statistics bit for bit."""
    mean, var = now.moments()
    ref_mean, ref_var = before.moments()
    eps, running_var = module.eps, module.running_var
    # spread of the new input vs the old, each at least eps (BatchNorm's own resolution: equal
    # moments give exactly 1); 1 where the new one has none: nothing to rescale
    ratio = torch.where(var > 0, (var.clamp_min(eps) / ref_var.clamp_min(eps)).sqrt(), 1.0)
    new_var = (running_var * ratio.pow(2) + eps * (ratio.pow(2) - 1)).clamp_min(0)
    # where that clamp bit, the spread went down by less: shift the mean by what it did
    ratio = torch.where(new_var > 0, ratio, (eps / (running_var + eps)).sqrt())
    with torch.no_grad():
        module.running_mean.copy_(module.running_mean * ratio + (mean - ref_mean * ratio))
        module.running_var.copy_(new_var)


def _counterparts(norms: dict[str, nn.Module], original: nn.Module) -> dict[str, nn.Module]:
    """The original model's BatchNorm of the same name and width, for each that has one."""
    found = dict(original.named_modules())
    return {n: found[n] for n, m in norms.items()
            if isinstance(found.get(n), BATCH_NORMS) and found[n].num_features == m.num_features}


@register_method("finetune", "batchnorm", BatchNormConfig)
def apply_batchnorm(adapter: Adapter, config: BatchNormConfig,
                    context: StageContext) -> dict[str, Any]:
    """Correct the selected BatchNorm layers' running statistics, one layer at a time so that
    each is measured with the ones before it already corrected."""
    norms = selected(adapter, config, BATCH_NORMS)
    if not norms:
        raise RecipeError("finetune method 'batchnorm' found no BatchNorm layer in the "
                          "selected modules")
    original = context.extra.get("original")
    if original is None:
        raise RecipeError("finetune method 'batchnorm' compares with the model before the "
                          "recipe; run it in a recipe (compress) or put that model in "
                          "StageContext.extra['original']")
    data = context.calibration_data(adapter)
    counterparts = _counterparts(norms, original.model)
    before: dict[str, MomentsCollector] = {}
    with adapter.running(original.model):  # the original's inputs, in one pass per block
        calibrate_layers(adapter, counterparts, data, lambda n, m: MomentsCollector(),
                         lambda n, m, stats: before.__setitem__(n, stats), "batchnorm",
                         progress=False)
    for name in before:  # model order; each measured after the ones before it are corrected
        calibrate_layers(adapter, {name: norms[name]}, data, lambda n, m: MomentsCollector(),
                         lambda n, m, stats: _correct(m, stats, before[n]), "batchnorm",
                         progress=False)
    out: dict[str, Any] = {"modules": len(before)}
    if len(before) < len(norms):
        out["skipped"] = [n for n in norms if n not in before]
    return out
