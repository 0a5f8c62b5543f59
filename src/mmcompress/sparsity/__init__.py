"""Unstructured pruning algorithms: mask selection (magnitude, Wanda, N:M) and SparseGPT."""

from .masks import NM, global_keep_masks, keep_mask, nm_keep_mask, parse_pattern, pattern_name
from .sparsegpt import sparsegpt_prune

__all__ = ["NM", "global_keep_masks", "keep_mask", "nm_keep_mask", "parse_pattern",
           "pattern_name", "sparsegpt_prune"]
