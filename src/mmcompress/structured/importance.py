"""Importance of heads, neurons, channels and whole layers.

- ``magnitude``: L2 norm of every weight the unit owns across its group (rows of the output
  layers, BatchNorm scale included, and columns of the consumer), as Torch-Pruning's group
  magnitude does. Needs no data.
- ``activation``: Wanda-style output contribution at the consumer, Σ_j mean|x_j| · Σ_i |W_ij|
  over the unit's input features j, with the inputs' statistics from the shared calibration
  engine (which also gives the signed means that bias compensation folds in).
- ``taylor``: first-order Taylor estimate of how much removing the unit changes the model's
  output. The adapters have no label loss on calibration batches, so the loss is a random
  projection r·y of the output embedding (r ~ N(0, I), fresh per batch); the squared gradient
  with respect to a gate on the unit, summed over batches, is then an unbiased estimate of
  ‖∂y/∂gate‖², the squared first-order change of the output when the unit is removed. It is
  divided by Σ‖y‖² over the same batches: a relative change, the same quantity in the same
  units in every layer of every tower and for every kind of unit, so one ranking can hold all
  of them (for unit-norm embeddings it is the mean over examples).
- With ``compensate`` the removed units' mean contribution is kept in the next layer's bias,
  so what a unit is worth is what its *mean* cannot replace (FLAP): ``activation`` then uses
  the standard deviation of the input instead of mean|x|, and ``taylor`` gates the unit
  between its mean and its value (x → μ + g·(x − μ)). A unit firing strongly only on a few
  tokens (a first or separator token) has a large mean that must not be spread over every
  token; these scores keep such units.
- layers (any ``importance``): block influence, mean over tokens of 1 − cos(block input,
  block output) on calibration data (ShortGPT); a block that barely changes its input is cheap
  to drop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapters import Adapter
from ..calibration import CalibrationData, InputStatsCollector, calibrate_layers
from ..calibration.engine import TokenMask, mask_for, real_tokens
from ..calibration.replay import main_output
from ..errors import DataError
from ..selection import tower_of
from .groups import LayerList, UnitGroup

IMPORTANCES = ("magnitude", "activation", "taylor")


def _per_unit(t: torch.Tensor, size: int) -> torch.Tensor:
    """Sum a per-index (or per-row) tensor into one value per unit."""
    return t.reshape(size, -1).sum(1)


def magnitude_scores(model: nn.Module, group: UnitGroup) -> torch.Tensor:
    sq = torch.zeros(group.size)
    for n in group.outputs:
        w = model.get_submodule(n).weight
        if w is not None:
            sq += _per_unit(w.detach().float().pow(2).reshape(w.shape[0], -1).sum(1), group.size)
    for n in group.inputs:
        w = model.get_submodule(n).weight.detach().float()
        sq += _per_unit(w.pow(2).transpose(0, 1).reshape(w.shape[1], -1).sum(1), group.size)
    return sq.sqrt()


class _MeanCollector(InputStatsCollector):
    """Also the spread of every input feature (the base class keeps the signed mean, which
    bias compensation folds in)."""

    def __init__(self) -> None:
        super().__init__(max_rows=0)
        self.sq_sum: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        super().add(x)
        q = x.pow(2).sum(0)
        self.sq_sum = q if self.sq_sum is None else self.sq_sum + q

    @property
    def std(self) -> torch.Tensor:
        return (self.sq_sum / max(self.rows, 1) - self.mean.pow(2)).clamp(min=0).sqrt()


@dataclass(frozen=True)
class InputStats:
    """Per input feature of a consumer layer (rows as the engine gives them: for a conv,
    channel × kh × kw)."""

    abs_mean: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def consumer_stats(adapter: Adapter, groups: list[UnitGroup], calib: CalibrationData,
                   progress: bool) -> dict[str, InputStats]:
    """Input statistics of every group's consumers, from the shared calibration engine."""
    model = adapter.model
    consumers = {n: model.get_submodule(n) for g in groups for n in g.inputs}
    stats: dict[str, InputStats] = {}

    def keep(name: str, module: nn.Module, c: _MeanCollector) -> None:
        stats[name] = InputStats(c.abs_mean, c.mean, c.std)
        return None

    # statistics only, and every collector is kept: one pass per input serves every block
    calibrate_layers(adapter, consumers, calib, lambda n, m: _MeanCollector(), keep,
                     "pruning statistics", progress, merge=True)
    return stats


def activation_scores(model: nn.Module, groups: list[UnitGroup], stats: dict[str, InputStats],
                      centred: bool = False) -> list[torch.Tensor]:
    out = []
    for g in groups:
        score = torch.zeros(g.size)
        for n in g.inputs:
            col = model.get_submodule(n).weight.detach().float().abs().sum(0).reshape(-1)
            x = stats[n].std if centred else stats[n].abs_mean
            score += _per_unit(x * col, g.size)
        out.append(score)
    return out


def _gate_hook(gate: torch.Tensor, width: int, mean: torch.Tensor | None) -> Callable:
    """x → g·x (or μ + g·(x − μ) with means): the gate scales the unit's deviation."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        g = gate.repeat_interleave(width)
        shape = (1, -1, 1, 1) if isinstance(module, nn.Conv2d) else (-1,)
        x = args[0]
        if mean is None:
            return (x * g.view(shape), *args[1:])
        mu = mean.view(shape).to(x)
        return (mu + g.view(shape) * (x - mu), *args[1:])

    return hook


def _input_mean(module: nn.Module, stats: InputStats) -> torch.Tensor:
    """Mean per input feature of a linear layer, per input channel of a conv."""
    if isinstance(module, nn.Conv2d):
        return stats.mean.reshape(module.in_channels, -1).mean(1)
    return stats.mean


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """No weight gradients while the gates' are taken (less memory and time)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)


def _batches_reaching(adapter: Adapter, names: list[str],
                      calib: CalibrationData) -> list[Callable[[], Any]]:
    """Calibration batches of every input modality that reaches modules `names`."""
    towers, modalities = adapter.towers(), adapter.tower_modalities()
    wanted = {m for n in names for m in modalities.get(tower_of(n, towers), modalities["*"])}
    return calib.for_modalities(tuple(sorted(wanted)), "pruning importance")


def taylor_scores(adapter: Adapter, groups: list[UnitGroup], calib: CalibrationData,
                  stats: dict[str, InputStats] | None = None,
                  seed: int = 0) -> list[torch.Tensor]:
    """With `stats`, the unit is gated around its mean rather than around zero."""
    model = adapter.model
    gates = [torch.ones(g.size, requires_grad=True) for g in groups]
    scores = [torch.zeros(g.size) for g in groups]
    energy = [0.0 for _ in groups]  # Σ‖y‖² over the outputs each group's gradients came from
    gen = torch.Generator().manual_seed(seed)
    handles = []
    for g, gate in zip(groups, gates, strict=True):
        for n in g.inputs:
            m = model.get_submodule(n)
            mean = None if stats is None else _input_mean(m, stats[n])
            handles.append(m.register_forward_pre_hook(_gate_hook(gate, g.in_width, mean)))
    try:
        with _frozen(model), torch.enable_grad():
            for run in _batches_reaching(adapter, [g.outputs[0] for g in groups], calib):
                out = run()
                if not isinstance(out, torch.Tensor):
                    raise DataError(f"taylor importance needs a tensor output from "
                                    f"{adapter.name!r} calibration batches")
                if not out.requires_grad:
                    continue  # this batch does not pass any gated unit
                r = torch.randn(out.shape, generator=gen).to(out)
                grads = torch.autograd.grad((r * out).sum(), gates, allow_unused=True)
                y2 = float(out.detach().float().pow(2).sum())
                for i, grad in enumerate(grads):
                    if grad is not None:
                        scores[i] += grad.detach().float().pow(2)
                        energy[i] += y2
    finally:
        for h in handles:
            h.remove()
    return [s / e if e > 0 else s for s, e in zip(scores, energy, strict=True)]


def unit_scores(adapter: Adapter, groups: list[UnitGroup], importance: str,
                calib: Callable[[], CalibrationData],
                stats: Callable[[], dict[str, InputStats]],
                centred: bool = False) -> list[torch.Tensor]:
    """One score per unit of each group; higher is more important. `centred`: what removing
    the unit costs when its mean is compensated."""
    if not groups:
        return []
    if importance == "magnitude":
        return [magnitude_scores(adapter.model, g) for g in groups]
    if importance == "activation":
        return activation_scores(adapter.model, groups, stats(), centred)
    return taylor_scores(adapter, groups, calib(), stats() if centred else None)


def layer_scores(adapter: Adapter, lists: list[LayerList],
                 calib: Callable[[], CalibrationData]) -> dict[str, float]:
    """Block influence of every removable block, by name (``<list>.<index>``)."""
    model = adapter.model
    names = [ll.entry(i) for ll in lists for i in ll.removable]
    if not names:
        return {}
    total = dict.fromkeys(names, 0.0)
    count = dict.fromkeys(names, 0)
    mask: list[TokenMask | None] = [None]  # the current batch's real tokens

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            real = mask_for(mask[0], name)
            x, y = real_tokens(x, real), real_tokens(main_output(out), real)
            dim = 1 if x.dim() == 4 else -1  # conv blocks: cosine over channels
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=dim)
            total[name] += float((1 - cos).sum())
            count[name] += cos.numel()

        return fn

    batches = _batches_reaching(adapter, names, calib())
    handles = [model.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True)
               for n in names]
    try:
        with torch.inference_mode():
            for run in batches:
                mask[0] = getattr(run, "token_mask", None)
                run()
    finally:
        for h in handles:
            h.remove()
    return {n: total[n] / max(count[n], 1) for n in names}
