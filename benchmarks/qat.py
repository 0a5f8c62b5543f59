"""Quantization-aware training against post-training RTN on lit-cifar (zero-shot top-1).

``OMP_NUM_THREADS=1 python -m benchmarks.qat [--out benchmarks/results/qat.json]
[--settings 4:32,4:none,3:32] [--epochs 1] [--batch-size 128] [--lr 2e-4]
[--scales minmax|learned] [--targets vision,projector[,text]] [--eval-samples N]``
(``--table FILE`` prints the table of an earlier run.)

Rows: fp32; fp32 given the same training without quantization (a control: training alone
lifts lit-cifar, whose image tower was frozen when it was built); then per setting
``BITS:GROUP`` (``none``: one scale per output channel) the post-training RTN model and the QAT
model on the same grid. Quantized: ``--targets`` (default the image tower and projection; the
text tower, lit-cifar's frozen MiniLM, stays fp32 and its caption embeddings are computed
once; with ``text`` it is quantized too and trained, its 80 training captions embedded every
step). QAT runs the product path: a ``quantize: {method: rtn, qat: ...}`` stage, then the
shared `Trainer` with the callbacks the stage armed, on lit-cifar's *training* split (the
first 400 images per class of ``cifar10/test``) against the captions that built lit-cifar
(the split's templates, `LIT_TRAIN_TEMPLATES`; symmetric InfoNCE, same-class pairs positive),
BatchNorm statistics frozen. Evaluation: lit-cifar-eval (the other 400 per class,
class-folder prompts), never trained on. ``recovered`` = (QAT − RTN) / (fp32 − RTN); the table
also gives it against the trained fp32 control.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.data import load_data
from mmcompress.data.cifar import lit_cifar_split
from mmcompress.evaluation.evaluate import quality, saved_size_bytes
from mmcompress.methods import METHODS, StageContext
from mmcompress.methods.training_hooks import take_armed
from mmcompress.model_specs import load_model
from mmcompress.training import Trainer, TrainSettings, losses

from .results_file import store

RESULTS = Path(__file__).resolve().parent / "results" / "qat.json"


class LitObjective:
    """lit-cifar's training task: training images against their class's training captions."""

    def __init__(self, adapter, data) -> None:
        self.adapter = adapter
        images = [data.load_image(i) for i in range(len(data))]
        self.pixels = torch.cat([adapter.image_tensor(images[i : i + 500])
                                 for i in range(0, len(images), 500)])
        self.labels = torch.as_tensor(data.labels).long()
        captions = [t.format(c) for c in data.class_names for t in data.templates]
        self.tokens = adapter.text_tensors(captions)
        self.shape = (len(data.class_names), len(data.templates))
        with torch.no_grad():
            self.frozen_text = self.embed_captions()
        self.train_text = False  # True: the text tower trains too (captions embedded per step)
        self.modules = nn.Module()

    def embed_captions(self) -> torch.Tensor:
        """Embeddings of every training caption, [classes, templates, dim]."""
        return self.adapter.embed_text_tensors(self.tokens).view(*self.shape, -1)

    def __len__(self) -> int:
        return len(self.labels)

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        img = self.adapter.embed_image_tensor(self.pixels[idx])
        labels = self.labels[idx]
        text = self.embed_captions() if self.train_text else self.frozen_text
        pick = torch.randint(self.shape[1], (len(idx),))  # the trainer reseeds every step
        scale = self.adapter.model.logit_scale.exp().clamp(max=100)
        return losses.info_nce(img, text[labels, pick], scale, labels)

    def describe(self) -> dict[str, Any]:
        return {"task": "lit-cifar-train", "examples": len(self)}


def _rtn(bits: int, group: int | None, targets: list[str], qat: Any = False) -> dict[str, Any]:
    return {"method": "rtn", "bits": bits, "group_size": group, "targets": targets, "qat": qat}


def _quantize(adapter, cfg: dict[str, Any]) -> StageContext:
    ctx = StageContext(progress=False)
    method = METHODS[("quantize", "rtn")]
    method.apply(adapter, method.config_cls.model_validate(cfg), ctx)
    return ctx


def _train(adapter, objective: LitObjective, settings: TrainSettings, targets: list[str],
           callbacks: list) -> dict[str, Any]:
    """Train the image side (and the text tower when it is a target) on lit-cifar-train."""
    adapter.model.text.requires_grad_("text" in targets)
    objective.adapter, objective.train_text = adapter, "text" in targets
    return Trainer(adapter, objective, settings, callbacks=callbacks, progress=False).fit()


def _top1(adapter, data) -> float:
    return round(quality(adapter, data).metrics["zeroshot_top1"], 4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    base = load_model("lit-cifar", progress=False)
    targets = args.targets.split(",")
    base.model.text.requires_grad_(False)  # frozen in lit-cifar
    evaluation = load_data("lit-cifar-eval")
    if args.eval_samples:
        evaluation = evaluation.head(args.eval_samples)
    train_split, _ = lit_cifar_split()
    objective = LitObjective(base, train_split)
    fp32 = _top1(base, evaluation)
    rows: list[dict[str, Any]] = [{"setting": "fp32", "zeroshot_top1": fp32,
                                   "size_bytes": saved_size_bytes(base.model)}]
    print(f"fp32 top-1 {fp32}", flush=True)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=0.0, warmup=0.1, freeze_norm=True, evaluate=False)
    # control: the same training without quantization (how much is the training itself)
    tuned = copy.deepcopy(base)
    _train(tuned, objective, settings, targets, callbacks=[])
    rows.append({"setting": "fp32 + same training", "zeroshot_top1": _top1(tuned, evaluation)})
    print(json.dumps(rows[-1]), flush=True)
    del tuned
    for setting in args.settings.split(","):
        bits, group = setting.split(":")
        group_size = None if group == "none" else int(group)
        rtn = copy.deepcopy(base)
        _quantize(rtn, _rtn(int(bits), group_size, targets))
        rtn_top1 = _top1(rtn, evaluation)
        qat = copy.deepcopy(base)
        ctx = _quantize(qat, _rtn(int(bits), group_size, targets, {"scales": args.scales}))
        start = time.perf_counter()
        summary = _train(qat, objective, settings, targets, take_armed(ctx))
        seconds = time.perf_counter() - start
        qat_top1 = _top1(qat, evaluation)
        gap = fp32 - rtn_top1
        row = {"setting": f"int{bits} group {group}", "bits": int(bits),
               "group_size": group_size, "rtn_top1": rtn_top1, "qat_top1": qat_top1,
               "recovered": round((qat_top1 - rtn_top1) / gap, 3) if gap > 0 else None,
               "qat_vs_trained_fp32": round(qat_top1 - rows[1]["zeroshot_top1"], 4),
               "size_bytes": saved_size_bytes(qat.model), "train_steps": summary["steps"],
               "train_seconds": round(seconds, 1), "final_loss": summary["final_loss"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"model": "lit-cifar", "eval_data": evaluation.name,
            "eval_examples": len(evaluation), "train_data": train_split.name,
            "train_examples": len(train_split), "quantized": targets, "scales": args.scales,
            "training": settings.model_dump(), "threads": torch.get_num_threads(),
            "rows": rows}


def table(result: dict[str, Any]) -> str:
    """Markdown rows; gap recovered against fp32 as it ships and against fp32 given the same
    training (the part of QAT's gain that is not the training itself)."""
    fp32, tuned = (r["zeroshot_top1"] for r in result["rows"][:2])
    lines = ["| setting | RTN top-1 | QAT top-1 | fp32 | fp32 + same training | gap "
             "recovered (vs fp32) | (vs fp32 + same training) | size (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"][2:]:
        rec = [(r["qat_top1"] - r["rtn_top1"]) / (ref - r["rtn_top1"])
               if ref > r["rtn_top1"] else None for ref in (fp32, tuned)]
        rec_text = " | ".join("—" if x is None else f"{x:.0%}" for x in rec)
        lines.append(f"| {r['setting']} | {r['rtn_top1']:.4f} | {r['qat_top1']:.4f} | "
                     f"{fp32:.4f} | {tuned:.4f} | {rec_text} | {r['size_bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--settings", default="4:32,4:none,3:32")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--scales", choices=["minmax", "learned"], default="minmax")
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--targets", default="vision,projector",
                        help="towers quantized (add 'text' to quantize and train MiniLM too)")
    parser.add_argument("--table", type=Path, default=None,
                        help="only print the table of an earlier results file")
    args = parser.parse_args()
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return
    result = run(args)
    store(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()
