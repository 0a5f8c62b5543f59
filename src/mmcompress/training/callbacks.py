"""Hooks into the training loop, for methods that act while training (QAT, gradual pruning).

Order of calls in `Trainer.fit`:

1. on resume, ``load_state_dict(state)`` with what ``state_dict()`` returned when the last
   checkpoint was written (``trainer.step`` already holds the resumed step);
2. ``on_train_begin(trainer)`` — before the optimizer is built, so a callback may replace
   modules or add parameters to ``trainer.model``;
3. after every optimizer step, ``on_step_end(trainer, step, total_steps)`` with ``step`` the
   number of steps done (1 … total_steps); a checkpoint written at that step sees its effect;
4. ``on_train_end(trainer)`` once the last step is done (not when training fails).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainCallback:
    """Base class: every hook is a no-op; state is plain JSON values (survives resume)."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once before the optimizer is built (also when resuming)."""

    def on_step_end(self, trainer: Trainer, step: int, total_steps: int) -> None:
        """Called after optimizer step `step` (1-based) of `total_steps`."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Called after the last step."""

    def describe(self) -> dict[str, Any]:
        """JSON-able settings a resumed run must share (its checkpoints are refused otherwise)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (called before `on_train_begin` on resume)."""
