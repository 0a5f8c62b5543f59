"""Saved size of unstructured sparsity, alone and with int8: whole model and pruned layers.

``python -m benchmarks.sparse_size [--models minilm,random:clip-vit-base-patch32]
[--sparsity 0.5]``

Each model's linear layers (every tower) are pruned by magnitude (the size depends only on the
number of kept weights and the storage format, not on which weights are kept), then, in a
second row, quantized to int8 per channel in the same recipe (embedding tables too). The last
two rows prune the embedding tables as well (``embeddings: true``). Sizes are bytes of
``model.safetensors``; "pruned layers" counts only the tensors of the pruned layers, against
their fp32 weights and biases. With dense tables the whole-model ratio depends on how much of
the model they are (half of MiniLM).
Writes ``benchmarks/results/sparse_size.json``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from torch import nn

from mmcompress import compress
from mmcompress.evaluation.evaluate import saved_size_bytes
from mmcompress.model_specs import load_model

from .results_file import store

RESULTS = Path(__file__).resolve().parent / "results" / "sparse_size.json"


def _layer_bytes(model: nn.Module, names: list[str]) -> int:
    """Bytes of the named modules' tensors as saved (their state dicts: parameters and
    persistent buffers; an index rebuilt at load time is not saved, so not counted)."""
    return sum(t.numel() * t.element_size() for n in names
               for t in model.get_submodule(n).state_dict(keep_vars=True).values())


def measure(spec: str, sparsity: float) -> list[dict]:
    dense = load_model(spec, progress=False)
    dense_total = saved_size_bytes(dense.model)
    int8 = {"quantize": {"method": "rtn", "bits": 8}}
    rows = []
    for tables in (False, True):
        kinds = (nn.Linear, nn.Embedding) if tables else (nn.Linear,)
        names = [n for n, m in dense.model.named_modules() if isinstance(m, kinds)]
        dense_layers = _layer_bytes(dense.model, names)
        prune = {"prune": {"method": "magnitude", "sparsity": sparsity, "embeddings": tables}}
        for name, stages in (("sparse fp32", [prune]), ("sparse + int8", [prune, int8])):
            recipe = {"stages": stages,
                      "evaluate": {"metrics": ["size_bytes"], "max_samples": 8}}
            result = compress(copy.deepcopy(dense), recipe,
                              data="demo" if spec.startswith("random:") else None,
                              progress=False)
            model = result.adapter.model
            total = saved_size_bytes(model)
            rows.append({
                "model": spec, "config": name, "embeddings_pruned": tables,
                "sparsity": sparsity, "size_bytes": total,
                "size_ratio": round(total / dense_total, 4),
                "pruned_layers_ratio": round(_layer_bytes(model, names) / dense_layers, 4),
                "pruned_share_of_dense": round(dense_layers / dense_total, 4),
            })
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sparse_size", description=__doc__)
    p.add_argument("--models", default="minilm,random:clip-vit-base-patch32")
    p.add_argument("--sparsity", type=float, default=0.5)
    args = p.parse_args(argv)
    rows = [r for spec in args.models.split(",") for r in measure(spec.strip(), args.sparsity)]
    store(RESULTS, rows)
    print(f"{'model':<32}{'config':<16}{'tables':>7}{'model ×dense':>14}"
          f"{'pruned layers ×dense':>22}")
    for r in rows:
        print(f"{r['model']:<32}{r['config']:<16}{str(r['embeddings_pruned']):>7}"
              f"{r['size_ratio']:>14.3f}{r['pruned_layers_ratio']:>22.3f}")


if __name__ == "__main__":
    main()
