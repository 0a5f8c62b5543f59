"""An order of a layer's inputs for its N:M groups (channel permutation, Pool & Yu, 2021; used
with Wanda's scores in RIA, Zhang et al., 2024).

An N:M pattern keeps N of every M consecutive inputs of each row. When two inputs that every
row needs fall into one group, each row must drop one of them; reordering the inputs first,
so that the groups are formed over the order, spreads such inputs over the groups. The order
is chosen to raise the score an N:M mask keeps, sum over rows and groups of the N highest
scores, by a local search. The inputs are first dealt out by their total score in a snake
(the G strongest go to the G groups, one each). Then, each round, the groups are put in
disjoint random pairs and every pair trades the one input each that raises the kept score
most, if any does (all M² trades are scored at once: leaving an input out of a group and
adding another changes its top-N sum in closed form), for at most `rounds` rounds or until a
round gains no more than `tolerance` of the kept score. The inputs' own order is kept unless
the search strictly gains on it.

A hardware N:M kernel then reads the inputs in this order (a gather, or folded into the layer
before); the sparse layer stores it beside the mask.
"""

from __future__ import annotations

import torch

from .masks import NM

DEFAULT_ROUNDS = 30
_CHUNK = 1 << 24  # entries of one slice of trade terms (64 MiB of float32)


def _without_each(groups: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For groups [..., m]: with each input left out in turn, the sum of the N highest scores
    left and the N-th highest left ([..., m] each). Adding a score b to such a group then
    keeps sum + max(0, b − N-th)."""
    ranked, index = groups.sort(dim=-1, descending=True, stable=True)
    top = ranked[..., :n].sum(-1, keepdim=True)
    nth, next_ = ranked[..., n - 1:n], ranked[..., n:n + 1]
    in_top = index.argsort(dim=-1) < n
    return torch.where(in_top, top - groups + next_, top), torch.where(in_top, next_, nth)


def _trade_scores(scores: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                  n: int) -> torch.Tensor:
    """[pairs, m, m]: the score two groups' masks keep (summed over rows) once input i of the
    first (columns [pairs, m]) and input j of the second trade places; rows are taken a
    slice at a time, so that the [rows, pairs, m, m] terms stay under `_CHUNK` entries."""
    pairs, m = first.shape
    step = max(1, _CHUNK // (pairs * m * m))
    total = scores.new_zeros(pairs, m, m)
    for part in scores.split(step):
        a, b = part[:, first], part[:, second]  # [rows, pairs, m]
        sum_a, nth_a = _without_each(a, n)
        sum_b, nth_b = _without_each(b, n)
        total += (sum_a[..., :, None] + (b[..., None, :] - nth_a[..., :, None]).clamp_min(0)
                  + sum_b[..., None, :] + (a[..., :, None] - nth_b[..., None, :]).clamp_min(0)
                  ).sum(0)
    return total


def kept_score(scores: torch.Tensor, nm: NM, order: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows and groups of the N highest scores of each group of M inputs (in `order`;
    default the inputs' own)."""
    n, m = nm
    s = scores if order is None else scores[:, order]
    return s.reshape(s.shape[0], -1, m).topk(n, dim=-1).values.sum()


def _snake(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Inputs by total score dealt out to the groups back and forth: group g holds the g-th
    strongest, the (2G−1−g)-th, the 2G+g-th, …"""
    groups = scores.shape[1] // m
    rank = scores.sum(0).argsort(descending=True, stable=True).view(m, groups)
    rank[1::2] = rank[1::2].flip(1)
    return rank.T.reshape(-1)


@torch.no_grad()
def nm_input_order(scores: torch.Tensor, nm: NM, rounds: int = DEFAULT_ROUNDS,
                   seed: int = 0, tolerance: float = 1e-6) -> torch.Tensor:
    """An order of the columns of `scores` ([rows, cols], cols a multiple of M) whose N:M mask
    keeps at least as much score as the snake's, and more than the columns' own order (else
    their own order).

    Returns:
        int64 [cols]: a permutation; group k is ``order[k·M:(k+1)·M]``.
    """
    n, m = nm
    scores = scores.detach().float()
    cols = scores.shape[1]
    groups = cols // m
    identity = torch.arange(cols, device=scores.device)
    if groups < 2:
        return identity
    own = float(kept_score(scores, nm))
    order = _snake(scores, m)
    if kept_score(scores, nm, order) <= own:
        order = identity.clone()
    gen = torch.Generator().manual_seed(seed)
    total = float(kept_score(scores, nm, order))
    grouped = order.view(groups, m)
    for _ in range(rounds):
        pairs = torch.randperm(groups, generator=gen)[: groups - groups % 2].view(-1, 2)
        pairs = pairs.to(scores.device)
        first, second = grouped[pairs[:, 0]], grouped[pairs[:, 1]]  # columns [pairs, m]
        now = scores[:, first].topk(n, dim=-1).values.sum((0, -1)) \
            + scores[:, second].topk(n, dim=-1).values.sum((0, -1))
        best, trade = _trade_scores(scores, first, second, n).flatten(1).max(dim=1)
        better = (best - now).clamp_min(0)
        gain = float(better.sum())
        if gain <= tolerance * total:
            break
        rows = (better > 0).nonzero().squeeze(1)
        i, j = trade[rows] // m, trade[rows] % m
        grouped[pairs[rows, 0], i], grouped[pairs[rows, 1], j] = second[rows, j], first[rows, i]
        total += gain
    return order if float(kept_score(scores, nm, order)) > own else identity
