"""Streaming statistics of a layer's inputs: nothing but running sums and a bounded sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.replace import conv_padding


def layer_input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as a [rows, features] float matrix: tokens for linear layers, unfolded
    patches (channels × kernel) for convolutions, matching the flattened weight's columns, and
    every position's channels for BatchNorm."""
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, module.dilation, conv_padding(module),
                        module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1]).float()
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return x.movedim(1, -1).reshape(-1, x.shape[1]).float()
    return x.reshape(-1, x.shape[-1]).float()


class InputStatsCollector:
    """Per-feature mean |x| and max |x|, plus a uniform sample of up to `max_rows` of every
    input row seen (none with `max_rows=0`)."""

    def __init__(self, max_rows: int = 2048, seed: int = 0) -> None:
        self.max_rows = max_rows
        self.gen = torch.Generator().manual_seed(seed)
        self.abs_sum: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.abs_max: torch.Tensor | None = None
        self.rows = 0
        self.sample: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        a = x.abs()
        self.abs_sum = a.sum(0) if self.abs_sum is None else self.abs_sum + a.sum(0)
        self.sum = x.sum(0) if self.sum is None else self.sum + x.sum(0)
        m = a.amax(0)
        self.abs_max = m if self.abs_max is None else torch.maximum(self.abs_max, m)
        if self.max_rows:
            self._sample_rows(x)
        self.rows += len(x)

    def _sample_rows(self, x: torch.Tensor) -> None:
        """Reservoir sampling (Vitter's algorithm R, one batch at a time): after any number of
        batches, every row seen is in the sample with the same probability."""
        fill = max(0, min(len(x), self.max_rows - self.rows))
        if fill:
            head = x[:fill].detach().clone()
            self.sample = head if self.sample is None else torch.cat([self.sample, head])
        rest = x[fill:]
        if not len(rest):
            return
        # row t of the stream (0-based) replaces a uniform slot in [0, t] when that is a slot
        seen = self.rows + fill + torch.arange(len(rest), dtype=torch.float64)
        slot = (torch.rand(len(rest), generator=self.gen, dtype=torch.float64)
                * (seen + 1)).long()
        hit = slot < self.max_rows
        # several rows of a batch may land on one slot: the last of them is the one that stays
        last = torch.full((self.max_rows,), -1, dtype=torch.long)
        last.scatter_reduce_(0, slot[hit], torch.arange(len(rest))[hit], "amax")
        slots = (last >= 0).nonzero().squeeze(1)
        self.sample[slots] = rest[last[slots]].to(self.sample.dtype)

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.rows, 1)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.rows, 1)


class HessianCollector(InputStatsCollector):
    """Also accumulates H = 2/n · XᵀX, the layer-wise reconstruction Hessian of GPTQ; with
    paired inputs (`add_pair`), also C = 2/n · X_refᵀX against a reference model's inputs."""

    def __init__(self, max_rows: int = 0, seed: int = 0) -> None:
        super().__init__(max_rows, seed)
        self.xtx: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.reference_sum: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        seen = self.rows
        super().add(x)
        # running mean of 2·xxᵀ, as the GPTQ reference does, so large n cannot overflow;
        # updated in place: no Hessian-sized temporaries per batch
        if self.xtx is None:
            self.xtx = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
        self.xtx.mul_(seen / self.rows).addmm_(x.T, x, alpha=2 / self.rows)

    def add_pair(self, x: torch.Tensor, reference: torch.Tensor) -> None:
        """`x` as `add`, and `reference`: the same rows' inputs in the reference model."""
        seen = self.rows
        self.add(x)
        if self.cross is None:
            self.cross = torch.zeros(reference.shape[1], x.shape[1], dtype=x.dtype)
            self.reference_sum = torch.zeros(reference.shape[1], dtype=x.dtype)
        self.cross.mul_(seen / self.rows).addmm_(reference.T, x, alpha=2 / self.rows)
        self.reference_sum += reference.sum(0)

    @property
    def reference_mean(self) -> torch.Tensor:
        """Mean reference input (the layer's own mean input when no reference was run)."""
        return self.mean if self.reference_sum is None else self.reference_sum / self.rows

    @property
    def hessian(self) -> torch.Tensor:
        return self.xtx

    def centred(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(H, C) about the means, 2/n · (X − μ)ᵀ(X − μ) and 2/n · (X_ref − μ_ref)ᵀ(X − μ):
        the Gram matrices of the error a bias can no longer absorb once it is corrected."""
        mu, ref = self.mean, self.reference_mean
        h = self.xtx - 2 * torch.outer(mu, mu)
        return h, None if self.cross is None else self.cross - 2 * torch.outer(ref, mu)

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ per input feature, as `FeatureNormCollector` gives it."""
        return (self.xtx.diagonal() * (self.rows / 2)).clamp_min(0).sqrt()


class FeatureNormCollector:
    """Per-feature L2 norm over every input row seen, ‖X_j‖₂ (Wanda's activation term). It
    holds no Gram matrix: `hessian` and `cross` are None, where `HessianCollector` has them."""

    hessian: None = None
    cross: None = None

    def __init__(self) -> None:
        self.sq_sum: torch.Tensor | None = None
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        s = x.pow(2).sum(0)
        self.sq_sum = s if self.sq_sum is None else self.sq_sum + s
        self.rows += len(x)

    @property
    def norm(self) -> torch.Tensor:
        return self.sq_sum.sqrt()


class MomentsCollector:
    """Per-feature mean and (population) variance of a layer's inputs."""

    def __init__(self) -> None:
        self.rows = 0
        self.sum: torch.Tensor | float = 0.0
        self.sq_sum: torch.Tensor | float = 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.sum = self.sum + x.sum(0)
        self.sq_sum = self.sq_sum + x.pow(2).sum(0)
        self.rows += len(x)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) of the inputs seen."""
        mean = self.sum / self.rows
        return mean.float(), (self.sq_sum / self.rows - mean.pow(2)).clamp_min(0).float()
