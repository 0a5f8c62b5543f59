"""SmoothQuant W8A8 on MiniLM: quality and fidelity per migration strength `alpha`, on STS-B
dev and on held-out STS-B train pairs (other STS data than the dev split the quantization
suite uses).

``python -m benchmarks.smoothquant_alpha [--alphas auto,0.5,0.8] [--fold 0]``

An alpha is a number in [0, 1], ``auto`` (searched per layer, the default) or ``none``.

Calibration: random sentences of three quarters of STS-B train (`benchmarks.sts_heldout`,
`--fold`), the recipe default (`samples: auto`: until they hold 32,768 real tokens).
"heldout" is evaluated on the fourth quarter (1,437 pairs), which calibration never sees.
Writes ``benchmarks/results/smoothquant_alpha.json``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from mmcompress import compress
from mmcompress.data import load_data
from mmcompress.evaluation.evaluate import quality
from mmcompress.model_specs import load_model

from .configs import DATA_ROOT
from .results_file import store
from .sts_heldout import split

RESULTS = Path(__file__).resolve().parent / "results" / "smoothquant_alpha.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.smoothquant_alpha")
    p.add_argument("--alphas", default="auto,0.5,0.8")
    p.add_argument("--fold", type=int, default=0, choices=range(4),
                   help="the quarter of STS-B train held out (benchmarks.sts_heldout)")
    args = p.parse_args(argv)
    base = load_model("minilm", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        calib_path, heldout_path = split(Path(tmp), fold=args.fold)
        calib, heldout = load_data(calib_path), load_data(heldout_path)
    sets = {"dev": load_data(DATA_ROOT / "stsb" / "sts-dev.csv"), "heldout": heldout}
    refs = {name: quality(base, data) for name, data in sets.items()}
    rows = []
    for alpha in (_alpha(a) for a in args.alphas.split(",")):
        recipe = {"stages": [{"quantize": {"method": "smoothquant", "alpha": alpha}}],
                  "evaluate": {"metrics": ["size_bytes"], "max_samples": 8}}
        result = compress(copy.deepcopy(base), recipe, data=calib, progress=False)
        adapter, summary = result.adapter, result.report["stages"][0]["summary"]
        for name, data in sets.items():
            q = quality(adapter, data, refs[name].embeddings).metrics
            fp32 = refs[name].metrics["stsb_spearman"]
            rows.append({"alpha": alpha, "data": name, "fold": args.fold, "fp32": round(fp32, 4),
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
