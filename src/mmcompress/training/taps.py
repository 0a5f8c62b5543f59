"""Capture what distillation compares inside a model: block outputs and attention maps.

Blocks are the entries of every list of transformer layers or CIFAR residual blocks (the same
block types structured pruning knows). Attention maps are recomputed from the attention
module's own query/key projections and the mask it receives, so they are available whatever
attention kernel (SDPA, eager) the model runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.resnet_cifar import BasicBlock
from ..structured.specs import transformer_layers


def block_lists(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Every ModuleList / Sequential of known blocks, by name (e.g. ``text.bert.encoder.layer``)."""
    out = {}
    blocks = (*transformer_layers(), BasicBlock)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList | nn.Sequential) and len(module) \
                and all(isinstance(b, blocks) for b in module):
            out[name] = list(module)
    return out


def attention_module(block: nn.Module) -> nn.Module | None:
    """The self-attention of a transformer layer (BERT ``attention.self``, CLIP ``self_attn``)."""
    attn = getattr(getattr(block, "attention", None), "self", None)
    return attn if attn is not None else getattr(block, "self_attn", None)


def attention_probs(module: nn.Module, hidden: torch.Tensor,
                    mask: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
    """softmax(QKᵀ·scale + mask) as the module computes it: [B, heads, L, L]. `causal`
    without a mask: each token sees itself and the ones before (HF passes ``is_causal``
    instead of a mask to a text tower whose batch holds no padding)."""
    if hasattr(module, "query"):
        q, k = module.query(hidden), module.key(hidden)
        dim = module.attention_head_size
        scale = getattr(module, "scaling", dim**-0.5)
    else:
        q, k = module.q_proj(hidden), module.k_proj(hidden)
        dim, scale = module.head_dim, module.scale
    b, n = hidden.shape[:2]
    q = q.view(b, n, -1, dim).transpose(1, 2)
    k = k.view(b, n, -1, dim).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) * scale
    if mask is None and causal:
        mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.to(scores.dtype)
    return scores.softmax(-1)


def real_tokens(mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
    """[B, L] bool: the positions an attention mask treats as tokens (a token sees itself;
    padding is masked as a key everywhere, its own row included), or None when there is no
    mask (every position is real)."""
    if mask is None:
        return None
    n = hidden.shape[1]
    diag = mask[:, 0].diagonal(dim1=-2, dim2=-1) if mask.shape[-2] == n else mask[:, 0, 0]
    real = diag if diag.dtype == torch.bool else diag > torch.finfo(diag.dtype).min / 2
    return None if bool(real.all()) else real.expand(hidden.shape[0], n)


@dataclass
class Recorded:
    """One call of a tapped block: its output or attention map, and its real tokens."""

    value: torch.Tensor
    tokens: torch.Tensor | None  # [B, L] bool; None: every position


class Taps:
    """Forward hooks recording block outputs and/or attention maps while active: every call
    of a block in order (a sentence-pair model runs its encoder once per side), each with the
    tokens its attention mask marks as real, so that padding can be left out of the losses."""

    def __init__(self, model: nn.Module, lists: dict[str, list[int]], features: bool,
                 attention: bool) -> None:
        self.model, self.lists = model, lists
        self.features, self.attention = features, attention
        self.outputs: dict[tuple[str, int], list[Recorded]] = {}
        self.maps: dict[tuple[str, int], list[Recorded]] = {}
        self._tokens: dict[tuple[str, int], torch.Tensor | None] = {}

    @contextmanager
    def recording(self) -> Iterator[Taps]:
        self.outputs, self.maps, self._tokens = {}, {}, {}
        handles = []
        blocks = block_lists(self.model)
        for name, indices in self.lists.items():
            for i in indices:
                block, key = blocks[name][i], (name, i)
                attn = attention_module(block)
                if attn is not None and (self.attention or self.features):
                    handles.append(attn.register_forward_pre_hook(self._see_attention(key),
                                                                  with_kwargs=True))
                if self.features:
                    handles.append(block.register_forward_hook(self._keep_output(key)))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _keep_output(self, key: tuple[str, int]):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            value = output[0] if isinstance(output, tuple) else output
            self.outputs.setdefault(key, []).append(Recorded(value, self._tokens.pop(key, None)))
        return hook

    def _see_attention(self, key: tuple[str, int]):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            tokens = real_tokens(mask, hidden)
            self._tokens[key] = tokens
            if self.attention:
                probs = attention_probs(module, hidden, mask,
                                        bool(kwargs.get("is_causal", False)))
                self.maps.setdefault(key, []).append(Recorded(probs, tokens))
        return hook
