"""Quality vs sparsity of magnitude, Wanda and SparseGPT: a sentence encoder on STS, or
lit-cifar zero-shot.

``python -m benchmarks.prune_unstructured OUT.json [--model minilm|lit-cifar] [--calib TRAIN]
[--eval TEST] [--samples 2048|auto] [--by-source] [--ignore MODULES] [--targets MODULES]
[--methods magnitude,wanda,sparsegpt,admm,wanda-noswap,wanda-seq,wanda-row,wanda-owl,
sparsegpt-layer,sparsegpt-asym,sparsegpt-norefit,sparsegpt-bias,wanda-bn]
[--settings 0.5,0.6,0.7,2:4] [--embeddings] [--threads 2] [--update] [--own-order]``

Calibrates on one split (STS-B train, or lit-cifar-train) and evaluates on another (STS-B dev,
or lit-cifar-eval), so calibration never sees the evaluation examples. Each row prunes a fresh
copy of the dense model (MiniLM: every encoder linear layer; lit-cifar: every layer of both
towers but those in ``--ignore``; ``--targets`` prunes only the modules it selects, in the
recipe's selection grammar, e.g. ``re:intermediate``) and reports the metric (Spearman, or
zero-shot top-1), its loss against the dense model, embedding fidelity, the pruning time and
the size of the saved weights; ``loss_ci95`` is a paired bootstrap interval of the loss over
resampled evaluation pairs or images (how far it could move on another sample like these).
``--by-source`` adds each row's loss within every source of the STS pairs (``loss_by_source``:
MSRvid, images, headlines, ...). Method suffixes select options (see `_stage`). With
``--embeddings`` the embedding tables are pruned too (by magnitude, row by row, whatever the
method), which is what takes the whole model's size below 0.6× at 50%. ``--own-order`` forms
every method's N:M groups over each layer's own inputs (`permute: false`), as all did by
default before session 32 (Wanda, SparseGPT and ADMM now choose an order per layer).

2,048 calibration sentences by default: STS sentences are short (about 14 tokens), so 512
give Wanda and SparseGPT only ~7k tokens of statistics (2,048: ~29k). On 1,437 held-out STS-B
*train* pairs (calibrated on the other train pairs; dev was not used to choose), 2,048 lost
less in three of four rows at 60% / 2:4: Wanda 0.0120 / 0.0220 -> 0.0117 / 0.0208, SparseGPT
0.0167 / 0.0147 -> 0.0138 / 0.0152 (results/prune_unstructured_heldout_512.json and
prune_unstructured_heldout.json, 2 threads).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch

from mmcompress.data import Dataset, load_data
from mmcompress.evaluation.evaluate import quality, saved_size_bytes
from mmcompress.model_specs import load_model

from .results_file import load, store
from .stages import apply_stages
from .stats import metric_difference_interval, sts_loss_by_group

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


VARIANTS: dict[str, dict[str, Any]] = {
    "owl": {"layer_sparsity": "owl"},
    "sens": {"layer_sparsity": "sensitivity"},
    "asym": {"asymmetric": True},
    "oneshot": {"sequential": False},
    "seq": {"sequential": True},
    "row": {"comparison": "row"},
    "layer": {"comparison": "layer"},
    "swap": {"swaps": 200},
    "noswap": {"swaps": 0},
    "refit": {"refit": True},
    "norefit": {"refit": False},
    "bias": {"bias_correction": True},
    "b32": {"block_size": 32},
    "b512": {"block_size": 512},
    "damp10": {"damp": 0.1},
    "damp001": {"damp": 0.001},
    "perm": {"permute": True},
    "act": {"act_order": True},
}


def _stage(method: str, setting: str, embeddings: bool = False,
           ignore: list[str] | None = None, targets: list[str] | None = None,
           own_order: bool = False) -> dict[str, Any]:
    """Prune settings of one row: ``NAME[-VARIANT...]``, where ``-owl`` sets OWL's sparsity per
    block (`layer_sparsity: owl`), ``-asym`` sets `asymmetric: true`, ``-oneshot`` sets
    `sequential: false` (every block's statistics from the unpruned model), ``-sens``
    `layer_sparsity: sensitivity` (a sparsity per layer from measured sensitivity), ``-seq``
    `sequential: true` (each block's after the blocks before it are pruned) and ``-row``
    `comparison: row` (each output row keeps its share, convolutions too), ``-layer``
    `comparison: layer` (the whole layer's weights compete; SparseGPT: each block's), ``-swap``
    `swaps: 200` (refine each mask by swaps; Wanda's default), ``-noswap`` `swaps: 0` (Wanda's
    mask as in the paper), ``-refit`` `refit: true` (refit the kept
    weights by exact least squares once the mask is chosen; SparseGPT's default) and
    ``-norefit`` `refit: false` (SparseGPT's own update alone, as in the paper), ``-bias``
    `bias_correction: true`, ``-b32`` / ``-b512`` `block_size: 32` / `512`, ``-damp10`` `damp: 0.1`,
    ``-damp001`` `damp: 0.001`, ``-perm`` `permute: true` (N:M groups over a chosen order
    of each layer's inputs) and ``-act`` `act_order: true` (SparseGPT, unstructured). A
    trailing ``-bn`` (handled by `_row`) adds a ``finetune: {method: batchnorm}`` stage after
    pruning. `own_order`: every method's N:M
    groups over each layer's own inputs (`permute: false`, the defaults before session 32)."""
    name, *variants = method.split("-")
    cfg: dict[str, Any] = {"method": name, "embeddings": embeddings}
    if own_order:
        cfg["permute"] = False
    for v in variants:
        cfg.update(VARIANTS[v])
    if ignore:
        cfg["ignore"] = ignore
    if targets:
        cfg["targets"] = targets
    if ":" in setting:
        cfg["pattern"] = setting
    else:
        cfg["sparsity"] = float(setting)
    return cfg


def _row(base, method: str, setting: str, train: Dataset, test: Dataset, reference: dict,
         calib: dict[str, int], dense: dict[str, float], args: argparse.Namespace,
         sources: list[str] | None = None) -> dict[str, Any]:
    adapter = copy.deepcopy(base)
    stages = [{"prune": _stage(method.removesuffix("-bn"), setting, args.embeddings,
                               args.ignore, args.targets, args.own_order)}]
    if method.endswith("-bn"):  # then correct BatchNorm statistics against the dense model
        stages.append({"finetune": {"method": "batchnorm"}})
    (summary, *_), seconds = apply_stages(adapter, stages, train, calib, original=base)
    result = quality(adapter, test, reference)
    metrics, key = result.metrics, dense["metric"]
    by_source = {"loss_by_source": sts_loss_by_group(reference, result.embeddings, test.scores,
                                                     sources)} if sources else {}
    return {
        "method": method,
        "setting": setting,
        "sparsity": summary["sparsity"],
        key: metrics[key],
        "loss": dense[key] - metrics[key],
        "loss_ci95": metric_difference_interval(key, reference, result.embeddings, test),
        "fidelity_cosine": metrics["fidelity_cosine"],
        "prune_seconds": round(seconds, 2),
        "size_ratio": saved_size_bytes(adapter.model) / dense["size_bytes"],
        **{k: summary[k] for k in ("layer_sparsity_range", "tower_sparsity") if k in summary},
        **by_source,
    }


def sts_sources(path: Path, pairs: int) -> list[str]:
    """The source of every pair of an STS Benchmark file (field 2: MSRvid, headlines, ...)."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    if len(rows) != pairs or any(len(r) < 7 for r in rows):
        raise SystemExit(f"error: --by-source needs an STS Benchmark file (7 fields a line, no "
                         f"header); {path} is not one")
    return [r[1] for r in rows]


def _datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """(calibration, evaluation): the given specs, else STS-B train/dev for a sentence encoder
    and lit-cifar-train/eval for lit-cifar."""
    given = (args.calib, args.eval)
    if all(given):
        defaults: tuple = (None, None)
    elif args.model == "lit-cifar":
        from mmcompress.data.cifar import lit_cifar_split

        defaults = lit_cifar_split()
    else:
        defaults = (STSB / "sts-train.csv", STSB / "sts-dev.csv")
    return tuple(load_data(str(g)) if g else (d if isinstance(d, Dataset) else load_data(str(d)))
                 for g, d in zip(given, defaults, strict=True))


def _samples(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", type=Path, help="JSON file to write")
    p.add_argument("--model", default="minilm", help="minilm (STS) or lit-cifar (zero-shot)")
    p.add_argument("--calib", default=None, help="calibration data spec (default: STS-B "
                   "train, or lit-cifar-train)")
    p.add_argument("--eval", default=None, help="evaluation data spec (default: STS-B dev, "
                   "or lit-cifar-eval)")
    p.add_argument("--samples", type=_samples, default=2048, help="calibration examples, or "
                   "'auto' (the recipe default: texts until 32,768 real tokens)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    p.add_argument("--settings", default="0.5,0.6,0.7,2:4", help="sparsities or N:M patterns")
    p.add_argument("--embeddings", action="store_true", help="prune the embedding tables too")
    p.add_argument("--targets", type=lambda v: v.split(","), default=None,
                   help="comma-separated modules to prune (default: every encoder linear layer, "
                   "or every layer of both towers)")
    p.add_argument("--ignore", type=lambda v: v.split(","), default=None,
                   help="comma-separated modules left dense (e.g. a 3-channel stem for 2:4)")
    p.add_argument("--by-source", action="store_true", help="also each row's loss within "
                   "every source of the STS evaluation pairs (MSRvid, headlines, ...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--own-order", action="store_true", help="N:M groups over each layer's own "
                   "inputs for every method (permute: false; the defaults before session 32)")
    p.add_argument("--update", action="store_true", help="replace only the rows run (same "
                   "method and setting) in an existing OUT written with the same settings")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    base = load_model(a.model, progress=False)
    train, test = _datasets(a)
    calib = {"samples": a.samples, "batch_size": a.batch_size}
    sources = sts_sources(Path(a.eval) if a.eval else STSB / "sts-dev.csv", len(test.scores)) \
        if a.by_source else None
    ref = quality(base, test)
    key = "stsb_spearman" if "stsb_spearman" in ref.metrics else "zeroshot_top1"
    dense = {"metric": key, key: ref.metrics[key], "size_bytes": saved_size_bytes(base.model)}
    print(f"dense: {key} {dense[key]:.4f}, {dense['size_bytes']} bytes", flush=True)
    header = (
        f"{'method':<18} {'setting':>7} {key:>14} {'loss':>7} {'loss 95% CI':>17} "
        f"{'fidelity':>9} {'size':>6} {'seconds':>8}"
    )
    print(header, flush=True)
    rows = []
    for method in a.methods.split(","):
        for setting in a.settings.split(","):
            if "-owl" in method and ":" in setting:
                continue  # OWL varies unstructured sparsity; N:M fixes it
            r = _row(base, method, setting, train, test, ref.embeddings, calib, dense, a,
                     sources)
            rows.append(r)
            print(
                f"{method:<18} {setting:>7} {r[key]:>14.4f} {r['loss']:>7.4f} "
                f"{'[{:.4f}, {:.4f}]'.format(*r['loss_ci95']):>17} "
                f"{r['fidelity_cosine']:>9.4f} {r['size_ratio']:>6.3f} {r['prune_seconds']:>8.1f}",
                flush=True,
            )
            if sources:
                print("  loss by source: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in r["loss_by_source"].items()), flush=True)
    out = {"model": a.model, "calibration": a.calib or train.name,
           "evaluation": a.eval or test.name,
           "samples": a.samples, "batch_size": a.batch_size, "embeddings_pruned": a.embeddings,
           "ignored": a.ignore or [], "targets": a.targets, "threads": a.threads,
           **({"by_source": True} if sources else {}),
           **({"own_order": True} if a.own_order else {}), "dense": dense, "rows": rows}
    store(a.out, _merged(load(a.out), out) if a.update else out)


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with the rows of `new` in place of those of the same method and setting (new
    ones appended); refused when the two runs differ in anything but their rows, the last
    digits of the dense metric (another machine's float sums; 1e-4 allowed, `old`'s kept) and
    the dense size by the weights file's metadata (up to 256 bytes: sizes measured before
    saving count it since session 28)."""
    setup = {k for k in (*new, "by_source", "own_order") if k not in ("rows", "dense")}
    dense_old, dense_new = old.get("dense", {}), new["dense"]
    key = dense_new["metric"]
    same_dense = (dense_old.get("metric") == key
                  and abs(dense_old.get("size_bytes", -1e9) - dense_new["size_bytes"]) <= 256
                  and abs(dense_old.get(key, float("inf")) - dense_new[key]) <= 1e-4)
    if not same_dense or {k: old.get(k) for k in setup} != {k: new.get(k) for k in setup}:
        raise SystemExit("error: the existing file was written with other settings (or another "
                         "dense model); run without --update")
    fresh = {(r["method"], r["setting"]): r for r in new["rows"]}
    rows = [fresh.pop((r["method"], r["setting"]), r) for r in old["rows"]]
    return {**old, "rows": rows + list(fresh.values())}


if __name__ == "__main__":
    main()
