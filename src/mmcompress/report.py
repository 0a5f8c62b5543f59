"""Human-readable reports: the before/after table (Markdown and terminal)."""

from __future__ import annotations

import json
import math
from typing import Any

from .evaluation.config import COST, METRICS

LABELS = {
    "size_bytes": "size (MB)",
    "params": "params (M)",
    "top1": "top-1",
    "top1_all": "top-1 all modalities",
    "top1_no_image": "top-1 no image",
    "top1_no_text": "top-1 no text",
    "top1_no_audio": "top-1 no audio",
    "top1_image_only": "top-1 image only",
    "top1_text_only": "top-1 text only",
    "top1_audio_only": "top-1 audio only",
    "zeroshot_top1": "zero-shot top-1",
    "recall_i2t@1": "recall i→t @1",
    "recall_t2i@1": "recall t→i @1",
    "recall_i2t@5": "recall i→t @5",
    "recall_t2i@5": "recall t→i @5",
    "recall_i2t@10": "recall i→t @10",
    "recall_t2i@10": "recall t→i @10",
    "stsb_spearman": "STS Spearman",
    "fidelity_cosine": "fidelity (cosine)",
    "latency_ms_image": "latency image (ms)",
    "latency_ms_text": "latency text (ms)",
    "latency_ms_audio": "latency audio (ms)",
    "latency_ms_model": "latency model (ms)",
    "peak_memory_mb": "peak memory (MiB)",
}


def to_json(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON: a NaN or infinite number (a metric that could not be computed) is null,
    never the bare ``NaN`` that JSON readers refuse."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key == "size_bytes":
        return f"{value / 1e6:.2f}"
    if key == "params":
        return f"{value / 1e6:.2f}"
    if key.startswith(("latency", "peak")):
        return f"{value:.1f}"
    if key == "fidelity_cosine":
        return f"{value:.5f}"
    return f"{value:.4f}"


def _change(key: str, before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return ""
    if key in ("size_bytes", "params") or key.startswith(("latency", "peak")):
        return f"×{after / before:.3f}" if before else ""
    return f"{after - before:+.4f}"


def comparison_rows(before: dict[str, float], after: dict[str, float]) -> list[list[str]]:
    rows = []
    for key in METRICS:
        if key in before or key in after:
            b, a = before.get(key), after.get(key)
            rows.append([LABELS[key], fmt(key, b), fmt(key, a), _change(key, b, a)])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_ITEMS = {"text": "texts", "image": "images", "audio": "audio clips"}


def calibrated_on(drawn: dict[str, dict[str, int]]) -> str:
    """'2,317 texts (32,801 tokens) and 128 images': what a stage calibrated on."""
    parts = [f"{c['examples']:,} {_ITEMS.get(m, 'examples')}"
             + (f" ({c['tokens']:,} tokens)" if "tokens" in c else "") for m, c in drawn.items()]
    return " and ".join(parts)


def stage_outcome(summary: dict[str, Any]) -> str:
    """What a stage did, in a few words, from its summary: layers replaced, parameters kept by
    structured pruning, or the training it ran."""
    parts = []
    if "modules" in summary:
        parts.append(f"{summary['modules']} modules changed")
    if "mean_bits_per_tower" in summary:  # a bit budget: where it went
        widths = ", ".join(f"{t} {b:g}" for t, b in summary["mean_bits_per_tower"].items())
        parts.append(f"mean bits per tower: {widths}")
    if "params_kept_ratio" in summary:
        parts.append(f"parameters ×{summary['params_kept_ratio']:.3f}")
    if "steps" in summary:
        per_epoch = summary.get("steps_per_epoch")  # absent in reports of older runs
        epochs = round(summary["steps"] / per_epoch, 2) if per_epoch else \
            len(summary.get("epochs") or [])  # the trainer's record of each epoch
        loss = summary.get("final_loss")
        resumed = summary.get("resumed_at")
        parts.append(f"{summary['steps']} training steps over {epochs:g} "
                     f"epoch{'s' * (epochs != 1)}"
                     + (f" (resumed at step {resumed}: its time counts from there)"
                        if resumed else "")
                     + f", final loss {'n/a' if loss is None else format(loss, '.4g')}")
    trained = summary.get("training_data")
    if trained:
        parts.append(f"trained on {trained['examples']:,} examples of {trained['name']}")
    return ", ".join(parts) or "done"


def stage_details(summary: dict[str, Any]) -> str:
    """What a stage did and what it was calibrated on (report.md and report.html)."""
    drawn, source = summary.get("calibration"), summary.get("calibration_data")
    of = f" of {source}" if source else ""
    return stage_outcome(summary) + (f", calibrated on {calibrated_on(drawn)}{of}" if drawn
                                     else "")


def threads_text(n: int) -> str:
    """'1 thread', '2 threads'."""
    return f"{n} thread{'' if n == 1 else 's'}"


def latency_text(m: dict[str, Any]) -> str:
    """How latency was timed: 'median after 3 warm-up runs, 10 repeats, batch 8, texts of
    32 tokens' (the measurement's threads are said beside it)."""
    tokens = m.get("latency_text_tokens")
    return (f"{m['latency_statistic']}, {m['latency_repeats']} repeats, batch "
            f"{m['latency_batch_size']}" + (f", texts of {tokens} tokens" if tokens else ""))


def is_timed(metrics: dict[str, Any]) -> bool:
    """Whether `metrics` hold a latency (otherwise nothing says how latency was timed)."""
    return any(k.startswith("latency_ms_") for k in metrics)


def is_scored(metrics: dict[str, Any]) -> bool:
    """Whether `metrics` hold a figure read from the data (quality, fidelity), not only costs."""
    return any(k not in COST for k in metrics)


def measurement_line(m: dict[str, Any], timed: bool = True, scored: bool = True) -> str:
    """One line for the terminal: the data and its examples (`scored`: a metric read them),
    the threads and (`timed`) how latency was measured."""
    where = (f"measured on {m['data']} ({m['task']}, {m['examples']:,} examples), " if scored
             else "measured with ")
    return where + threads_text(m["threads"]) + (f"; latency: {latency_text(m)}" if timed
                                                 else "")


def measurement_note(m: dict[str, Any], timed: bool = True) -> str:
    """How the figures were measured (report.md and report.html); `timed`: with latency."""
    how = (f"Latency: {latency_text(m)}, " if timed else "Measured with ")
    return (f"{how}{threads_text(m['threads'])}. Size: bytes of `model.safetensors`. "
            "Peak memory: RSS added by loading the model and running each tower once, in a "
            "fresh process. Fidelity: mean cosine between compressed and uncompressed "
            "embeddings (classifiers: logits) of the same inputs.")


def report_markdown(report: dict[str, Any]) -> str:
    """`report.md`: what was done, the before/after table, and how it was measured."""
    m = report["measurement"]
    stages = "\n".join(
        f"{i + 1}. `{s['kind']}` / `{s['method']}` — {s['seconds']:.1f} s, "
        f"{stage_details(s['summary'])}"
        for i, s in enumerate(report["stages"])
    )
    table = markdown_table(
        ["metric", "before", "after", "change"], comparison_rows(report["before"], report["after"])
    )
    return (
        f"# mmcompress report\n\nModel: `{report['model']}` · data: `{m['data']}` "
        f"({m['task']}, {m['examples']} examples)\n\n## Stages\n{stages}\n\n## Before / after\n"
        f"{table}\n\n## Measurement\n{measurement_note(m, is_timed(report['after']))}\n"
    )


def terminal_table(before: dict[str, float], after: dict[str, float]) -> str:
    rows = [["metric", "before", "after", "change"]] + comparison_rows(before, after)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
