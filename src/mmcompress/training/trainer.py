"""The one training loop every recovery step shares: fine-tuning, distillation, QAT, pruning.

AdamW over the trainable parameters, linear warm-up + cosine decay, gradient clipping, a
progress bar with loss and examples/s, evaluation after each epoch, and resumable checkpoints
every N steps. Determinism: the example order of epoch ``e`` is a permutation drawn from
``seed × 100,003 + e``, and before every step the global RNG is reseeded from (seed, step, rank), so
dropout and any sampling inside the loss repeat exactly after a resume; nothing random has to
be saved. Under ``torchrun`` the step runs in PyTorch DDP (gradients averaged across
processes), each process takes a strided share of the global batch, only rank 0 writes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..adapters import Adapter
from ..errors import CheckpointError, UserError
from ..progress import progress_bar
from .callbacks import TrainCallback
from .checkpoints import (
    latest_checkpoint,
    load_training_checkpoint,
    read_state,
    save_training_checkpoint,
    state_digest,
)
from .distributed import World, barrier, broadcast_buffers, init_world, mean_across, shard
from .schedule import lr_factor, warmup_steps
from .settings import TrainSettings

EvalFn = Callable[[Adapter], dict[str, float]]
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Objective(Protocol):
    """What the trainer minimises: a loss over a batch of example indices."""

    #: trainable modules the objective owns (learned projections); saved with checkpoints
    modules: nn.Module

    def __len__(self) -> int:
        """Number of training examples."""

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """Mean loss over the examples `indices` (this process's share of the batch)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description (checked on resume: a checkpoint of another run is refused)."""


class _Step(nn.Module):
    """Model + objective modules behind one forward, so DDP sees every trainable parameter."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.extra = objective.modules
        self._objective = [objective]  # a list: not registered as a submodule

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self._objective[0].loss(indices)


class Trainer:
    """Train ``adapter.model`` on an `Objective`; see `fit`."""

    def __init__(
        self,
        adapter: Adapter,
        objective: Objective,
        settings: TrainSettings,
        callbacks: Sequence[TrainCallback] = (),
        eval_fn: EvalFn | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        world: World | None = None,
    ) -> None:
        self.adapter = adapter
        self.model: nn.Module = adapter.model
        self.objective = objective
        self.settings = settings
        self.callbacks = list(callbacks)
        self.eval_fn = eval_fn
        folder = settings.checkpoint_dir or checkpoint_dir
        self.checkpoint_dir = Path(folder) if folder is not None else None
        self.progress = progress
        self.world = world or init_world()
        self.step = 0
        self.history: list[dict[str, Any]] = []
        n = len(objective)
        if n == 0:
            raise UserError("no training examples")
        if settings.batch_size % self.world.size:
            raise UserError(f"batch_size {settings.batch_size} is not divisible by the "
                            f"{self.world.size} processes")
        size = min(settings.batch_size, n)
        self.batch_size = max(size - size % self.world.size, self.world.size)
        self.steps_per_epoch = max(n // self.batch_size, 1)
        total = settings.epochs * self.steps_per_epoch
        self.total_steps = min(total, settings.max_steps or total)
        self.warmup = warmup_steps(settings.warmup, self.total_steps)

    # -- the run ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to `total_steps` (resuming from the last checkpoint when there is one).

        Returns a summary: steps, final loss, per-epoch evaluations, seconds, examples/s.

        Raises:
            UserError: on a non-finite loss or gradient, naming the step (the last good
                checkpoint is kept); CheckpointError when a checkpoint does not fit this run.
        """
        self._fingerprint = self.fingerprint()  # before callbacks may reshape the model
        resumed = self._read_resume_state()
        if resumed is not None:
            self.step = resumed["step"]
            self.history = resumed["history"]
            for cb, state in zip(self.callbacks, resumed["callbacks"]):
                cb.load_state_dict(state)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        params = self._trainable()
        optimizer = torch.optim.AdamW(params, lr=self.settings.lr,
                                      weight_decay=self.settings.weight_decay)
        if resumed is not None:
            load_training_checkpoint(self._resume_path, self.model, self.objective.modules,
                                     optimizer, resumed)
        step_module = _Step(self.model, self.objective)
        runner: nn.Module = step_module
        if self.world.distributed:
            runner = DistributedDataParallel(step_module, find_unused_parameters=True)
        was_training = self.model.training
        self.model.to(self.world.device)
        self.objective.modules.to(self.world.device)
        start, seen = time.perf_counter(), 0
        # a run resumed at its last step trains no more: its loss is the last epoch's record
        last = self.history[-1].get("loss") if self.history else None
        loss_value = float("nan") if last is None else float(last)
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="training",
                           enabled=self.progress and self.world.is_main)
        try:
            while self.step < self.total_steps:
                self._train_mode()
                loss_value = self._one_step(runner, optimizer, params)
                self.step += 1
                seen += self.batch_size
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step, self.total_steps)
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.4f}",
                                ex_s=f"{seen / (time.perf_counter() - start):.1f}")
                if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                    self._end_epoch(loss_value)
                if self.step % self.settings.checkpoint_every == 0 \
                        or self.step == self.total_steps:
                    self._checkpoint(optimizer)
        finally:
            bar.close()
            self.model.train(was_training)
        broadcast_buffers(self.model, self.world)  # every process holds the model saved
        for cb in self.callbacks:
            cb.on_train_end(self)
        self.model.eval()
        self.model.cpu()
        self.objective.modules.cpu()
        seconds = time.perf_counter() - start
        barrier(self.world)
        return {
            "steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_at": resumed["step"] if resumed is not None else None,
            "batch_size": self.batch_size,
            "processes": self.world.size,
            "final_loss": round(loss_value, 6) if math.isfinite(loss_value) else None,
            "epochs": self.history,
            "seconds": round(seconds, 2),
            "examples_per_s": round(seen / seconds, 2) if seen else None,
        }

    def _one_step(self, runner: nn.Module, optimizer: torch.optim.Optimizer,
                  params: list[nn.Parameter]) -> float:
        s = self.settings
        torch.manual_seed(_mix(s.seed, self.step, self.world.rank))
        factor = lr_factor(self.step, self.total_steps, self.warmup)
        for group in optimizer.param_groups:
            group["lr"] = s.lr * factor
        local = shard(self._batch_indices(self.step), self.world)
        loss = runner(local)
        value = float(mean_across(loss.detach(), self.world))
        if not math.isfinite(value):
            raise self._diverged(f"loss is {value}")
        optimizer.zero_grad(set_to_none=True)
        if not loss.requires_grad:  # every process must step alike: no batch is skipped
            raise UserError(f"nothing to train at step {self.step + 1}: no trainable parameter "
                            "reaches the loss (int8 activation layers and packed integer "
                            "weights pass no gradient; check targets and that every batch "
                            "holds the trained inputs)")
        loss.backward()
        # without clipping too: an infinite bound leaves the gradients as they are
        norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip or math.inf)
        if not torch.isfinite(norm):
            raise self._diverged("gradient norm is not finite")
        optimizer.step()
        return value

    def _batch_indices(self, step: int) -> torch.Tensor:
        """The global batch of `step`: a slice of the permutation of its epoch."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(self.settings.seed * 100_003 + epoch)
        order = torch.randperm(len(self.objective), generator=gen)
        return order[pos * self.batch_size : (pos + 1) * self.batch_size]

    def _diverged(self, what: str) -> UserError:
        kept = self._last_checkpoint_name()
        where = f"; the last good checkpoint is {kept}" if kept else ""
        return UserError(f"training diverged at step {self.step + 1}: {what} (lower lr, "
                         f"raise warmup or set grad_clip){where}")

    def _last_checkpoint_name(self) -> str | None:
        if self.checkpoint_dir is None:
            return None
        try:
            path = latest_checkpoint(self.checkpoint_dir)
        except CheckpointError:
            return None
        return str(path) if path is not None else None

    def _end_epoch(self, loss_value: float) -> None:
        entry: dict[str, Any] = {"step": self.step, "loss": round(loss_value, 6)}
        if self.eval_fn is not None and self.settings.evaluate and self.world.is_main:
            self.model.eval()
            self.model.cpu()  # the evaluation path prepares its inputs on the CPU
            entry["metrics"] = self.eval_fn(self.adapter)
            self.model.to(self.world.device)
        self.history.append(entry)

    # -- modes and parameters --------------------------------------------------------------
    def _train_mode(self) -> None:
        self.model.train()
        if self.settings.freeze_norm:
            for m in self.model.modules():
                if isinstance(m, NORMS):
                    m.eval()

    def _trainable(self) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.objective.modules.parameters() if p.requires_grad]
        if not params:
            raise UserError("nothing to train: every parameter is frozen (check targets)")
        return params

    # -- checkpoints -----------------------------------------------------------------------
    @functools.cached_property
    def objective_description(self) -> dict[str, Any]:
        """The objective's `describe()`, computed once (it hashes the training data and a
        teacher's weights)."""
        return self.objective.describe()

    def fingerprint(self) -> str:
        """Hash of what must match for a checkpoint to be resumed: settings, objective
        (teacher included), the starting weights, the modules' configuration (QAT grids), which
        parameters train (a stage's targets/ignore), world size, and the callbacks with their
        settings."""
        desc = {
            "settings": self.settings.model_dump(exclude={"checkpoint_dir", "checkpoint_every",
                                                          "resume", "evaluate"}),
            "objective": self.objective_description,
            "weights": state_digest(self.model),
            "modules": hashlib.sha256(repr(self.model).encode()).hexdigest(),
            "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad],
            "processes": self.world.size,
            "callbacks": [[type(cb).__name__, cb.describe()] for cb in self.callbacks],
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()

    def _read_resume_state(self) -> dict[str, Any] | None:
        mode, folder = self.settings.resume, self.checkpoint_dir
        if mode == "never" or (folder is None and mode == "auto"):
            return None
        if folder is None or not folder.is_dir():
            if mode == "auto":
                return None
            raise CheckpointError(f"resume: must, but the checkpoint folder {folder} does not "
                                  "exist")
        path = latest_checkpoint(folder)
        if path is None:
            if mode == "must":
                raise CheckpointError(f"resume: must, but {folder} holds no checkpoint")
            return None
        state = read_state(path)
        if state.get("fingerprint") != self._fingerprint:
            raise CheckpointError(
                f"{path} was written by a run with other settings, model or data; delete "
                f"{folder} or choose another checkpoint_dir")
        self._resume_path = path
        return state

    def _checkpoint(self, optimizer: torch.optim.Optimizer) -> None:
        if self.checkpoint_dir is None:
            return
        if self.world.is_main:
            state = {
                "step": self.step,
                "total_steps": self.total_steps,
                "epoch": self.step // self.steps_per_epoch,
                "seed": self.settings.seed,
                "scheduler": {"kind": "warmup-cosine", "warmup": self.warmup,
                              "lr_factor": lr_factor(self.step, self.total_steps, self.warmup)},
                "history": self.history,
                "callbacks": [cb.state_dict() for cb in self.callbacks],
                "fingerprint": self._fingerprint,
            }
            save_training_checkpoint(self.checkpoint_dir, self.step, self.model,
                                     self.objective.modules, optimizer, state)
        barrier(self.world)


def _mix(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63)


def train(adapter: Adapter, objective: Objective, settings: TrainSettings,
          **kwargs: Any) -> dict[str, Any]:
    """Train with a fresh `Trainer` (keyword arguments as its constructor's); returns the
    summary of `Trainer.fit`."""
    return Trainer(adapter, objective, settings, **kwargs).fit()
