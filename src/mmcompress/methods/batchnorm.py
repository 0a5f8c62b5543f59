"""``finetune: {method: batchnorm}``: correct BatchNorm statistics for what compression changed.

Pruning, factoring or quantizing a convolution shifts the mean and variance of its outputs, but
the BatchNorm after it still normalises with the statistics the original model was trained
with. For each selected BatchNorm, in model order, the calibration data runs through the
compressed model and through the model as it was before the recipe (the calibration engine's
reference run, both in evaluation mode), and the running mean and variance are refitted so
that the compressed input, normalised, has the mean and variance the original input had
normalised by the stored statistics. An unchanged model keeps its statistics exactly. No
weights change. Replacing the statistics outright with the calibration data's (AdaBN) is not
offered: on lit-cifar's ResNet-56 that alone cost the dense model 0.04 zero-shot top-1 in a
one-off run, since its stored statistics carry its training augmentation.
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
    wants_original: ClassVar[bool] = True  # the pipeline keeps the model before the recipe


def _correct(module: nn.Module, stats: MomentsCollector) -> None:
    """Refit `module`'s running statistics so that its compressed input, normalised, has the
    mean and variance the original input had normalised by the stored statistics."""
    mean, var = stats.moments()
    ref_mean, ref_var = stats.reference_moments()
    ratio = (var / ref_var.clamp_min(module.eps)).sqrt()  # spread of the new input vs the old
    with torch.no_grad():
        module.running_mean.copy_(mean - (ref_mean - module.running_mean) * ratio)
        module.running_var.copy_(((module.running_var + module.eps) * ratio.pow(2)
                                  - module.eps).clamp_min(0))


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
    for name, module in norms.items():
        calibrate_layers(adapter, {name: module}, data, lambda n, m: MomentsCollector(),
                         lambda n, m, stats: _correct(m, stats), "batchnorm", progress=False,
                         reference=original.model)
    return {"modules": len(norms)}
