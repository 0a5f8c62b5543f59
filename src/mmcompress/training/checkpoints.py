"""Resumable training checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``step-N/`` folders and a ``latest`` file naming the newest complete
one. Each ``step-N/`` is written under a temporary name and renamed when complete, then
``latest`` is replaced atomically, so a process killed at any moment leaves the previous
checkpoint intact. Never pickle: the optimizer state is flattened into named tensors plus its
JSON parameter groups.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..adapters.base import all_finite
from ..errors import CheckpointError
from ..io.atomic import write_text_atomic
from ..io.checkpoint import state_for_saving

LATEST = "latest"
MODEL, EXTRA, OPTIMIZER, STATE = (
    "model.safetensors", "objective.safetensors", "optimizer.safetensors", "state.json")
KEEP = 2  # complete checkpoints kept (the newest and the one before it)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().contiguous().cpu()
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_training_checkpoint(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    extra: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write ``folder/step-<step>`` atomically and point ``latest`` at it; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.tmp-", dir=folder))
    try:
        save_file(state_for_saving(model), str(tmp / MODEL))
        save_file(state_for_saving(extra), str(tmp / EXTRA))
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / OPTIMIZER))
        (tmp / STATE).write_text(json.dumps({**state, "optimizer_groups": groups}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_text_atomic(folder / LATEST, final.name)
    _prune_old(folder, keep={final.name})
    return final


def _prune_old(folder: Path, keep: set[str]) -> None:
    steps = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("step-*") if p.is_dir()
                   and p.name.split("-")[1].isdigit())
    for _, path in steps[:-KEEP]:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for stale in folder.glob(".step-*.tmp-*"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder`, or None when there is none yet."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = folder / name
    if name in ("", ".", "..") or Path(name).name != name:  # one folder beside `latest`
        raise CheckpointError(f"{pointer} should name a step-N folder beside it, but holds "
                              f"{name!r}")
    if not (path / STATE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path / STATE} cannot be read: {exc}") from None


def _load(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors, refused when unreadable or holding NaN or Inf (a damaged
    file, or a run that diverged before writing it: resuming would not train)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not all_finite(t):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or Inf values; resume "
                                  "from an earlier step-N (name it in 'latest') or start over")
    return tensors


def load_training_checkpoint(
    path: Path,
    model: torch.nn.Module,
    extra: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Load weights, objective modules and optimizer state written by the same run."""
    try:
        model.load_state_dict(_load(path / MODEL), strict=True)
        extra.load_state_dict(_load(path / EXTRA), strict=True)
        optimizer.load_state_dict(
            _unflatten_optimizer(_load(path / OPTIMIZER), state["optimizer_groups"]))
    except (RuntimeError, KeyError, ValueError) as exc:
        first = " ".join(str(exc).splitlines()[:2])
        raise CheckpointError(f"{path} does not match this run's model: {first}") from None


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (every parameter and buffer, by name): a resumed run must
    start from the very weights the checkpointed run started from."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
