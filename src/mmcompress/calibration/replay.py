"""Block-input replay: calibrate a chain of blocks from their cached inputs.

Sequential calibration replaces one block's layers before calibrating the next, so the next
block must see the compressed model's activations. Rerunning the model up to each block costs
1 + 2 + … + n block passes per batch (21 for a 6-block encoder), and every already-compressed
layer in the prefix (a packed weight-only integer layer rebuilds its weight on each call) runs
again for every later block. Instead, each block's inputs are caught once, at the first block of
a chain, and every later block's inputs are the previous block's outputs on them, as in GPTQ's
reference code. Which blocks form a chain is checked on one batch, never assumed: block b + 1 must
read exactly block b's output in one argument, and the very same objects (attention masks,
position embeddings) in all the others.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Slot = int | str  # a positional argument's index or a keyword argument's name
REPLAY_BYTES = 2 << 30  # most memory the cached inputs of a chain may take (two copies)


class _Caught(Exception):
    """Raised from a pre-hook once the block's inputs of the current batch are caught."""


@dataclass
class BlockCall:
    """One call of a block: its arguments, and the batch's token mask (`engine.TokenMask`)."""

    args: tuple
    kwargs: dict[str, Any]
    token_mask: torch.Tensor | dict[str, torch.Tensor] | None

    def run(self, block: nn.Module) -> Any:
        return block(*self.args, **self.kwargs)

    def passing(self, slot: Slot, value: Any) -> BlockCall:
        """This call with `value` in `slot`."""
        if isinstance(slot, str):
            return BlockCall(self.args, {**self.kwargs, slot: value}, self.token_mask)
        args = (*self.args[:slot], value, *self.args[slot + 1:])
        return BlockCall(args, self.kwargs, self.token_mask)


def main_output(out: Any) -> Any:
    """A block's hidden-state output: the tensor itself, or the first item of a tuple/output."""
    if isinstance(out, torch.Tensor):
        return out
    try:
        return out[0]
    except (TypeError, IndexError, KeyError):
        return None


def _slots(call: BlockCall) -> dict[Slot, Any]:
    return {**dict(enumerate(call.args)), **call.kwargs}


def _same(a: Any, b: Any) -> bool:
    """The very same tensor, or equal plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - uncomparable objects are not the same
        return a is b


def chain_slot(call: BlockCall, out: Any, next_call: BlockCall) -> Slot | None:
    """The slot through which `next_call` reads `out` (a block's output) when every other
    slot holds what `call` had in it; None when the next block is not fed that way."""
    hidden = main_output(out)
    here, there = _slots(call), _slots(next_call)
    if hidden is None or set(here) != set(there):
        return None
    fed = [s for s, v in there.items() if v is hidden]
    if len(fed) != 1:
        return None
    return fed[0] if all(_same(here[s], there[s]) for s in here if s != fed[0]) else None


def _tensors(call: BlockCall) -> list[torch.Tensor]:
    return list({id(v): v for v in _slots(call).values() if isinstance(v, torch.Tensor)}.values())


def call_bytes(call: BlockCall) -> int:
    """Bytes of the distinct tensors one cached call holds."""
    return sum(t.numel() * t.element_size() for t in _tensors(call))


def _versions(call: BlockCall) -> list[int] | None:
    """The in-place version of each of the call's tensors (None where one keeps none)."""
    try:
        return [t._version for t in _tensors(call)]
    except RuntimeError:  # an inference tensor: its changes cannot be seen
        return None


@dataclass
class Chain:
    """How consecutive blocks feed each other on one batch: `links[b]` is the slot through
    which block b + 1 reads block b's output (None: it does not, or block b + 1's inputs
    change in place during the pass, so cached ones would be stale), and `sizes[b]` the
    bytes of block b's call (None where block b cannot be replayed from a cache)."""

    links: list[Slot | None]
    sizes: list[int | None]

    def slots(self, b: int, batches: int) -> list[Slot]:
        """The links of the chain that starts at block `b`, empty when it cannot start there
        or its cached calls for `batches` batches (two copies while one block's outputs
        replace its inputs) would take more than `REPLAY_BYTES`."""
        size = self.sizes[b]
        if size is None or 2 * batches * size > REPLAY_BYTES:
            return []
        return list(itertools.takewhile(lambda s: s is not None, self.links[b:]))


def probe_chain(model: nn.Module, blocks: list[nn.Module], run: Callable[[], Any]) -> Chain:
    """Run one batch through `model` and find how consecutive `blocks` feed each other.

    A block qualifies when it is called once and its inputs do not change in place during
    the pass (a ReLU applied in place, say, would leave cached inputs that are not what it
    first read)."""
    calls: list[list[BlockCall]] = [[] for _ in blocks]
    versions: list[list[list[int] | None]] = [[] for _ in blocks]
    outs: list[list[Any]] = [[] for _ in blocks]

    def caught(i: int, args: tuple, kwargs: dict) -> None:
        calls[i].append(BlockCall(args, dict(kwargs), None))
        versions[i].append(_versions(calls[i][-1]))

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(
            lambda _m, args, kwargs, i=i: caught(i, args, kwargs), with_kwargs=True))
        handles.append(block.register_forward_hook(
            lambda _m, _args, out, i=i: outs[i].append(out)))
    try:
        with torch.no_grad():  # not inference mode: in-place changes must show in versions
            run()
    finally:
        for h in handles:
            h.remove()
    ok = [len(c) == len(o) == 1 and v[0] is not None and _versions(c[0]) == v[0]
          for c, v, o in zip(calls, versions, outs, strict=True)]
    links = [chain_slot(calls[b][0], outs[b][0], calls[b + 1][0]) if ok[b] and ok[b + 1]
             else None for b in range(len(blocks) - 1)]
    return Chain(links, [call_bytes(c[0]) if good else None
                         for c, good in zip(calls, ok, strict=True)])


def catch_inputs(block: nn.Module, batches: list[Callable[[], Any]]) -> list[BlockCall] | None:
    """Each batch's call of `block`, caught before it runs (the model stops there); None when
    a batch never calls it (CLIP's text batches and a factored image projection): the batches
    then run whole, as they do without replay."""
    caught: list[BlockCall] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        caught.append(BlockCall(args, dict(kwargs), None))
        raise _Caught

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            for run in batches:
                n = len(caught)
                with contextlib.suppress(_Caught):
                    run()
                if len(caught) != n + 1:
                    return None
                caught[-1].token_mask = getattr(run, "token_mask", None)
    finally:
        handle.remove()
    return caught


def advance(block: nn.Module, calls: list[BlockCall], slot: Slot) -> list[BlockCall]:
    """The next block's calls: `block` run on each of `calls`, its output put in `slot`."""
    with torch.inference_mode():
        return [call.passing(slot, main_output(call.run(block))) for call in calls]
