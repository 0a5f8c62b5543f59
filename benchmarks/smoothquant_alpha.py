"""SmoothQuant W8A8 on MiniLM: quality and fidelity per migration strength `alpha`, on STS-B
dev and on STS-B train pairs (other STS data than the dev split the quantization suite uses).

``python -m benchmarks.smoothquant_alpha [--alphas auto,0.5,0.8] [--pairs 1500]``

An alpha is a number in [0, 1], ``auto`` (searched per layer, the default) or ``none``.

Calibration: random sentences of STS-B train, the recipe default (`samples: auto`: until they
hold 32,768 real tokens; the stored file before session 19 used 128). "train" is evaluated
on `--pairs` evenly spaced train pairs. Writes ``benchmarks/results/smoothquant_alpha.json``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from mmcompress import compress
from mmcompress.data import load_data
from mmcompress.evaluation.evaluate import quality
from mmcompress.model_specs import load_model

from .configs import DATA_ROOT
from .results_file import store

RESULTS = Path(__file__).resolve().parent / "results" / "smoothquant_alpha.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.smoothquant_alpha")
    p.add_argument("--alphas", default="auto,0.5,0.8")
    p.add_argument("--pairs", type=int, default=1500)
    args = p.parse_args(argv)
    base = load_model("minilm", progress=False)
    train = load_data(DATA_ROOT / "stsb" / "sts-train.csv")
    sets = {"dev": load_data(DATA_ROOT / "stsb" / "sts-dev.csv"),
            "train": train.head(args.pairs)}
    refs = {name: quality(base, data) for name, data in sets.items()}
    rows = []
    for alpha in (_alpha(a) for a in args.alphas.split(",")):
        recipe = {"stages": [{"quantize": {"method": "smoothquant", "alpha": alpha}}],
                  "evaluate": {"metrics": ["size_bytes"], "max_samples": 8}}
        result = compress(copy.deepcopy(base), recipe, data=train, progress=False)
        adapter, summary = result.adapter, result.report["stages"][0]["summary"]
        for name, data in sets.items():
            q = quality(adapter, data, refs[name].embeddings).metrics
            fp32 = refs[name].metrics["stsb_spearman"]
            rows.append({"alpha": alpha, "data": name, "fp32": round(fp32, 4),
                         "w8a8": round(q["stsb_spearman"], 4),
                         "loss": round(fp32 - q["stsb_spearman"], 4),
                         "fidelity_cosine": round(q["fidelity_cosine"], 4),
                         **{k: v for k, v in summary.items() if k.startswith("alpha_")}})
            print(rows[-1], flush=True)
    store(RESULTS, rows)


def _alpha(text: str) -> float | str | None:
    text = text.strip().lower()
    return text if text == "auto" else None if text == "none" else float(text)


if __name__ == "__main__":
    main()
