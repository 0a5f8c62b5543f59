"""Quality per task: each evaluator returns metrics and the embeddings behind them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..adapters import Adapter
from ..data import Dataset
from .metrics import class_embeddings, retrieval_recall, spearman, zeroshot_top1
from .multimodal import eval_multimodal

Embeddings = dict[str, torch.Tensor]
TaskResult = tuple[dict[str, float], Embeddings]


def _images(adapter: Adapter, data: Dataset, progress: bool) -> torch.Tensor:
    return adapter.encode_images(data.decoded_images(), progress=progress)


def eval_classification(adapter: Adapter, data: Dataset, progress: bool) -> TaskResult:
    """Classifiers (adapters with `classify`) report `top1`; dual encoders `zeroshot_top1`."""
    if hasattr(adapter, "classify"):
        logits = adapter.classify(data.decoded_images(), progress=progress)
        top1 = float((logits.argmax(1) == adapter.label_indices(data)).float().mean())
        return {"top1": top1}, {"logits": logits}
    image = _images(adapter, data, progress)
    prompts = adapter.encode_texts(data.all_texts(), progress=progress)
    classes = class_embeddings(prompts, len(data.class_names))
    return {"zeroshot_top1": zeroshot_top1(image, classes, data.labels)}, {
        "image": image,
        "text": prompts,
    }


def eval_retrieval(adapter: Adapter, data: Dataset, progress: bool) -> TaskResult:
    image = _images(adapter, data, progress)
    text = adapter.encode_texts(data.all_texts(), progress=progress)
    owner = [i for i, caps in enumerate(data.captions) for _ in caps]
    return retrieval_recall(image, text, owner), {"image": image, "text": text}


def eval_sts(adapter: Adapter, data: Dataset, progress: bool) -> TaskResult:
    a = adapter.encode_texts(data.texts, progress=progress)
    b = adapter.encode_texts(data.texts_b, progress=progress)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"stsb_spearman": spearman(cos.tolist(), data.scores)}, {"text": torch.cat([a, b])}


TASK_EVALUATORS: dict[str, Callable[[Adapter, Dataset, bool], TaskResult]] = {
    "classification": eval_classification,
    "retrieval": eval_retrieval,
    "sts": eval_sts,
    "multimodal": eval_multimodal,
}
