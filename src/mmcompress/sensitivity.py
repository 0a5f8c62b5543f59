"""How much compressing each tower, and each layer, alone hurts the model.

A probe swaps modules for compressed versions, measures quality and fidelity on a small slice
of the data against the uncompressed model, and swaps the originals back (no copies of the
model are made).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .adapters import Adapter
from .data import Dataset
from .errors import DataError
from .evaluation.evaluate import QUALITY, Evaluation, quality
from .evaluation.metrics import similarity_fidelity
from .modules.replace import replace_modules
from .progress import progress_bar
from .selection import tower_of

Compress = Callable[[str, nn.Module], nn.Module]


@dataclass
class Probe:
    """Quality of the model with some modules compressed, against the uncompressed one."""

    adapter: Adapter
    data: Dataset
    reference: Evaluation

    @classmethod
    def on(cls, adapter: Adapter, data: Dataset, max_samples: int = 64) -> Probe:
        small = data.head(max_samples)
        return cls(adapter, small, quality(adapter, small))

    @classmethod
    def reaching(cls, adapter: Adapter, data: Dataset, max_samples: int,
                 modules: dict[str, nn.Module], purpose: str) -> Probe:
        """`on`, after checking that the probe's examples run every one of `modules`: one
        they never run would look free to compress (swapping it changes nothing).

        Raises:
            DataError: naming the first module the examples never run.
        """
        seen: set[str] = set()
        handles = [m.register_forward_hook(lambda *_, n=n: seen.add(n))
                   for n, m in modules.items()]
        try:
            probe = cls.on(adapter, data, max_samples)
        finally:
            for h in handles:
                h.remove()
        unseen = [n for n in modules if n not in seen]
        if unseen:
            raise DataError(f"calibration never reached layer {unseen[0]!r} while measuring "
                            f"{purpose} ({max_samples} examples); check the data and targets")
        return probe

    def measure(self, modules: dict[str, nn.Module], compress: Compress) -> dict[str, float]:
        """Metrics with `modules` compressed: task metric drops and ``1 - fidelity``."""
        replace_modules(self.adapter.model, {n: compress(n, m) for n, m in modules.items()})
        try:
            after = quality(self.adapter, self.data, self.reference.embeddings)
        finally:
            replace_modules(self.adapter.model, modules)
        out = {f"{k}_drop": self.reference.metrics[k] - v
               for k, v in after.metrics.items() if k in QUALITY}
        out["fidelity_loss"] = 1.0 - after.metrics["fidelity_cosine"]
        out["similarity_loss"] = 1.0 - similarity_fidelity(after.embeddings,
                                                           self.reference.embeddings)
        return out


def tower_sensitivity(probe: Probe, modules: dict[str, nn.Module],
                      compress: Compress) -> dict[str, dict[str, float]]:
    """Per tower: metrics with only that tower's selected modules compressed."""
    towers = probe.adapter.towers()
    by_tower: dict[str, dict[str, nn.Module]] = {}
    for name, module in modules.items():
        by_tower.setdefault(tower_of(name, towers) or "other", {})[name] = module
    return {t: probe.measure(mods, compress) for t, mods in by_tower.items()}


def layer_sensitivity(probe: Probe, modules: dict[str, nn.Module], compress: Compress,
                      progress: bool = True) -> dict[str, float]:
    """Per layer: fidelity loss (1 − cosine to the uncompressed model) with only it compressed."""
    bar = progress_bar(modules.items(), desc="layer sensitivity", enabled=progress)
    return {n: probe.measure({n: m}, compress)["fidelity_loss"] for n, m in bar}
