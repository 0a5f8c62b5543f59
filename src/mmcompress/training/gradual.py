"""Gradual pruning on the cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune".

Sparsity rises from s_i at step t0 to the final s_f at step t0 + nΔt, pruning every Δt steps:

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (nΔt))³

so most weights go early, while the network still has many to spare, and fewer and fewer as
it approaches the target. A prune stage with ``schedule:`` adds masks (`training.masks`) and
arms `GradualPruning`; the next finetune/distill stage trains with it. After every optimizer
step the masks are re-applied and, at each pruning event, extended to the scheduled sparsity
(structured pruning: each unit kind to its scheduled fraction). When training ends the final
sparsity is applied exactly and the layers become what the one-shot method makes of them.
"""

from __future__ import annotations

from typing import Any

from ..adapters import Adapter
from ..errors import RecipeError
from ..methods.base import MethodConfig, StageContext
from ..methods.prune_structured import StructuredPruneConfig
from ..methods.training_hooks import Schedule, arm
from .callbacks import TrainCallback
from .masks import StructuredMasks, UnstructuredMasks


def cubic_sparsity(step: int, t0: int, t_end: int, initial: float, final: float) -> float:
    """s_t of the cubic schedule: 0 before `t0` (dense), `final` from `t_end` on."""
    if step < t0:
        return 0.0
    if step >= t_end:
        return final
    return final + (initial - final) * (1 - (step - t0) / (t_end - t0)) ** 3


def scheduled_sparsity(step: int, t0: int, t_end: int, every: int, initial: float,
                       final: float) -> float:
    """Sparsity in force after `step` steps: the schedule's value at the last pruning event
    (t0, t0 + Δt, t0 + 2Δt, …, and t_end) at or before `step`."""
    if t0 <= step < t_end:
        step = t0 + (step - t0) // every * every
    return cubic_sparsity(step, t0, t_end, initial, final)


class GradualPruning(TrainCallback):
    """Raises the masks' sparsity on the schedule; prunes for good when training ends."""

    def __init__(self, masks: UnstructuredMasks | StructuredMasks, schedule: Schedule,
                 finals: dict[str, float], summary: dict[str, Any],
                 settings: dict[str, Any] | None = None) -> None:
        self.masks, self.schedule, self.finals = masks, schedule, finals
        self.settings = settings or {}  # what else decides the masks (checked on resume)
        self.current = dict.fromkeys(finals, 0.0)
        self.summary = summary  # the stage's summary: filled in when training ends
        self.steps = (0, 0)

    def on_train_begin(self, trainer: Any) -> None:
        self.masks.check_in(trainer.adapter.model)
        total = trainer.total_steps
        t0, t_end = self.steps = self.schedule.steps(total)
        if not t0 < t_end <= total:
            raise RecipeError(f"prune schedule: start step {t0} and end step {t_end} must "
                              f"satisfy start < end <= {total} (the training stage's steps)")
        self._catch_up(trainer.step)

    def on_step_end(self, trainer: Any, step: int, total_steps: int) -> None:
        self.masks.apply()  # undo what the optimizer step did to masked weights
        self._catch_up(step)

    def _catch_up(self, step: int) -> None:
        """Prune to the scheduled sparsity if the masks are behind it (at an event, or on a
        resume that stopped between the event and its checkpoint)."""
        t0, t_end = self.steps
        s = self.schedule
        want = {k: scheduled_sparsity(step, t0, t_end, s.every, min(s.initial, f), f)
                for k, f in self.finals.items()}
        if any(want[k] > self.current[k] for k in want):
            self.masks.prune(want)
            self.current = want

    def on_train_end(self, trainer: Any) -> None:
        if self.current != self.finals:
            self.masks.prune(self.finals)
            self.current = dict(self.finals)
        self.summary.update(self.masks.finish())

    def describe(self) -> dict[str, Any]:
        return {"schedule": self.schedule.model_dump(), "finals": self.finals, **self.settings}

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = {k: float(v) for k, v in state["current"].items()}
        self.masks.load_state_dict(state["masks"])


def _check_unstructured(config: MethodConfig) -> None:
    if config.method not in ("magnitude", "wanda"):
        raise RecipeError(f"prune {config.method}: a schedule works with magnitude and wanda "
                          "(sparsegpt and admm update the weights once, for one sparsity)")
    if config.nm is not None:
        raise RecipeError(f"prune pattern {config.pattern}: an N:M pattern has one fixed "
                          "sparsity; a schedule needs 'unstructured'")


def _check_structured(config: StructuredPruneConfig) -> None:
    bad = [k for k, v in config.amounts().items() if not isinstance(v, float)]
    if config.layers is not None or bad:
        raise RecipeError("prune structured with a schedule: give heads, neurons or channels "
                          "as fractions in [0, 1) (whole layers and unit counts are not "
                          "scheduled)")
    if config.compensate or config.scope != "tower":
        raise RecipeError("prune structured with a schedule: compensate and scope 'global' "
                          "are one-shot only")


def check_schedulable(config: MethodConfig) -> None:
    """Refuse, from the recipe alone, settings a schedule cannot follow."""
    if isinstance(config, StructuredPruneConfig):
        _check_structured(config)
    else:
        _check_unstructured(config)


def prepare_gradual(adapter: Adapter, config: MethodConfig,
                    context: StageContext) -> dict[str, Any]:
    """Add masks to the targeted layers and arm `GradualPruning` for the next training stage.

    Raises:
        RecipeError: for settings a schedule cannot follow (SparseGPT, N:M patterns, counts,
            whole layers, global scope or compensation in structured pruning).
    """
    schedule: Schedule = config.schedule
    masks: UnstructuredMasks | StructuredMasks
    if isinstance(config, StructuredPruneConfig):
        _check_structured(config)
        masks, finals = StructuredMasks(adapter, config, context), config.amounts()
    else:
        _check_unstructured(config)
        masks = UnstructuredMasks(adapter, config, context)
        finals = {"weights": config.target_sparsity}
    summary: dict[str, Any] = {"schedule": schedule.model_dump(), "final": finals,
                               "masked_modules": len(masks.modules)}
    arm(context, GradualPruning(masks, schedule, finals, summary, _mask_settings(config, context)))
    return summary


def _mask_settings(config: MethodConfig, context: StageContext) -> dict[str, Any]:
    """The prune settings and the calibration the masks are chosen by: a checkpoint of a run
    with other ones is refused on resume rather than continued with these."""
    calibration = context.calibration
    data = context.data
    return {"prune": config.model_dump(mode="json"),
            "calibration": None if calibration is None else calibration.model_dump(mode="json"),
            "calibration_data": None if data is None else {"name": data.name,
                                                             "examples": len(data)}}
