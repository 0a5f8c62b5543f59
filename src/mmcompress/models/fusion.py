"""Fusion classifiers over image, text and audio: early, late and hybrid fusion.

Every modality has an encoder that turns its input into tokens of width `dim`:
- image: a small CNN over 8×8 digits, one token per cell of its 4×4 feature map, then a
  transformer block;
- text: a character transformer;
- audio: a log-mel spectrogram computed in torch, one token per two frames, then transformer
  blocks.

The fusion module (``fusion``) then combines them:
- ``early``: the tokens of all modalities (with a modality embedding) go through one shared
  transformer, pooled into one head;
- ``late``: each modality is pooled and classified alone; the log-probabilities of the modalities
  present are averaged with one weight per modality (`modality_weights`, a saved buffer: ones
  until fitted on held-out data, see `fusion_training.fit_modality_weights`), so any subset of
  modalities works and a modality that is often wrong on new speakers counts less;
- ``hybrid``: each modality's tokens first attend to the other modalities' tokens
  (cross-attention), then are classified per modality and combined as in ``late``.

A `present` mask [B, 3] (image, text, audio) says which modalities each example has; absent
tokens are masked out of attention and pooling, so their (zero) inputs never matter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODALITIES = ("image", "text", "audio")
FUSIONS = ("early", "late", "hybrid")
SAMPLE_RATE = 8000


class Attention(nn.Module):
    """Multi-head attention with a key mask; a query with no valid key gets a zero output."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(context)), \
            self._split(self.v_proj(context))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out_proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, or cross-attention to a `context`."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if context is None:
            x = x + self.self_attn(h, h, mask)
        else:
            x = x + self.self_attn(h, self.norm1(context), context_mask)
        return x + self.mlp(self.norm2(x))


class ConvEncoder(nn.Module):
    """3×3 convolutions (stride 2 after the first) → average pool to `grid` → one token per
    cell, projected to `dim`, plus a learned position per cell → transformer blocks that let
    every cell see the others (so pooling the tokens later keeps where things were)."""

    def __init__(self, channels: list[int], dim: int, grid: tuple[int, int], heads: int,
                 hidden: int, layers: int) -> None:
        super().__init__()
        widths = [1, *channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1)
            for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)))
        self.grid = grid
        self.tokens = grid[0] * grid[1]
        self.proj = nn.Linear(channels[-1], dim)
        self.pos = nn.Parameter(torch.zeros(self.tokens, dim))
        self.layers = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        for conv in self.convs:  # He init keeps the signal's scale through the stack
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.gelu(conv(x))
        x = F.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2)
        x = self.proj(x) + self.pos
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def mel_filterbank(n_fft: int, n_mels: int, rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1] from 0 Hz to `rate` / 2."""
    top_mel = 2595.0 * math.log10(1.0 + rate / 2.0 / 700.0)
    edges_mel = torch.linspace(0.0, top_mel, n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up, down = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0)


class LogMel(nn.Module):
    """Waveform [B, N] → log-mel spectrogram [B, 1, n_mels, frames], normalised per example
    and mel band.
    No parameters: the window and filters are buffers outside the state dict, saved beside it
    in `buffers.safetensors`."""

    def __init__(self, n_mels: int, n_fft: int = 256, hop: int = 128) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_fft, n_mels, SAMPLE_RATE),
                             persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2
        mel = self.filters @ power
        floor = mel.amax(dim=(1, 2), keepdim=True) * 1e-6 + 1e-10  # 60 dB below the peak
        logmel = torch.log(mel + floor)
        # per mel band over time (cepstral mean normalisation): removes the speaker's and the
        # microphone's colouring, which held-out speakers do not share
        logmel = logmel - logmel.mean(dim=2, keepdim=True)
        return (logmel / (logmel.std(dim=(1, 2), keepdim=True) + 1e-5))[:, None]


class AudioEncoder(nn.Module):
    """Log-mel frames, `stack` adjacent ones per token, projected to `dim` → transformer
    blocks. (Small CNNs over the spectrogram generalised worse to a held-out speaker.)"""

    def __init__(self, samples: int, n_mels: int, stack: int, dim: int, heads: int,
                 hidden: int, layers: int) -> None:
        super().__init__()
        self.frontend = LogMel(n_mels)
        self.stack = stack
        self.tokens = (samples // self.frontend.hop + 1) // stack
        self.proj = nn.Linear(n_mels * stack, dim)
        self.pos = nn.Parameter(torch.zeros(self.tokens, dim))
        self.layers = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(wave)[:, 0, :, : self.tokens * self.stack]  # [B, mels, frames]
        x = mel.transpose(1, 2).reshape(len(mel), self.tokens, -1)
        x = self.proj(x) + self.pos
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class TextEncoder(nn.Module):
    """Character embeddings + positions → transformer blocks → tokens."""

    def __init__(self, vocab: int, max_len: int, dim: int, heads: int, hidden: int,
                 layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        self.layers = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class Head(nn.Module):
    """Pooled tokens → LayerNorm → MLP → class logits."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(masked_mean(tokens, mask)))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(tokens.dtype)[..., None]
    return (tokens * w).sum(1) / w.sum(1).clamp(min=1.0)


def combine_late(logits: dict[str, torch.Tensor], present: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean log-probability over the modalities present (zeros where none is);
    `weights` [3] (image, text, audio), default equal."""
    logp = torch.stack([F.log_softmax(logits[m], -1) for m in MODALITIES], 1)  # [B, 3, C]
    w = present.to(logp.dtype)
    if weights is not None:
        w = w * weights.to(logp.dtype)
    w = w[..., None]
    return (logp * w).sum(1) / w.sum(1).clamp(min=1e-12)


class _WeightedLate(nn.Module):
    """Base of the fusions that combine per-modality predictions (late and hybrid)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("modality_weights", torch.ones(len(MODALITIES)))

    def combine(self, parts: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return combine_late(parts, present, self.modality_weights)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # models saved before the weights existed combined the modalities equally
        state_dict.setdefault(prefix + "modality_weights", torch.ones(len(MODALITIES)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class EarlyFusion(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, layers: int, classes: int) -> None:
        super().__init__()
        self.modality = nn.Parameter(torch.zeros(len(MODALITIES), dim))
        self.layers = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.head = Head(dim, hidden, classes)

    def forward(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                present: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = torch.cat([tokens[m] + self.modality[i] for i, m in enumerate(MODALITIES)], 1)
        mask = torch.cat([masks[m] for m in MODALITIES], 1)
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(x, mask), {}

    def input_masks(self, masks: dict[str, torch.Tensor], present: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """Real rows of each submodule's inputs (`FusionClassifier.input_masks`)."""
        joint = torch.cat([masks[m] for m in MODALITIES], 1)
        return {"layers": joint, "head": joint.any(1)}


class LateFusion(_WeightedLate):
    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: Head(dim, hidden, classes) for m in MODALITIES})

    def forward(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                present: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {m: self.heads[m](tokens[m], masks[m]) for m in MODALITIES}
        return self.combine(parts, present), parts

    def input_masks(self, masks: dict[str, torch.Tensor], present: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """Real rows of each submodule's inputs: a head's examples that have its modality."""
        return {f"heads.{m}": present[:, i] for i, m in enumerate(MODALITIES)}


class HybridFusion(_WeightedLate):
    def __init__(self, dim: int, heads: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.cross = nn.ModuleDict({m: Block(dim, heads, hidden) for m in MODALITIES})
        self.heads = nn.ModuleDict({m: Head(dim, hidden, classes) for m in MODALITIES})

    def forward(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                present: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {}
        for m in MODALITIES:
            others = [o for o in MODALITIES if o != m]
            context = torch.cat([tokens[o] for o in others], 1)
            context_mask = torch.cat([masks[o] for o in others], 1)
            x = self.cross[m](tokens[m], masks[m], context, context_mask)
            parts[m] = self.heads[m](x, masks[m])
        return self.combine(parts, present), parts

    def input_masks(self, masks: dict[str, torch.Tensor], present: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """Real rows of each submodule's inputs, in the examples that have the block's modality:
        a cross block's own tokens (its keys and values: the other modalities' tokens; its
        queries: only where some other modality is there to attend to), and a head's
        examples."""
        out = {}
        for i, m in enumerate(MODALITIES):
            context = torch.cat([masks[o] for o in MODALITIES if o != m], 1) & present[:, i, None]
            attending = masks[m] & context.any(1)[:, None]
            out |= {f"cross.{m}": masks[m], f"cross.{m}.self_attn.q_proj": attending,
                    f"cross.{m}.self_attn.k_proj": context,
                    f"cross.{m}.self_attn.v_proj": context, f"heads.{m}": present[:, i]}
        return out


DEFAULTS: dict[str, Any] = {
    "fusion": "late", "classes": 10, "dim": 64, "heads": 4, "hidden": 128, "vocab": 64,
    "max_text_len": 32, "text_layers": 2, "fusion_layers": 1, "image_channels": [16, 32],
    "image_layers": 1, "audio_layers": 2, "audio_stack": 2, "n_mels": 32,
    "audio_samples": SAMPLE_RATE,
}


class FusionClassifier(nn.Module):
    """Image, text and audio encoders (towers ``vision``, ``text``, ``audio``) and a fusion
    module (tower ``fusion``) of the kind `arch['fusion']` names."""

    def __init__(self, **arch: Any) -> None:
        super().__init__()
        unknown = set(arch) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown fusion model settings {sorted(unknown)}")
        a = self.arch = {k: list(v) if isinstance(v, list) else v
                         for k, v in {**DEFAULTS, **arch}.items()}
        if a["fusion"] not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {a['fusion']!r}")
        dim, heads, hidden = a["dim"], a["heads"], a["hidden"]
        self.vision = ConvEncoder(a["image_channels"], dim, (4, 4), heads, hidden,
                                  a["image_layers"])
        self.text = TextEncoder(a["vocab"], a["max_text_len"], dim, heads, hidden,
                                a["text_layers"])
        self.audio = AudioEncoder(a["audio_samples"], a["n_mels"], a["audio_stack"], dim, heads,
                                  hidden, a["audio_layers"])
        if a["fusion"] == "early":
            self.fusion = EarlyFusion(dim, heads, hidden, a["fusion_layers"], a["classes"])
        elif a["fusion"] == "late":
            self.fusion = LateFusion(dim, hidden, a["classes"])
        else:
            self.fusion = HybridFusion(dim, heads, hidden, a["classes"])

    def architecture(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, list) else v for k, v in self.arch.items()}

    def token_masks(self, text_mask: torch.Tensor, present: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """Each modality's token mask [batch, tokens] as the fusion module gets it: the real
        tokens of the examples that have the modality; one masked-out stand-in token where no
        example of the batch has it."""
        counts = {"image": self.vision.tokens, "text": text_mask.shape[1],
                  "audio": self.audio.tokens}
        masks = {}
        for i, m in enumerate(MODALITIES):
            if present[:, i].any():
                base = text_mask.bool() if m == "text" else torch.ones(
                    len(present), counts[m], dtype=torch.bool, device=present.device)
                masks[m] = base & present[:, i, None]
            else:
                masks[m] = torch.zeros(len(present), 1, dtype=torch.bool, device=present.device)
        return masks

    def input_masks(self, text_mask: torch.Tensor, present: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """Which rows of each submodule's inputs are real, by module-name prefix (calibration
        statistics leave the others out: `calibration.engine.mask_for`): an encoder's
        examples that have its modality, the real characters of the texts, and what the
        fusion module reads of them."""
        present = present.bool()
        masks = self.token_masks(text_mask, present)
        fusion = self.fusion.input_masks(masks, present)
        return {"vision": present[:, 0], "text": masks["text"], "audio": present[:, 2],
                **{f"fusion.{name}": mask for name, mask in fusion.items()}}

    def encode(self, pixels: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
               wave: torch.Tensor, present: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Tokens and token masks per modality; an encoder no example needs is skipped."""
        inputs = {"image": (pixels,), "text": (ids, text_mask.bool()), "audio": (wave,)}
        encoders = {"image": self.vision, "text": self.text, "audio": self.audio}
        tokens = {m: encoders[m](*inputs[m]) if present[:, i].any()
                  else torch.zeros(len(present), 1, self.arch["dim"], device=present.device)
                  for i, m in enumerate(MODALITIES)}  # absent from the whole batch: a stand-in
        return tokens, self.token_masks(text_mask, present)

    def forward_parts(self, pixels: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
                      wave: torch.Tensor, present: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused class scores and, for late and hybrid fusion, each modality's logits."""
        present = present.bool()
        tokens, masks = self.encode(pixels, ids, text_mask, wave, present)
        return self.fusion(tokens, masks, present)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
                wave: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(pixels, ids, text_mask, wave, present)[0]
