"""Structured pruning: dependency groups per architecture, importance scores, allocation."""

from .groups import LayerList, UnitGroup, prune_units, remove_layers
from .specs import PruningStructure, find_structure

__all__ = ["LayerList", "PruningStructure", "UnitGroup", "find_structure", "prune_units",
           "remove_layers"]
