"""Which weights unstructured pruning keeps, given a score per weight (higher = more important).

Counts are exact: a layer at sparsity S loses ``round(S · rows · cols)`` weights (per-row
selection spreads the remainder over the first rows), an ``N:M`` pattern keeps exactly N of
every M consecutive inputs of each row, and a global selection loses exactly
``round(S · all weights)`` across its layers. Ties are broken by position, never by threshold,
so equal scores cannot change a count.
"""

from __future__ import annotations

import math
import re

import torch

NM = tuple[int, int]  # (kept, group size): "2:4" keeps at most 2 of every 4 consecutive inputs

_NM_RE = re.compile(r"^\s*([0-9]+)\s*:\s*([0-9]+)\s*$")  # ASCII digits: '２:４' is no pattern


def parse_pattern(value: object) -> NM | None:
    """``None`` for ``unstructured``, ``(N, M)`` for ``"N:M"`` with 0 < N < M.

    Raises:
        ValueError: for anything else (the message says what is accepted).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124; undo that
        value = "{}:{}".format(*divmod(value, 60))
    if value == "unstructured":
        return None
    match = _NM_RE.match(str(value))
    if match:
        n, m = int(match[1]), int(match[2])
        if 0 < n < m:
            return n, m
    raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M (e.g. '2:4', "
                     f"'4:8'), got {value!r}")


def pattern_name(nm: NM | None) -> str:
    return "unstructured" if nm is None else f"{nm[0]}:{nm[1]}"


def pruned_count(numel: int, sparsity: float) -> int:
    """Weights to remove out of `numel` (half up, not Python's half-to-even)."""
    return min(numel, math.floor(sparsity * numel + 0.5))


def drop_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (shape of `scores`) without its `k` lowest entries."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[scores.reshape(-1).argsort(stable=True)[:k]] = False
    return keep.view(scores.shape)


def nm_keep_mask(scores: torch.Tensor, nm: NM) -> torch.Tensor:
    """Keep the N highest of every M consecutive scores along each row (cols % M == 0)."""
    n, m = nm
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    idx = groups.topk(n, dim=-1, sorted=False).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return keep.view(rows, cols)


def kernel_position_order(channels: int, positions: int) -> torch.Tensor:
    """The columns of a convolution's [rows, channels·positions] matrix (channel-major, as
    PyTorch flattens its filters) ordered kernel position first, so that N:M groups run over
    the input channels of one position: the GEMM order of NHWC sparse kernels."""
    return torch.arange(channels * positions).view(channels, positions).T.reshape(-1)


def keep_mask(
    scores: torch.Tensor, sparsity: float, nm: NM | None = None, per_row: bool = False
) -> torch.Tensor:
    """Boolean [rows, cols] mask of the weights to keep.

    Args:
        scores: importance per weight, [rows, cols].
        sparsity: fraction to remove (ignored with `nm`, whose sparsity is 1 - N/M).
        nm: keep N of every M consecutive inputs per row.
        per_row: compare weights within each output row (Wanda) rather than the whole layer.
    """
    if nm is not None:
        return nm_keep_mask(scores, nm)
    if not per_row:
        return drop_lowest(scores, pruned_count(scores.numel(), sparsity))
    return drop_lowest_per_row(scores, row_counts(scores.shape, sparsity))


def row_counts(shape: tuple[int, ...] | torch.Size, sparsity: float) -> torch.Tensor:
    """Weights each row of a [rows, cols] matrix removes when every row takes its share of
    ``round(sparsity · rows · cols)``: the remainder goes one each to the first rows."""
    rows, cols = shape
    base, extra = divmod(pruned_count(rows * cols, sparsity), rows)
    counts = torch.full((rows,), base)
    counts[:extra] += 1
    return counts


def drop_lowest_per_row(scores: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """Keep-mask (shape of `scores`) without each row's `counts` lowest entries."""
    rows, cols = scores.shape
    rank = torch.empty_like(scores, dtype=torch.long)
    order = scores.argsort(dim=1, stable=True)
    rank.scatter_(1, order, torch.arange(cols, device=scores.device).expand(rows, cols))
    counts = torch.as_tensor(counts, device=scores.device).reshape(-1, 1)
    return rank >= counts


def global_keep_masks(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Keep-masks for several layers ranked together: the lowest scores of all go."""
    k = pruned_count(sum(s.numel() for s in scores), sparsity)
    if k == 0:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    threshold = torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values
    need = k - sum(int((s < threshold).sum()) for s in scores)  # ties at the threshold that go
    masks = []
    for s in scores:
        keep = s >= threshold
        if need > 0:
            ties = (s == threshold).reshape(-1).nonzero().squeeze(1)[:need]
            keep.view(-1)[ties] = False
            need -= len(ties)
        masks.append(keep)
    return masks
