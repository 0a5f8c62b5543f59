"""docs/fusion.md from the fusion benchmark's stored results.

``python -m benchmarks.fusion --render`` rewrites the page from benchmarks/results/fusion.json
(written by `benchmarks.fusion`); the tables also read the interval (fusion_budget.json),
pruning-budget (fusion_prune_budget.json), allocation (prune_structured.json) and training-setting
(fusion_cv.json) results beside it. `benchmarks.markdown` quotes some of these tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcompress.models.fusion import FUSIONS as KINDS
from mmcompress.models.fusion import MODALITIES
from mmcompress.report import markdown_table

from . import fusion_cv
from .pruning_page import allocation_runs
from .results_file import load


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _prune_budget_target(kind: str) -> str:
    """The 1/4-of-fp32 target by structured pruning: budget vs the better uniform."""
    results = _prune_budget()
    if results is None or kind not in results["kinds"]:
        return ""
    r = results["kinds"][kind]
    rows = _prune_budget_rows(r)
    parts, wins = [], []
    for stage in ("one shot", "recovered"):
        b, (u, name) = rows["top1"][stage]["budget"], rows["best"][stage]
        size_ok = r["runs"]["budget"][stage]["size_bytes"] <= r["runs"][name][stage]["size_bytes"]
        wins.append(b > u and size_ok)
        parts.append(f"{b:.4f} vs {u:.4f} {stage}")
    return (f"; by structured pruning (top-1 as given, budget vs the better uniform): "
            f"{', '.join(parts)} (budget loses less at no larger size: "
            f"{'yes' if all(wins) else 'NO'})")


def target_lines(kinds: dict[str, Any]) -> str:
    """The issue's targets, checked against the numbers above."""
    lines = []
    for k, r in kinds.items():
        f = r["fp32"]
        best = max(f[f"top1_{m}_only"] for m in ("image", "text", "audio"))
        int8 = r["recipes"]["int8"]["metrics"]
        d_all, d_given = int8["top1_all"] - f["top1_all"], int8["top1"] - f["top1"]
        loss = max(-d_all, -d_given)
        quarter = next(b for b in r["budget"].values() if b["quarter"])
        u, g = quarter["uniform"]["metrics"], quarter["budgeted"]["metrics"]
        wf = r.get("budget_fp32", f)
        lost_u = max(wf["top1_all"] - u["top1_all"], wf["top1"] - u["top1"])
        lost_g = max(wf["top1_all"] - g["top1_all"], wf["top1"] - g["top1"])
        lines.append(
            f"- `{k}`: all modalities {f['top1_all']:.4f} (≥ 0.95: "
            f"{'yes' if f['top1_all'] >= 0.95 else 'NO'}), best single modality {best:.4f} "
            f"(beaten: {'yes' if f['top1_all'] > best else 'NO'}); int8 on every tower: "
            f"{d_all:+.4f} all, {d_given:+.4f} as given (loss ≤ 0.005: "
            f"{'yes' if loss <= 0.005 else 'NO'})")
        lines.append(
            f"- `{k}` at 1/4 of fp32, by widths: budgeted {g['top1_all'] - wf['top1_all']:+.4f} "
            f"vs uniform int{quarter['uniform']['bits']} {u['top1_all'] - wf['top1_all']:+.4f} "
            f"on complete examples, {g['top1'] - wf['top1']:+.4f} vs "
            f"{u['top1'] - wf['top1']:+.4f} as given (budget loses less at no larger size: "
            f"{'yes' if lost_g < lost_u and g['size_bytes'] <= u['size_bytes'] else 'NO'}; "
            f"fidelity {g['fidelity_cosine']:.5f} vs {u['fidelity_cosine']:.5f})"
            + _prune_budget_target(k))
        if k == "late":
            lines.append("- `late` with one modality missing (the better of the two left "
                         "alone): " + ", ".join(
                             f"no {m} {f[f'top1_no_{m}']:.4f} "
                             f"({max(f[f'top1_{o}_only'] for o in MODALITIES if o != m):.4f})"
                             for m in MODALITIES))
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """The Markdown page (docs/fusion.md)."""
    return TEMPLATE.format(**tables(results), command=results["command"])


def tables(results: dict[str, Any]) -> dict[str, str]:
    """Every table and list of the page, by its name in `TEMPLATE` (results of `run_kind`,
    with the interval, pruning-budget and allocation files beside them)."""
    kinds = results["kinds"]
    acc_keys = ["top1", "top1_all", "top1_no_image", "top1_no_text", "top1_no_audio",
                "top1_image_only", "top1_text_only", "top1_audio_only"]
    rows = [[k, *(_pct(r["fp32"].get(a)) for a in acc_keys),
             " / ".join(f"{w:.2f}" for w in r["modality_weights"].values())
             if "modality_weights" in r else "—",
             str(r.get("train_seconds", "—"))] for k, r in kinds.items()]
    fp32 = markdown_table(["fusion", "as given", "all", "no image", "no text", "no audio",
                           "image only", "text only", "audio only",
                           "weights image / text / audio", "training s"], rows)
    rows = []
    for k, r in kinds.items():
        f = r["fp32"]
        rows.append([k, "fp32", _pct(f["top1"]), _pct(f["top1_all"]), "—",
                     f"{f['size_bytes'] / 1e3:.1f}", "1.000", f"{f['latency_ms_model']:.2f}",
                     f"{f['latency_ms_image']:.2f} / {f['latency_ms_text']:.2f} / "
                     f"{f['latency_ms_audio']:.2f}"])
        for name, rec in r["recipes"].items():
            m = rec["metrics"]
            rows.append([k, name, _pct(m["top1"]), _pct(m["top1_all"]),
                         f"{m['top1_all'] - f['top1_all']:+.4f}",
                         f"{m['size_bytes'] / 1e3:.1f}",
                         f"{m['size_bytes'] / f['size_bytes']:.3f}",
                         f"{m['latency_ms_model']:.2f}",
                         f"{m['latency_ms_image']:.2f} / {m['latency_ms_text']:.2f} / "
                         f"{m['latency_ms_audio']:.2f}"])
    compress_table = markdown_table(
        ["fusion", "config", "top-1 as given", "top-1 all", "Δ all", "size kB", "size ×fp32",
         "model ms", "image / text / audio ms"], rows)
    rows = []
    for k, r in kinds.items():
        for bits, towers in r["sensitivity"].items():
            rows.append([k, f"int{bits}", *(f"{towers[t]['top1_all_drop']:+.4f}"
                                            for t in ("vision", "text", "audio", "fusion"))])
    sens = markdown_table(["fusion", "RTN width", "vision", "text", "audio", "fusion"], rows)
    rows = []
    for k, r in kinds.items():
        for ratio, b in r["budget"].items():
            u, g = b["uniform"]["metrics"], b["budgeted"]["metrics"]
            f = r.get("budget_fp32", r["fp32"])
            per_tower = ", ".join(f"{t} {v}" for t, v in
                                  b["budgeted"]["summary"]["mean_bits_per_tower"].items())
            name = f"int{ratio}" + (" (≤ 1/4 of fp32)" if b["quarter"] else "")
            rows.append([k, name,
                         f"{u['size_bytes'] / f['size_bytes']:.3f}, "
                         f"{u['top1_all'] - f['top1_all']:+.4f} / {u['top1'] - f['top1']:+.4f}",
                         f"{g['size_bytes'] / f['size_bytes']:.3f}, "
                         f"{g['top1_all'] - f['top1_all']:+.4f} / {g['top1'] - f['top1']:+.4f}",
                         per_tower])
    budget = markdown_table(["fusion", "size of uniform", "uniform: size ×fp32, Δ all / Δ as given",
                             "budgeted: size ×fp32, Δ all / Δ as given",
                             "budgeted mean bits per tower"], rows)
    loads = ", ".join(f"{k} {r['load_average_end'][0]}" for k, r in kinds.items()
                      if "load_average_end" in r) or "not recorded"
    cv_file = Path(__file__).parent / "results" / "fusion_cv.json"
    cv = fusion_cv.table(load(cv_file)["rows"]) if cv_file.is_file() \
        else "(not run: `python -m benchmarks.fusion_cv`)"
    return {"data": results["data"], "machine": results["machine"], "fp32": fp32, "cv": cv,
            "loads": loads, "targets": target_lines(kinds), "compress": compress_table,
            "sens": sens, "budget": budget, "budget_ci": budget_interval_table(),
            "prune_budget": prune_budget_table(), "parameters": parameter_allocation_table()}


def parameter_allocation_table() -> str:
    """Structured pruning with one ranking of every tower's units (global Taylor) vs the same
    ratio in every tower, from the fusion sections of results/prune_structured.json."""
    path = Path(__file__).parent / "results" / "prune_structured.json"
    results = load(path)
    rows = []
    for kind in KINDS:
        section = results.get(f"fusion-{kind}", {})
        runs = allocation_runs(section)
        for amount in sorted({a for a, _, _ in runs}):
            ranked = runs[(amount, "taylor", "global")]
            ratios = ranked["summary"]["params"]
            rows.append([kind, f"{amount:.0%}", _pct(section["dense"]["top1"]),
                         *(_pct(runs[(amount, i, "tower")]["top1"])
                           for i in ("activation", "taylor")),
                         _pct(ranked["top1"]),
                         ", ".join(f"{t} {v['removed_ratio']:.2f}" for t, v in ratios.items())])
    if not rows:
        return ("(not run: `python -m benchmarks.prune_structured OUT --quick --sections "
                "fusion-early,fusion-late,fusion-hybrid`)")
    table = markdown_table(["fusion", "asked per layer", "fp32", "per tower, activation",
                            "per tower, Taylor", "global Taylor",
                            "global: parameters removed per tower"], rows)
    command = next(results[f"fusion-{k}"]["command"] for k in KINDS
                   if f"fusion-{k}" in results)
    return (f"Top-1 as given (`{command}`, `benchmarks/results/prune_structured.json`; 64 "
            f"calibration examples of the training split, no fine-tuning):\n\n{table}")


def budget_interval_table() -> str:
    """The budget's accuracy minus uniform's with 95% paired bootstrap intervals, from
    ``--budget-only`` (results/fusion_budget.json), or how to make them."""
    path = Path(__file__).parent / "results" / "fusion_budget.json"
    if not path.is_file():
        return "(intervals not run: `python -m benchmarks.fusion --budget-only JSON`)"
    results = load(path)
    rows = []
    for k, r in results["kinds"].items():
        for bits, b in r["budget"].items():
            u, g, ci = b["uniform"]["metrics"], b["budgeted"]["metrics"], b["gain_ci95"]
            rows.append([k, f"int{bits}" + (" (≤ 1/4 of fp32)" if b["quarter"] else ""),
                         f"{g['top1_all'] - u['top1_all']:+.4f} "
                         f"[{ci['top1_all'][0]:+.4f}, {ci['top1_all'][1]:+.4f}]",
                         f"{g['top1'] - u['top1']:+.4f} "
                         f"[{ci['top1'][0]:+.4f}, {ci['top1'][1]:+.4f}]"])
    table = markdown_table(["fusion", "size of uniform", "budget − uniform, all [95%]",
                            "as given [95%]"], rows)
    return (f"Budgeted minus uniform accuracy on the same 2,000 examples, with 95% paired "
            f"bootstrap intervals over resampled examples (`{results['command']}`, "
            f"`benchmarks/results/fusion_budget.json`; the same models and comparison as "
            f"above):\n\n{table}")


def _prune_budget() -> dict[str, Any] | None:
    path = Path(__file__).parent / "results" / "fusion_prune_budget.json"
    return load(path) if path.is_file() else None


def _prune_budget_rows(r: dict[str, Any]) -> dict[str, Any]:
    """Top-1 as given of one kind's runs, one shot and recovered, and the better uniform."""
    runs = r["runs"]
    top1 = {stage: {n: run[stage]["top1"] for n, run in runs.items()}
            for stage in ("one shot", "recovered")}
    best = {stage: max((v, n) for n, v in t.items() if n != "budget")
            for stage, t in top1.items()}
    return {"top1": top1, "best": best}


def prune_budget_table() -> str:
    """Budget (global Taylor, params_ratio) vs uniform ratios at 1/4 of fp32, from
    `benchmarks.fusion_prune_budget`, or how to make it."""
    results = _prune_budget()
    if results is None:
        return "(not run: `python -m benchmarks.fusion_prune_budget`)"
    rows = []
    for k, r in results["kinds"].items():
        t = _prune_budget_rows(r)["top1"]
        fp = r["fp32_bytes"]
        removed = r["budget"]["summary"]["params"]
        for stage in ("one shot", "recovered"):
            ci = r["gain_ci95"][stage]
            rows.append([
                k, stage, f"{r['fp32']['top1']:.4f}",
                f"{round(100 * r['fraction'])}%",
                f"{r['runs']['uniform activation'][stage]['size_bytes'] / fp:.3f} / "
                f"{r['runs']['budget'][stage]['size_bytes'] / fp:.3f}",
                f"{t[stage]['uniform activation']:.4f}", f"{t[stage]['uniform taylor']:.4f}",
                f"**{t[stage]['budget']:.4f}**",
                " / ".join(f"{t[stage]['budget'] - t[stage][f'uniform {u}']:+.4f} "
                           f"[{ci[u]['top1'][0]:+.4f}, {ci[u]['top1'][1]:+.4f}]"
                           for u in ("activation", "taylor")),
                " ".join(f"{tw} {v['removed_ratio']:.2f}" for tw, v in removed.items())])
    table = markdown_table(["fusion", "", "fp32", "uniform f", "size ×fp32 uniform / budget",
                            "uniform, activation", "uniform, Taylor", "budget",
                            "budget − uniform activation / Taylor [95%]",
                            "budget: parameters removed per tower"], rows)
    rec = results["recovery"]["distill"]
    return (f"Top-1 as given on the same 2,000 held-out examples (`{results['command']}`, "
            f"`benchmarks/results/fusion_prune_budget.json`); *recovered*: the `distill` stage "
            f"(logits KD from the fp32 model, {rec['epochs']} epochs, lr {rec['lr']}, batch "
            f"{rec['batch_size']}) on the training split:\n\n{table}")


TEMPLATE = """# Fusion classifiers: early, late and hybrid fusion, compressed

Generated by `{command}` (figures from that run, stored in
[`fusion.json`](../benchmarks/results/fusion.json); nothing here is typed in by hand).

- **Data:** `--data trimodal`: {data}. Each example pairs a handwritten digit (scikit-learn
  digits, held-out 30%), a short text with typos (wordings unseen in training) and a spoken
  digit; 15% of examples lose one modality and 10% have one item of another digit (label: what
  the other two agree on). *as given* = accuracy on all evaluation examples; the other columns
  use the complete examples (every modality present; about 0.10 / 0.85 of them with one
  contradicting item) with modalities removed as named.
- **Models:** `fusion-early`, `fusion-late`, `fusion-hybrid` (`mmcompress.models.fusion`,
  64-wide, trained by `mmcompress.models.fusion_training` with the shared trainer, fixed seed;
  training time per model is in the JSON). Inputs are cropped to what the models take: a
  recording's first second (8,000 samples at 8 kHz; WAV files are read up to 10 s and
  resampled to 8 kHz) and a text's first 32 characters.
- **Machine:** {machine}. Latency: median of 30 runs, batch 8, one thread. The machine was
  shared (1-minute load average at the end of each run: {loads}, on 2 CPUs), so latencies
  are noisy: read only large differences.
- Calibration (GPTQ, structured pruning) and the budget's sensitivity use the training split.

## Targets (issue 8)

{targets}

## Accuracy of the fp32 models

{fp32}

## How the training settings were chosen (training speakers only)

`python -m benchmarks.fusion_cv`: four twins per setting, each trained without one training
speaker and a quarter of the training images and scored on them; accuracy pooled over the
folds, as given and with each modality dropped. The built-in models use label smoothing 0.1
and, for late and hybrid fusion, the fitted weights (the fit minimises cross-entropy over all
four conditions together, so it can trade a little of one for another):

{cv}

## Before and after compression (every tower)

{compress}

## Per-modality sensitivity

Accuracy drop on complete examples when only that tower is quantized round-to-nearest
(per channel), everything else fp32:

{sens}

## Budgeted vs uniform widths at equal size

Uniform: one width for every layer (RTN, per channel): the widest whose model is at most 1/4 of
fp32, and 3 bits. Budgeted: `quantize: {{method: rtn, budget: {{size_ratio: <uniform's
size>, bits: [2, 3, 4, 6, 8], samples: 32}}}}` — per-layer widths from sensitivity (fidelity
loss) measured on 32 examples of the training split, its model no larger than uniform's. Scored
on four pairings of the held-out items (2,000 examples, the standard one first; one pairing of
500 cannot tell near-lossless widths apart). Δ against fp32 on the same examples (complete
examples / as given):

{budget}

{budget_ci}

## Budget vs uniform at 1/4 of fp32 by structured pruning

The same size target reached by removing units instead of narrowing widths. Uniform: `prune:
{{method: structured, scope: tower, heads: F, neurons: F, channels: F}}` with F the smallest
whole percent whose file is at most 1/4 of fp32 (of each layer's four heads at most three).
Budgeted: `prune: {{method: structured, scope: global, params_ratio: <uniform's share of
parameters>, heads: 0.95, neurons: 0.95, channels: 0.95}}` — one Taylor ranking over every
tower's units (the amounts only cap what one layer may lose), its file no larger than
uniform's. Both uniform importances are shown:

{prune_budget}

## Parameters spread across modalities by sensitivity (structured pruning)

A parameter target instead of a size: `prune: {{method: structured, heads: F, neurons: F,
channels: F}}` removes the fraction F of every layer's units in every tower (`scope: tower`),
or leaves as many parameters (to the nearest unit) where the model's output moves
least (`scope: global`, Taylor scores: the relative change of the output when a unit is
removed, one ranking over every tower's heads, neurons and channels; see
[prune_structured.md](prune_structured.md)). The sensitive towers keep more of their units:

{parameters}

## Notes

- **Audio is the weak modality.** The evaluation speaker is never heard in training (four
  speakers train), and the audio head alone is far below the other two. Late and hybrid fusion
  therefore weigh the modalities' log-probabilities (the *weights* column): the weights are
  fitted by cross-validation over the four training speakers — four twin models, each trained
  without one speaker and a quarter of the training images and scored on them, with every
  modality present and with each one dropped — and then given to the model trained on
  everything. Every head is also trained with label smoothing 0.1, so it is less sure of
  itself on a voice it has not heard. Both choices were made on the training speakers only
  (`python -m benchmarks.fusion_cv`, `benchmarks/results/fusion_cv.json`); the evaluation
  speaker plays no part; the table above shows what equal weights and no smoothing give on the
  same folds. Pooling all four speakers keeps the weights from hanging on which one speaker is
  held out.
  Tried for the audio encoder: a small CNN over the log-mel spectrogram (default and He
  initialisation), per-band mean normalisation, speed perturbation; frame tokens with two
  transformer blocks generalised best to the held-out speaker and train fastest.
- **Structured pruning is one-shot here** (no fine-tuning after removing half of the heads,
  MLP neurons and conv channels of every tower); the `finetune` / `distill` stages recover
  part of it (three epochs of distillation in the 1/4-of-fp32 pruning table). The audio
  front end (STFT, log-mel) has no weights and is not pruned.
- **Weight-only int8/int4 dequantize on the fly**: smaller files, not faster on CPU.
- **Budget at 1/4 of fp32**: the uniform width that fits (5-6 bits) is already about lossless on
  these models, so budget and uniform differ by a few examples of 2,000 (see the targets and
  the intervals above: how far each difference could move on another draw of examples); the
  budget's outputs stay closer to fp32's (fidelity) in every run. At the size of uniform 3 bits
  the budget keeps the sensitive image encoder wider and the audio and text encoders narrower
  and loses less: about half as much on early fusion, a tenth or less on late and hybrid
  fusion, by more than the intervals' width. Reached by structured
  pruning instead (uniform ratios must remove most of every layer's units), 1/4 of fp32 is far
  from lossless, and the parameter budget loses much less than uniform ratios, one shot and
  after recovery.
"""
