"""The pruning rows of docs/benchmarks.md, from the pruning benchmarks' stored results.

Each table names the JSON file under ``benchmarks/results/`` it reads; docs/method-results.md
(`benchmarks.method_results`) renders every row of those files beside the command that wrote
it. This page keeps what the pruning issue asks for: quality against sparsity per method,
saved size, and the latency of structured pruning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcompress.report import markdown_table

from .results_file import load

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("magnitude", "wanda", "sparsegpt", "admm")  # each method's defaults
SETTINGS = ("0.5", "0.6", "0.7", "2:4")


def _stored(name: str) -> Any:
    path = RESULTS / name
    return load(path) if path.is_file() else None


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _by_method(results: dict[str, Any] | None, suffix: str = "",
               key: str = "loss") -> dict[tuple[str, str], float]:
    """{(method, setting): `key`} of the stored rows named METHOD + `suffix` (none without
    `results`)."""
    rows = results["rows"] if results else []
    return {(r["method"].removesuffix(suffix), r["setting"]): r[key] for r in rows
            if r["method"].endswith(suffix)}


def _quality_table(results: dict[str, Any], folds: dict[str, Any] | None,
                   suffix: str = "") -> str:
    """Loss of each method's defaults (stored as METHOD + `suffix`) at every setting (and, with
    `folds`, the mean over the held-out quarters at the settings they measured)."""
    loss, held = _by_method(results, suffix), _by_method(folds, key="loss_mean")
    held_settings = [s for s in SETTINGS if any(k[1] == s for k in held)]
    header = ["method", *(f"{s} loss" for s in SETTINGS)]
    header += [f"held-out {s}" for s in held_settings]
    rows = [[m, *(_loss(loss.get((m, s))) for s in SETTINGS),
             *(_loss(held.get((m, s))) for s in held_settings)] for m in METHODS]
    return markdown_table(header, rows)


def _permute_table(pairs: list[tuple[str, Any, Any, str]]) -> str:
    """2:4 loss of each method's defaults with N:M groups over each layer's own inputs →
    over the order the method chose (its default since session 32), one column per (label,
    stored `--own-order` rows, stored defaults, key of the loss) in `pairs`; a folds file gives
    the mean over the held-out quarters."""
    columns = [(label, _by_method(own, key=key), _by_method(chosen, key=key))
               for label, own, chosen, key in pairs]
    rows = [[m, *(f"{_loss(before.get((m, '2:4')))} → {_loss(after.get((m, '2:4')))}"
                  for _, before, after in columns)]
            for m in METHODS if any((m, "2:4") in before for _, before, _ in columns)]
    return markdown_table(["method", *(label for label, _, _ in columns)], rows)


def _size_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["model", "saved as", "embedding tables pruned", "sparsity", "size ×dense"],
        [[r["model"], r["config"], "yes" if r["embeddings_pruned"] else "no",
          f"{r['sparsity']:.2f}", f"{r['size_ratio']:.3f}"] for r in rows])


def _removed(summary: dict[str, Any], tower: str) -> str:
    """'heads 0.5 + neurons 0.5': the share of each kind of unit a run removed from `tower`."""
    kinds = summary["removed"][tower]
    return " + ".join(f"{kind} {k['removed'] / k['of']:.2g}" for kind, k in kinds.items())


def _structured_table(results: dict[str, Any]) -> str:
    """Latency before and after removing units, dense timed in the same run."""
    threads = str(results["threads"])
    rows = []
    clip = results["clip"]
    for tower, what in (("vision", "image"), ("text", "text")):
        t = clip["by_threads"][threads]["towers"][tower]
        rows.append([f"random CLIP ViT-B/32, {what} tower", _removed(clip["summary"], tower),
                     f"{1 - t['params']['removed_ratio']:.3f}", "— (random weights)",
                     f"{t['dense_ms']:.1f} → {t['pruned_ms']:.1f}", f"{t['speedup']:.2f}×"])
    minilm = results["minilm"]
    lat, dense = minilm["latency"][threads], minilm["dense"]
    # latency was timed on one neurons-0.5 model; every neurons-0.5 variant has its widths
    name = "neurons 0.5 (activation)"
    variant = minilm["variants"][name]
    rows.append(["MiniLM", name, f"{variant['params'] / dense['params']:.3f}",
                 f"STS-B {dense['stsb_spearman']:.4f} → {variant['stsb_spearman']:.4f}",
                 f"{lat['latency_ms']['dense']:.1f} → {lat['latency_ms']['pruned']:.1f}",
                 f"{lat['speedup']:.2f}×"])
    resnet = results["resnet56"]
    lat = resnet["latency"][threads]
    for run in resnet["runs"]:
        if run["scope"] != "tower" or run["importance"] != "magnitude":
            continue
        key = f"channels {run['channels']:g}"
        quality = (f"top-1 {resnet['dense']['top1']:.3f} → {run['top1']:.3f} one shot, "
                   f"{run['top1_batchnorm']:.3f} BatchNorm-corrected")
        if "top1_finetuned" in run:
            quality += f", {run['top1_finetuned']:.3f} fine-tuned"
        rows.append(["CIFAR ResNet-56", f"inner {key} (magnitude)",
                     f"{run['params'] / resnet['dense']['params']:.3f}", quality,
                     f"{lat['latency_ms']['dense']:.1f} → {lat['latency_ms'][key]:.1f}",
                     f"{lat['speedup'][key]:.2f}×"])
    return markdown_table(["model", "removed", "params kept", "quality", "latency ms",
                           "speed-up"], rows)


def allocation_runs(section: dict[str, Any]) -> dict[tuple[float, str, str], dict[str, Any]]:
    """The runs of a `benchmarks.prune_structured` allocation section by (amount asked of
    every layer, importance, scope)."""
    return {(r["amounts"]["heads"], r["importance"], r["scope"]): r
            for r in section.get("runs", [])}


def _allocation_table(section: dict[str, Any], metric: str) -> str:
    """Per-tower ratios against one ranking over every tower, at the same amounts."""
    runs = allocation_runs(section)
    rows = []
    for (amount, importance, scope), r in runs.items():
        g = runs.get((amount, importance, "global"))
        if scope != "tower" or g is None:
            continue
        rows.append([f"{amount:.0%}", importance, f"{r[metric]:.4f}", f"{g[metric]:.4f}",
                     f"{r['params'] / 1e6:.2f} / {g['params'] / 1e6:.2f}"])
    return markdown_table(["heads, neurons, channels", "importance", "per tower",
                           "global", "params M (per tower / global)"], rows)


def section() -> list[str]:
    """The page's pruning section (empty where no stored result exists)."""
    minilm, litcifar = _stored("prune_unstructured.json"), _stored(
        "prune_unstructured_litcifar.json")
    litcifar_bn = _stored("prune_unstructured_litcifar_bn.json")
    folds, size = _stored("prune_heldout_folds.json"), _stored("sparse_size.json")
    structured = _stored("prune_structured.json")
    if not any((minilm, litcifar, size, structured)):
        return []
    lines = ["## Pruning", "",
             "From the stored results named below (not this run; "
             "[method-results.md](method-results.md) has every row, each with its command, "
             "and [prune_structured.md](prune_structured.md) the structured method). Each "
             "method with its defaults; `loss` is the drop from the dense model (negative: "
             "better than dense).", ""]
    if minilm:
        lines += [f"MiniLM, every encoder linear layer, STS-B dev Spearman (dense "
                  f"{minilm['dense']['stsb_spearman']:.4f}; `prune_unstructured.json`), and "
                  "the mean loss over the four quarters of STS-B train held out in turn, each "
                  "calibrated on the other three (`prune_heldout_folds.json`):", "",
                  _quality_table(minilm, folds), ""]
    own_order = _stored("prune_own_order.json")
    if minilm and own_order:
        lines += ["2:4 loss with each layer's groups of four over its own inputs → over an "
                  "order of its inputs that keeps more of the method's score (`permute`, the "
                  "default of Wanda, SparseGPT and ADMM since session 32; `--own-order` rows: "
                  "`prune_own_order.json`, the four held-out quarters' mean in "
                  "`prune_own_order_heldout_folds.json`, `prune_own_order_litcifar.json`):", "",
                  _permute_table([
                      ("MiniLM dev", own_order, minilm, "loss"),
                      ("MiniLM held-out", _stored("prune_own_order_heldout_folds.json"), folds,
                       "loss_mean"),
                      ("lit-cifar", _stored("prune_own_order_litcifar.json"), litcifar,
                       "loss")]),
                  ""]
    if litcifar:
        lines += [f"lit-cifar, every layer of both towers but the stem convolution, zero-shot "
                  f"top-1 on the held-out images (dense "
                  f"{litcifar['dense']['zeroshot_top1']:.4f}; "
                  "`prune_unstructured_litcifar.json`):", "",
                  _quality_table(litcifar, None), ""]
    if litcifar_bn:
        lines += ["The same, each followed by the BatchNorm correction (`finetune: {method: "
                  "batchnorm}`: the image tower's BatchNorm statistics refitted, no training; "
                  "`prune_unstructured_litcifar_bn.json`):", "",
                  _quality_table(litcifar_bn, None, suffix="-bn"), ""]
    if size:
        lines += ["Saved size at 50% magnitude sparsity, fp32 kept values and with int8 in the "
                  "same recipe (`python -m benchmarks.sparse_size`, `sparse_size.json`):", "",
                  _size_table(size), ""]
    if structured:
        lines += [f"Structured pruning, units physically removed, dense timed in the same run "
                  f"at {structured['threads']} threads, batch {structured['batch']} "
                  "(`prune_structured.json`):", "",
                  _structured_table(structured), ""]
        lit = structured.get("lit-cifar")
        if lit:
            dense = lit["dense"]["zeroshot_top1"]
            # files written before the section recorded its evaluation set: --quick took 300
            evaluated = lit.get("evaluation", "300 images with --quick")
            lines += ["One ranking over every tower (`scope: global`: each unit ranked by its "
                      "share of its pool's score over its share of the pool's parameters) "
                      "against the same ratio in every tower, lit-cifar zero-shot top-1 on "
                      f"held-out images (dense {dense:.4f}; {evaluated}; `{lit['command']}`). "
                      "`scope: global` uses Taylor scores unless told "
                      "otherwise, one pool for every tower; magnitude and activation scores "
                      "compare only within a layer, so there each layer is a pool "
                      "([prune_structured.md](prune_structured.md)):", "",
                      _allocation_table(lit, "zeroshot_top1"), ""]
    return lines
