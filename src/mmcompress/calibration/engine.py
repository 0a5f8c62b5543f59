"""Calibration: run the model on the user's data, one block of layers at a time.

For each group of selected layers (a transformer block, a residual block, or a lone layer),
hooks stream that group's inputs into per-layer collectors; the forward pass stops as soon as
every layer of the group has seen the batch. The method then replaces the group's layers, so the
next group is calibrated on the outputs of the already-compressed model (GPTQ's sequential
order). Only one group's statistics live at a time. Along a chain of blocks, each block's inputs
are replayed from a cache rather than recomputed by running the model up to it (`replay.py`).

With a `reference` (an unmodified copy of the model), every batch also runs through the copy, and
each collector receives the layer's input in both models at the same token rows: a method can
then fit the compressed model to the original's outputs, so each layer also corrects the error
the already-compressed layers before it pass on (asymmetric calibration, as in GPTAQ).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import DataError
from ..modules.replace import replace_modules
from ..progress import progress_bar
from ..selection import tower_of
from .collectors import layer_input_rows
from .replay import BlockCall, Chain, Slot, advance, catch_inputs, probe_chain

Batch = Callable[[], Any]
#: real rows of a batch: one mask for every layer, or masks by module-name prefix
TokenMask = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class CalibrationBatch:
    """One calibration forward pass: `forward(load())`, and which token positions are real.

    `load` gives the model's inputs (decoding images, say); `forward` runs the model on them.
    Kept apart so that a pass through two models (a reference run) loads the inputs once.
    `token_mask` ([batch, tokens], True = a real token) drops padded positions from the
    statistics of every layer whose input is laid out [batch, tokens, features]: padding never
    reaches the model's output (attention and pooling mask it), so its activations would only
    distort Hessians, norms and ranges. A model whose modules see different rows (a fusion
    model: each tower its own tokens, an absent modality's none) gives a mask per module
    instead, keyed by name prefix (`mask_for`); a mask [batch] keeps whole examples.
    """

    forward: Callable[[Any], Any]
    load: Callable[[], Any]
    token_mask: TokenMask | None = None

    def __call__(self) -> Any:
        return self.forward(self.load())


def mask_for(token_mask: TokenMask | None, name: str) -> torch.Tensor | None:
    """The mask of module `name`'s input rows: the batch's one mask, or the entry of a
    per-module mapping with the longest name prefix of `name` (None when none matches)."""
    if not isinstance(token_mask, dict):
        return token_mask
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        found = token_mask.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def real_tokens(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """`x` reduced to its real rows when the mask fits its layout: a token mask [batch,
    tokens] applies to inputs [batch, tokens, features], an example mask [batch] to any input
    whose first dimension is the batch."""
    if token_mask is None:
        return x
    if token_mask.dim() == 1:
        return x[token_mask] if x.dim() >= 2 and x.shape[0] == token_mask.shape[0] else x
    if x.dim() != 3 or tuple(x.shape[:2]) != tuple(token_mask.shape):
        return x
    return x[token_mask]


@dataclass
class CalibrationData:
    """Closures that run the model on calibration batches, per input modality; `drawn`: how
    many examples (and, for text, real tokens) each modality's batches hold."""

    batches: dict[str, list[Batch]]
    drawn: dict[str, dict[str, int]] = field(default_factory=dict)

    def for_modalities(self, modalities: tuple[str, ...], what: str) -> list[Batch]:
        missing = [m for m in modalities if not self.batches.get(m)]
        if missing:
            have = ", ".join(m for m, b in self.batches.items() if b) or "nothing"
            raise DataError(f"calibrating {what} needs {' and '.join(missing)} inputs, but the "
                            f"calibration data has {have}")
        return [b for m in modalities for b in self.batches[m]]


class _GroupDone(Exception):
    """Raised from a hook once every layer of the group has seen the current batch."""


def block_name(layer: str) -> str:
    """The layer's block: its deepest indexed prefix ('encoder.layers.3' for
    'encoder.layers.3.mlp.fc1'), or the layer itself when its name has no index."""
    parts = layer.split(".")
    idx = max((i for i, p in enumerate(parts) if p.isdigit()), default=None)
    return ".".join(parts[: idx + 1]) if idx is not None else layer


def layer_groups(names: list[str]) -> list[list[str]]:
    """Group layer names by their block (`block_name`), in model order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(block_name(name), []).append(name)
    return list(groups.values())


def _group_inputs(group: dict[str, nn.Module], mask: list[TokenMask | None],
                  store: dict[str, list[torch.Tensor] | str]
                  ) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that add each `group` layer's input rows of the current batch (of every call) to
    `store`, and stop the forward pass once every layer has seen it. A linear layer that reads
    the very tensor an earlier one of the group read (q, k and v do) stores that layer's name
    instead of a copy of the same rows."""
    seen: list[tuple[torch.Tensor, str]] = []  # this batch's linear inputs and their readers

    def reader_before(name: str, module: nn.Module, x: torch.Tensor) -> str | None:
        """The group's layer that read `x` before `name` did, if `name` may share its rows
        (same kind of layer, same real rows)."""
        if not isinstance(module, nn.Linear):
            return None
        first = next((n for t, n in seen if t is x and n != name), None)
        if first is None or type(group[first]) is not type(module):
            return None
        return first if mask_for(mask[0], first) is mask_for(mask[0], name) else None

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, _out: Any) -> None:
            if not store:
                seen.clear()  # a new batch
            first, stored = reader_before(name, module, args[0]), store.get(name)
            if isinstance(stored, str) and first != stored:
                raise RuntimeError(f"calibration: {name!r} read {stored!r}'s input in one "
                                   "call but not in another")
            if stored is None and first is not None:
                store[name] = first
            elif not isinstance(stored, str):
                if isinstance(module, nn.Linear):
                    seen.append((args[0], name))
                x, real = args[0].detach(), mask_for(mask[0], name)
                if real is not None and (real.dim() == 1 or not isinstance(module, nn.Conv2d)):
                    x = real_tokens(x, real)
                store.setdefault(name, []).append(layer_input_rows(module, x))
            if len(store) == len(group):
                raise _GroupDone

        return fn

    return [m.register_forward_hook(hook(n)) for n, m in group.items()]


def _share_collectors(collectors: dict[str, Any], aliases: dict[str, str]) -> None:
    """Point each aliased layer (same input as `aliases[name]`) at that layer's collector,
    when both collect the same kind of statistics; from the first batch on only."""
    for name, first in aliases.items():
        if collectors[name] is collectors[first]:
            continue
        if type(collectors[name]) is not type(collectors[first]) or collectors[name].rows:
            raise RuntimeError(f"calibration: {name!r} read {first!r}'s input in one batch "
                               "but not in another")
        collectors[name] = collectors[first]


def _rows(store: dict[str, list[torch.Tensor] | str], name: str) -> list[torch.Tensor]:
    """`name`'s input rows in `store`, following a stored alias to the layer that has them."""
    rows = store[name]
    return store[rows] if isinstance(rows, str) else rows


def _run_group(group: dict[str, nn.Module], collectors: dict[str, Any], batches: list[Batch],
               reference: nn.Module | None = None, adapter: Any = None,
               reference_batches: list[Batch] | None = None) -> None:
    """Stream every batch's inputs of the `group` layers into their collectors (paired with the
    same layers' inputs in `reference`, run through `adapter`, when given; or run by
    `reference_batches`, one per batch, when given)."""
    mask: list[TokenMask | None] = [None]  # the current batch's token mask
    live: dict[str, list[torch.Tensor] | str] = {}
    ref: dict[str, list[torch.Tensor] | str] = {}
    masked_only: set[str] = set()  # layers that ran on no real row of a batch
    handles = _group_inputs(group, mask, live)
    if reference is not None:
        handles += _group_inputs({n: reference.get_submodule(n) for n in group}, mask, ref)
    try:
        with torch.inference_mode():
            for k, run in enumerate(batches):
                live.clear()
                ref.clear()
                mask[0] = getattr(run, "token_mask", None)
                if reference is not None and reference_batches is None \
                        and isinstance(run, CalibrationBatch):
                    inputs = run.load()  # once for both models
                    run = functools.partial(run.forward, inputs)  # noqa: PLW2901
                with contextlib.suppress(_GroupDone):
                    run()
                if reference_batches is not None:
                    with contextlib.suppress(_GroupDone):
                        reference_batches[k]()
                elif reference is not None:
                    with adapter.running(reference), contextlib.suppress(_GroupDone):
                        run()
                    if set(ref) != set(live):
                        raise RuntimeError(f"{type(adapter).__name__} did not run the "
                                           "reference model: its calibration batches must go "
                                           "through `adapter.model`")
                aliases = {n: rows for n, rows in live.items() if isinstance(rows, str)}
                _share_collectors(collectors, aliases)
                for name, rows in live.items():
                    if name in aliases:
                        continue
                    x = torch.cat(rows)
                    if not len(x):  # no real row of this batch reached the layer
                        masked_only.add(name)
                        continue
                    if reference is None:
                        collectors[name].add(x)
                    else:
                        collectors[name].add_pair(x, torch.cat(_rows(ref, name)))
    finally:
        for h in handles:
            h.remove()
    unseen = [n for n in group if collectors[n].rows == 0]
    if unseen and unseen[0] in masked_only:
        raise DataError(f"calibration reached layer {unseen[0]!r} with no real input: every "
                        "calibration example lacks what it reads (a missing modality, say); "
                        "check the data and targets")
    if unseen:
        raise DataError(f"calibration never reached layer {unseen[0]!r}; check the data and "
                        "targets")


def _runs(needs: list[tuple[str, ...]], merge: bool) -> list[list[int]]:
    """Group indices in passes: each group alone, or (`merge`) every run of consecutive groups
    that need the same inputs together."""
    runs: list[list[int]] = []
    for i, group_needs in enumerate(needs):
        if merge and runs and group_needs == needs[runs[-1][-1]]:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class _Replay:
    """Each group's batches as calls of its block on cached inputs, along chains of blocks
    (`replay`); the model's own batches where no chain is found. With a `reference` model, its
    blocks replay their own cached inputs alongside."""

    def __init__(self, adapter: Any, groups: list[list[str]], needs: list[tuple[str, ...]],
                 reference: nn.Module | None):
        self.adapter, self.needs, self.reference = adapter, needs, reference
        self.blocks = [block_name(names[0]) for names in groups]
        self.calls: list[BlockCall] | None = None
        self.reference_calls: list[BlockCall] | None = None
        self.slots: list[Slot] = []  # how each later block of the chain reads the one before
        self.chain: Chain | None = None  # how the blocks from `probed` on feed each other
        self.probed = -1

    def batches(self, i: int, batches: list[Batch]) -> tuple[list[Batch], list[Batch] | None]:
        """Group `i`'s batches, and the reference model's (None: run `batches` through it)."""
        if self.calls is None:
            self._start(i, batches)
        if self.calls is None:
            return batches, None
        live = _replayed(self.adapter.model.get_submodule(self.blocks[i]), self.calls)
        if self.reference_calls is None:
            return live, None
        return live, _replayed(self.reference.get_submodule(self.blocks[i]),
                               self.reference_calls)

    def _start(self, i: int, batches: list[Batch]) -> None:
        """Catch block `i`'s inputs when a chain starts there. One probe pass serves every
        group of a run that needs the same inputs."""
        if not batches:
            return
        model = self.adapter.model
        if self.chain is None or not self.probed <= i < self.probed + len(self.chain.sizes):
            same = itertools.takewhile(lambda j: self.needs[j] == self.needs[i],
                                       range(i, len(self.blocks)))
            self.chain = probe_chain(model, [model.get_submodule(self.blocks[j])
                                             for j in same], batches[0])
            self.probed = i
        cached = len(batches) * (1 if self.reference is None else 2)  # calls of either model
        slots = self.chain.slots(i - self.probed, cached)
        if not slots:
            return
        self.calls = catch_inputs(model.get_submodule(self.blocks[i]), batches)
        if self.calls is None:
            return
        self.slots = slots
        if self.reference is not None:
            with self.adapter.running(self.reference):
                self.reference_calls = catch_inputs(
                    self.reference.get_submodule(self.blocks[i]), batches)

    def done(self, i: int) -> None:
        """Group `i` is replaced: move the cached inputs on to the next block of the chain."""
        if self.calls is None or not self.slots:
            self.calls = self.reference_calls = None
            return
        slot = self.slots.pop(0)
        self.calls = advance(self.adapter.model.get_submodule(self.blocks[i]), self.calls, slot)
        if self.reference_calls is not None:
            self.reference_calls = advance(self.reference.get_submodule(self.blocks[i]),
                                           self.reference_calls, slot)


def _replayed(block: nn.Module, calls: list[BlockCall]) -> list[Batch]:
    """Calibration batches that run `block` on each of `calls`."""
    return [CalibrationBatch(forward=lambda call, b=block: call.run(b),
                             load=lambda call=call: call, token_mask=call.token_mask)
            for call in calls]


def calibrate_layers(
    adapter,
    modules: dict[str, nn.Module],
    calibration: CalibrationData,
    make_collector: Callable[[str, nn.Module], Any],
    replace: Callable[[str, nn.Module, Any], nn.Module | None],
    desc: str,
    progress: bool = True,
    release: bool = False,
    reference: nn.Module | None = None,
    merge: bool = False,
    replay: bool = True,
) -> int:
    """Calibrate and replace `modules` group by group; returns how many were replaced.

    `make_collector(name, module)` builds a statistics collector; `replace(name, module,
    collector)` returns the new module (or None to keep it). Replaced layers are removed from
    `modules` as the engine goes, so that, if the caller keeps no other reference to them,
    each original's weights are freed as soon as its replacement is in the model: peak memory
    stays near one copy of the model instead of the original plus everything built so far.
    With `release`, each modality's batches are dropped from `calibration` once no later group
    needs them (the image batches, say, once the vision tower is done). With `reference` (an
    unmodified copy of `adapter.model`), collectors receive `add_pair(x, x_reference)` instead
    of `add(x)`.

    With `merge` (statistics only: `replace` must return None for every layer), one pass
    serves every run of consecutive groups that need the same inputs: a pass runs the model up
    to its last group, so a run of k groups saves the passes up to the first k - 1. Every
    run's collectors are alive together, which costs nothing when the caller keeps them all.

    Otherwise, with `replay`, each chain of blocks (one feeding the next, as the layers of an
    encoder do) is calibrated from cached block inputs (`replay.py`): the model (and the
    `reference`) runs up to the chain's first block once per batch, and each block once more to
    give the next its inputs, instead of the whole prefix again for every block.
    """
    towers = adapter.towers()
    modalities = adapter.tower_modalities()
    replaced = 0
    groups = layer_groups(list(modules))
    needs = [modalities.get(tower_of(names[0], towers), modalities["*"]) for names in groups]
    last_use = {m: i for i, group_needs in enumerate(needs) for m in group_needs}
    replayed = _Replay(adapter, groups, needs, reference) if replay and not merge else None
    for run in progress_bar(_runs(needs, merge), desc=desc, enabled=progress,
                            unit="pass" if merge else "block"):
        names = [n for i in run for n in groups[i]]
        group = {n: modules[n] for n in names}
        batches = calibration.for_modalities(
            needs[run[0]], f"{names[0]} ({tower_of(names[0], towers) or 'model'})")
        reference_batches = None
        if replayed is not None:
            batches, reference_batches = replayed.batches(run[0], batches)
        collectors = {n: make_collector(n, m) for n, m in group.items()}
        _run_group(group, collectors, batches, reference, adapter, reference_batches)
        new = {}
        for n, m in group.items():
            r = replace(n, m, collectors[n])
            if r is not None:
                if merge:
                    raise RuntimeError("calibrate_layers: merge is for statistics only, but "
                                       f"{n!r} was replaced")
                new[n] = r
        del collectors, group
        replace_modules(adapter.model, new)
        if replayed is not None:
            replayed.done(run[0])
        for n in new:
            del modules[n]
        replaced += len(new)
        del batches
        if release:
            for m in [m for m, last in last_use.items() if last == run[-1]]:
                calibration.batches[m] = []
    return replaced
