"""Quality of fusion classifiers: accuracy as given, and on complete examples with modalities
taken away (each one missing, each one alone)."""

from __future__ import annotations

import torch

from ..data import Dataset

MODALITIES = ("image", "text", "audio")
#: metric key → modalities removed from every complete example
CONDITIONS = {
    "top1_all": (),
    **{f"top1_no_{m}": (m,) for m in MODALITIES},
    **{f"top1_{m}_only": tuple(o for o in MODALITIES if o != m) for m in MODALITIES},
}


def complete_examples(data: Dataset) -> list[int]:
    """Indices of examples that hold every modality."""
    columns = [data.images, data.texts, data.audio]
    return [i for i in range(len(data))
            if all(c and c[i] is not None and (not isinstance(c[i], str) or c[i])
                   for c in columns)]


def eval_multimodal(adapter, data: Dataset, progress: bool) -> tuple[dict, dict]:
    """`top1` on the examples as given; `top1_all`, `top1_no_<m>`, `top1_<m>_only` on the
    complete ones. Fidelity compares the fused scores of the examples as given."""
    labels = torch.as_tensor(data.labels)
    logits = adapter.classify(data, progress=progress)
    metrics = {"top1": float((logits.argmax(1) == labels).float().mean())}
    complete = complete_examples(data)
    if complete:
        for key, drop in CONDITIONS.items():
            pred = adapter.classify(data, complete, drop=drop).argmax(1)
            metrics[key] = float((pred == labels[complete]).float().mean())
    return metrics, {"logits": logits}
