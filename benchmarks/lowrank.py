r"""Low-rank factorization benchmark: ``python -m benchmarks.lowrank OUT.json [--parts ...]``.

Parts (each compared with the dense model measured in the same run):

- ``minilm``: STS-B dev Spearman keeping `--param-ratio` (0.7) of the encoder's linear weights,
  for ``svd``, ``svd-whiten`` (asymmetric: fitted to the uncompressed model's outputs, the
  default) and ``svd-whiten-symmetric`` (SVD-LLM's fit to each layer's own weight) with
  ``uniform`` and ``sensitivity`` rank allocation;
  calibration (whitening statistics and sensitivities) uses STS-B *train* sentences only.
  Rows carry 95% paired bootstrap intervals over resampled pairs: ``drop_ci95`` (of the drop
  from dense) and, on sensitivity rows, ``gain_over_uniform_ci95`` (Spearman of the budget
  minus that of uniform ranks, same method); lit-cifar rows the same over resampled images.
- ``lit-cifar``: zero-shot top-1 on ``lit-cifar-eval`` with the same four configurations on
  every linear layer (text tower and image projection), calibrated on ``lit-cifar-train``.
- ``clip``: ``random:clip-vit-base-patch32`` per-tower latency with 50% of each tower's linear
  weights kept (plain SVD, uniform ranks), timed interleaved with the dense model.
- ``resnet``: ResNet-56 top-1 (no fine-tuning) at half the convolution weights, ``tucker`` and
  ``cp`` with both allocations; calibration on the first 400 images of each class of
  cifar10/test, accuracy on the other 4,000. ``--finetune-epochs N`` appends a recovery
  ``finetune`` stage (task loss, random crops and flips, AdamW at ``--finetune-lr`` with 10%
  warm-up then cosine, batch 64, seed 0; the settings of ``benchmarks.training``) trained on
  ``lit-cifar-train`` only, and adds the top-1 after it to each row (``--finetune-dense``:
  the dense model too, as a control for what the recipe gains without factorization;
  ``--batchnorm``: a ``finetune: {method: batchnorm}`` stage right after factoring)::

    OMP_NUM_THREADS=1 python -m benchmarks.lowrank benchmarks/results/lowrank_resnet_ft.json \
        --parts resnet --resnet-configs tucker-sensitivity,tucker-uniform --finetune-epochs 5 \
        --finetune-dense --threads 1 --compress-threads 1

``--update`` rewrites only the parts run in an existing OUT (each part records its command).

Stages run through the registered methods directly (as ``mmcompress.compress`` does), so the
dense model is loaded and evaluated once per part. Prints a table and writes JSON to OUT.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmcompress.data import Dataset, load_data
from mmcompress.evaluation.evaluate import count_params, quality
from mmcompress.evaluation.speed import interleaved_latency_ms
from mmcompress.model_specs import load_model

from .configs import DATA_ROOT
from .results_file import load, store
from .stages import apply_stages
from .stats import metric_difference_interval

STSB = DATA_ROOT / "stsb"
COMPRESS_THREADS = [1]  # set from --compress-threads


def _row(
    name: str, summary: dict, metrics: dict, dense: dict, key: str, seconds: float
) -> dict[str, Any]:
    return {
        "config": name,
        "param_ratio": summary["param_ratio"],
        "factored": summary["modules"],
        "kept_dense": summary["kept_dense"],
        key: round(metrics[key], 4),
        f"{key}_drop": round(dense[key] - metrics[key], 4),
        "fidelity_cosine": round(metrics.get("fidelity_cosine", float("nan")), 4),
        "compress_s": round(seconds, 1),
    }


def _allocations(base, calib: Dataset, test: Dataset, key: str, targets: list[str],
                 args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """`svd` and `svd-whiten`, each with uniform and sensitivity-allocated ranks, at the same
    kept fraction of the targeted linear weights (each of `--param-ratio`'s, given as
    ``target`` when there are several); (dense metrics, rows)."""
    ref = quality(base, test)
    dense = {key: ref.metrics[key]}

    calibration = {"samples": args.calib_samples, "batch_size": args.calib_batch}
    rows = []
    ratios = args.param_ratios
    for param_ratio, method in ((r, m) for r in ratios for m in args.methods.split(",")):
        embeddings = {}
        for allocation in ("uniform", "sensitivity"):
            adapter = copy.deepcopy(base)
            stage = {"lowrank": {"method": method.removesuffix("-symmetric"),
                                 "param_ratio": param_ratio, "allocation": allocation,
                                 "targets": targets}}
            if method.endswith("-symmetric"):  # SVD-LLM's own fit, for comparison
                stage["lowrank"]["asymmetric"] = False
            if args.sensitivity_samples is not None:
                stage["lowrank"]["sensitivity_samples"] = args.sensitivity_samples
            if method.startswith("svd-whiten") and args.bias_correction:
                stage["lowrank"]["bias_correction"] = True
            if method.startswith("svd-whiten") and args.damp is not None:
                stage["lowrank"]["damp"] = args.damp
            (summary,), seconds = apply_stages(adapter, [stage], calib, calibration,
                                               threads=COMPRESS_THREADS[0])
            result = quality(adapter, test, ref.embeddings)
            rows.append(_row(f"{method} {allocation}", summary, result.metrics, dense, key,
                             seconds))
            if len(ratios) > 1:
                rows[-1] = {"target": param_ratio, **rows[-1]}
            embeddings[allocation] = result.embeddings
            # paired bootstrap intervals over resampled pairs (STS) or images (zero-shot)
            rows[-1]["drop_ci95"] = metric_difference_interval(key, ref.embeddings,
                                                               result.embeddings, test)
            if allocation == "sensitivity":
                rows[-1]["gain_over_uniform_ci95"] = metric_difference_interval(
                    key, result.embeddings, embeddings["uniform"], test)
            print(rows[-1], flush=True)
    return dense, rows


def _ratios(args: argparse.Namespace) -> float | list[float]:
    return args.param_ratios[0] if len(args.param_ratios) == 1 else args.param_ratios


def minilm(args: argparse.Namespace) -> dict[str, Any]:
    base = load_model("minilm", progress=False)
    dev = load_data(args.minilm_eval).head(args.max_pairs)
    train = load_data(args.minilm_calib)
    dense, rows = _allocations(base, train, dev, "stsb_spearman", ["text"], args)
    return {
        "data": f"{args.minilm_eval} ({len(dev)} pairs)",
        "calibration": f"{args.minilm_calib}, {args.calib_samples} samples",
        "target_param_ratio": _ratios(args),
        "dense": dense,
        "rows": rows,
    }


def lit_cifar(args: argparse.Namespace) -> dict[str, Any]:
    from mmcompress.data.cifar import lit_cifar_split

    base = load_model("lit-cifar", progress=False)
    calib, test = lit_cifar_split()
    test = test.head(args.max_images)
    dense, rows = _allocations(base, calib, test, "zeroshot_top1", ["text", "projector"],
                               args)
    return {
        "data": f"lit-cifar-eval ({len(test)} images)",
        "calibration": f"lit-cifar-train, {args.calib_samples} samples",
        "target_param_ratio": _ratios(args),
        "scope": "every linear layer (MiniLM text tower and the image projection); the"
                 " ResNet-56 convolutions are the resnet part's",
        "dense": dense,
        "rows": rows,
    }


def clip(args: argparse.Namespace) -> dict[str, Any]:
    dense = load_model("random:clip-vit-base-patch32", progress=False)
    factored = copy.deepcopy(dense)
    stages = [
        {
            "lowrank": {
                "method": "svd",
                "param_ratio": 0.5,
                "allocation": "uniform",
                "targets": [tower],
            }
        }
        for tower in ("vision", "text")
    ]
    summaries, seconds = apply_stages(factored, stages, None, threads=COMPRESS_THREADS[0])
    runs_dense = dense.latency_inputs(args.batch_size)
    runs_lr = factored.latency_inputs(args.batch_size)
    runs = {
        f"{k} {v}": r
        for v, runs_ in (("dense", runs_dense), ("svd", runs_lr))
        for k, r in runs_.items()
    }
    towers = {}
    for threads in [int(t) for t in args.latency_threads.split(",")]:
        torch.set_num_threads(threads)
        ms = interleaved_latency_ms(runs, args.repeats)
        for tower in runs_dense:
            towers[f"{tower} @{threads} threads"] = {
                "dense_ms": round(ms[f"{tower} dense"], 2),
                "svd_ms": round(ms[f"{tower} svd"], 2),
                "speedup": round(ms[f"{tower} dense"] / ms[f"{tower} svd"], 3),
            }
    torch.set_num_threads(args.threads)
    return {
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "latency": "median of interleaved calls (dense and svd alternate), after 3 warm-ups",
        "param_ratio_per_tower": {
            t: s["param_ratio"] for t, s in zip(("vision", "text"), summaries, strict=True)
        },
        "params": {"dense": count_params(dense.model), "svd": count_params(factored.model)},
        "compress_s": round(seconds, 1),
        "towers": towers,
    }


def recovery_stage(epochs: int, lr: float = 1e-3, max_examples: int | None = None
                   ) -> dict[str, Any]:
    """The ResNet recovery `finetune` stage: task loss, crops and flips, AdamW at `lr` with
    10% warm-up, batch 64, on the first `max_examples` training images (all when None)."""
    from .training import stage_recipe

    return stage_recipe({"stage": ("finetune", {"method": "task", "evaluate": False,
                                                 "max_examples": max_examples}),
                         "epochs": epochs, "lr": lr, "batch_size": 64, "augment": True})


def recover(adapter, stage: dict, calib: Dataset, test: Dataset) -> dict[str, Any]:
    """Train `adapter` in place with the `finetune` stage; top-1 on `test` after it."""
    (trained,), seconds = apply_stages(adapter, [stage], calib, threads=COMPRESS_THREADS[0])
    return {"top1_finetuned": round(quality(adapter, test).metrics["top1"], 4),
            "finetune_s": round(seconds, 1),
            "loss_at_epoch_end": [round(e["loss"], 4) for e in trained["epochs"]]}


def resnet(args: argparse.Namespace) -> dict[str, Any]:
    from mmcompress.data.cifar import lit_cifar_split

    base = load_model("resnet56", progress=False)
    calib, test = lit_cifar_split()
    test = test.head(args.max_images)
    ref = quality(base, test)
    dense = {"top1": ref.metrics["top1"]}
    calibration = {"samples": args.calib_samples, "batch_size": 64}
    finetune = None
    if args.finetune_epochs:
        finetune = recovery_stage(args.finetune_epochs, args.finetune_lr, args.finetune_images)
        if args.finetune_dense:  # the same recovery recipe on the dense model: its own gain
            dense.update(recover(copy.deepcopy(base), finetune, calib, test))
            print({"dense": dense}, flush=True)
    rows = []
    for config in args.resnet_configs.split(","):
        method, allocation = config.strip().split("-")
        adapter = copy.deepcopy(base)
        stage = {
            "lowrank": {
                "method": method,
                "param_ratio": 0.5,
                "allocation": allocation,
                "targets": ["vision"],
            }
        }
        stages = [stage] + ([{"finetune": {"method": "batchnorm"}}] if args.batchnorm else [])
        (summary, *_), seconds = apply_stages(adapter, stages, calib, calibration, base,
                                              threads=COMPRESS_THREADS[0])
        metrics = quality(adapter, test, ref.embeddings).metrics
        name = f"{method} {allocation}" + (" + batchnorm" if args.batchnorm else "")
        rows.append(_row(name, summary, metrics, dense, "top1", seconds))
        if finetune is not None:
            rows[-1].update(recover(adapter, finetune, calib, test))
            rows[-1]["top1_finetuned_drop"] = round(dense["top1"] - rows[-1]["top1_finetuned"], 4)
        print(rows[-1], flush=True)
    out = {
        "data": f"lit-cifar-eval ({len(test)} images)",
        "calibration": "lit-cifar-train",
        "dense": dense,
        "rows": rows,
    }
    if finetune is not None:
        out["finetune"] = {"data": f"lit-cifar-train ({len(calib)} images)",
                           **finetune["finetune"]}
    return out


PARTS = {"minilm": minilm, "lit-cifar": lit_cifar, "clip": clip, "resnet": resnet}


def _table(results: dict[str, Any]) -> str:
    lines = []
    keys = {"minilm": "stsb_spearman", "lit-cifar": "zeroshot_top1", "resnet": "top1"}
    for part, key in keys.items():
        if part in results:
            r = results[part]
            lines += [
                f"\n{part}: dense {key} {r['dense'][key]:.4f} on {r['data']}",
                f"{'config':<24}{'params kept':>12}{key:>15}{'drop':>9}{'fidelity':>10}",
            ]
            lines += [
                f"{x['config']:<24}{x['param_ratio']:>12.3f}{x[key]:>15.4f}"
                f"{x[key + '_drop']:>9.4f}{x['fidelity_cosine']:>10.4f}"
                + (f"  fine-tuned {x[key + '_finetuned']:.4f} ({x['finetune_s']} s)"
                   if key + "_finetuned" in x else "")
                for x in r["rows"]
            ]
    if "clip" in results:
        r = results["clip"]
        lines += [
            f"\nclip (random weights, batch {r['batch_size']}): kept {r['param_ratio_per_tower']}",
            f"{'tower':<22}{'dense ms':>10}{'svd ms':>10}{'speedup':>9}",
        ]
        lines += [
            f"{t:<22}{v['dense_ms']:>10.1f}{v['svd_ms']:>10.1f}{v['speedup']:>9.2f}"
            for t, v in r["towers"].items()
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.lowrank",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="JSON file to write")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated, of {','.join(PARTS)}")
    p.add_argument("--threads", type=int, default=2, help="threads for evaluation and latency")
    p.add_argument(
        "--compress-threads",
        type=int,
        default=1,
        help="threads while compressing (LAPACK calls crawl on an oversubscribed machine)",
    )
    p.add_argument(
        "--resnet-configs", default="tucker-uniform,tucker-sensitivity,cp-uniform,cp-sensitivity"
    )
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="resnet: recovery fine-tuning epochs on lit-cifar-train (0: none)")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="resnet: peak AdamW lr")
    p.add_argument("--batchnorm", action="store_true",
                   help="resnet: correct BatchNorm statistics after factoring (finetune: "
                   "{method: batchnorm}), before any recovery fine-tuning")
    p.add_argument("--finetune-dense", action="store_true",
                   help="resnet: fine-tune the dense model with the same stage too")
    p.add_argument("--finetune-images", type=int, default=None,
                   help="resnet: fine-tune on N evenly spaced training images (sizing runs)")
    p.add_argument("--param-ratio", default="0.7",
                   help="minilm, lit-cifar: fraction of the weights kept (comma-separated: one "
                   "set of rows per value)")
    p.add_argument("--max-pairs", type=int, default=None, help="minilm: first N dev pairs")
    p.add_argument("--minilm-eval", default=str(STSB / "sts-dev.csv"), help="minilm: STS pairs")
    p.add_argument("--minilm-calib", default=str(STSB / "sts-train.csv"),
                   help="minilm: calibration sentences (never the evaluation pairs)")
    p.add_argument("--max-images", type=int, default=None, help="resnet: first N test images")
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--methods", default="svd,svd-whiten,svd-whiten-symmetric",
                   help="minilm, lit-cifar: linear methods compared (svd-whiten-symmetric: "
                   "svd-whiten with asymmetric: false)")
    p.add_argument("--sensitivity-samples", type=int, default=None,
                   help="minilm, lit-cifar: examples probing each layer (default: the method's)")
    p.add_argument("--bias-correction", action="store_true",
                   help="svd-whiten rows with bias_correction: true")
    p.add_argument("--damp", type=float, default=None,
                   help="svd-whiten rows: XᵀX damping (default: the method's)")
    p.add_argument("--update", action="store_true",
                   help="replace only the parts run in an existing OUT, keeping the others")
    p.add_argument("--calib-batch", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8, help="clip: latency batch")
    p.add_argument("--repeats", type=int, default=20, help="clip: timed calls per variant")
    p.add_argument("--latency-threads", default="2", help="clip: thread counts to time, e.g. 1,2")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    args.param_ratios = [float(r) for r in args.param_ratio.split(",")]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"error: unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    torch.set_num_threads(args.threads)
    COMPRESS_THREADS[0] = args.compress_threads
    command = " ".join(["python -m benchmarks.lowrank", *sys.argv[1:]])
    results: dict[str, Any] = {
        "command": command,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if args.update:  # the run line stays the first run's; each part records its own
        results = load(args.out, results)
    for part in parts:
        start = time.perf_counter()
        results[part] = PARTS[part](args)
        results[part]["part_s"] = round(time.perf_counter() - start, 1)
        results[part].update(command=command, threads=args.threads, torch=torch.__version__)
    store(args.out, results)
    print(_table(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
