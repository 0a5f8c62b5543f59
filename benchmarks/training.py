"""Training benchmarks (issue 7): distillation vs plain fine-tuning at the same images and
steps, students by inheritance, and DDP throughput.

``OMP_NUM_THREADS=1 python -m benchmarks.training [--runs a,b,…] [--out FILE]``

Every run is a separate process (``--one NAME``), so its wall time and peak memory (max RSS
of that process) are its own. Runs:

- ``cifar-finetune`` / ``cifar-distill``: pretrained ResNet-20 trained on ``lit-cifar-train``
  (the first 400 images per class of ``cifar10/test``) with cross-entropy alone, or with
  Hinton KD (α = 0.5, T = 4) from the pretrained ResNet-56; top-1 on ``lit-cifar-eval`` (the
  other 400 per class). Same images, steps, batch and learning rate. ``-aug``: with random
  crops and flips; ``cifar-teacher-aug`` fine-tunes the ResNet-56 the same way first and
  ``cifar-distill-ft-aug`` distills from that adapted teacher.
- ``lit-affinity`` / ``lit-task``: lit-cifar with every second block of each tower kept
  (ResNet-56 → 5 blocks per stage, MiniLM 6 → 3 layers) trained with TinyCLIP affinity
  mimicking plus CLIP-KD (embedding and interactive losses) from the original, or with the
  contrastive task loss alone; zero-shot top-1 on
  ``lit-cifar-eval`` (prompts never seen in training) as a fraction of the teacher's.
- ``demo-affinity`` / ``demo-task``: the same on the demo (its text tower halved; the digit
  CNN has no block list to halve), trained on ``demo-train``, evaluated on ``demo``.
- ``minilm-distill``: MiniLM with 50% of MLP neurons removed (structured, activation
  importance, calibrated on STS-B train), then distilled from the dense model (CLIP-KD
  embedding loss + cosine-to-gold task loss) on STS-B train; Spearman on STS-B dev.
- ``ddp-1`` / ``ddp-2``: examples/s of the same ResNet-20 fine-tuning on 1 process and on 2
  (``torchrun --nproc_per_node 2``, gloo, one thread each).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .results_file import load, store

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"
#: where the fine-tuned ResNet-56 teacher is kept between runs (a cache, not the repository)
TEACHER_FT = Path(os.environ.get("MMCOMPRESS_CACHE", Path.home() / ".cache" / "mmcompress")) \
    / "bench-training" / "resnet56-ft-aug"
#: the same teacher fine-tuned 5× longer
TEACHER_FT10 = TEACHER_FT.parent / "resnet56-ft-aug-10ep"
STEPS = {"cifar": 2, "lit": 3, "demo": 4, "minilm": 1}  # epochs per family


def _cifar(stage: tuple[str, dict[str, Any]], augment: bool = False, model: str = "resnet20",
           epochs: int = STEPS["cifar"], **extra: Any) -> dict[str, Any]:
    """A CIFAR run: trained on lit-cifar-train, evaluated on lit-cifar-eval."""
    return {"model": model, "data": "lit-cifar-train", "eval": "lit-cifar-eval",
            **({"augment": True} if augment else {}), "stage": stage, "epochs": epochs,
            "lr": 2e-4, "batch_size": 64, **extra}


def _kd(teacher: str) -> tuple[str, dict[str, Any]]:
    """Hinton KD on logits (alpha 0.5, T 4) from `teacher`."""
    return ("distill", {"method": "kd", "teacher": teacher, "losses": ["logits"], "alpha": 0.5,
                        "temperature": 4.0})


_TASK = ("finetune", {"method": "task"})
#: TinyCLIP affinity mimicking plus CLIP-KD's losses, no task loss
_AFFINITY = ("distill", {"method": "kd", "losses": ["affinity", "clip_kd"], "alpha": 1.0})
#: dual-encoder families: (model, training data, evaluation data)
_DUAL = {"lit": ("lit-cifar", "lit-cifar-train", "lit-cifar-eval"),
         "demo": ("demo", "demo-train", "demo")}


def _half_student(family: str, stage: tuple[str, dict[str, Any]], epochs: int | None = None,
                  augment: bool = False) -> dict[str, Any]:
    """A dual encoder's student keeping every second block, trained with `stage`."""
    model, data, evaluate = _DUAL[family]
    return {"model": model, "data": data, "eval": evaluate, "student": {"layers": "every-2"},
            **({"augment": True} if augment else {}), "stage": stage,
            "epochs": STEPS[family] if epochs is None else epochs, "lr": 5e-4, "batch_size": 64}

RUNS: dict[str, dict[str, Any]] = {
    "cifar-finetune": _cifar(_TASK),
    "cifar-distill": _cifar(_kd("resnet56")),
    "cifar-finetune-aug": _cifar(_TASK, augment=True),
    "cifar-distill-aug": _cifar(_kd("resnet56"), augment=True),
    # the teacher adapted to the same training images first (same settings), then distilled
    "cifar-teacher-aug": _cifar(_TASK, augment=True, model="resnet56", save=TEACHER_FT),
    "cifar-distill-ft-aug": _cifar(_kd(str(TEACHER_FT)), augment=True),
    # the same pair trained 2.5× longer
    "cifar-finetune-aug-5ep": _cifar(_TASK, augment=True, epochs=5),
    "cifar-distill-ft-aug-5ep": _cifar(_kd(str(TEACHER_FT)), augment=True, epochs=5),
    # and 5× longer
    "cifar-finetune-aug-10ep": _cifar(_TASK, augment=True, epochs=10),
    "cifar-distill-ft-aug-10ep": _cifar(_kd(str(TEACHER_FT)), augment=True, epochs=10),
    # a stronger teacher: ResNet-56 fine-tuned 10 epochs on the same images, then distilled
    "cifar-teacher-aug-10ep": _cifar(_TASK, augment=True, model="resnet56", epochs=10,
                                     save=TEACHER_FT10),
    "cifar-distill-ft10-aug-10ep": _cifar(_kd(str(TEACHER_FT10)), augment=True, epochs=10),
    "lit-affinity": _half_student("lit", _AFFINITY),
    "lit-task": _half_student("lit", _TASK),
    # both twice as long, with crops and flips (the teacher sees the same crops)
    "lit-affinity-aug-6ep": _half_student("lit", _AFFINITY, epochs=6, augment=True),
    "lit-task-aug-6ep": _half_student("lit", _TASK, epochs=6, augment=True),
    "demo-affinity": _half_student("demo", _AFFINITY),
    "demo-task": _half_student("demo", _TASK),
    # the demo's task saturates (both students match the teacher after 4 epochs): one epoch
    "demo-affinity-1ep": _half_student("demo", _AFFINITY, epochs=1),
    "demo-task-1ep": _half_student("demo", _TASK, epochs=1),
    "minilm-distill": {"model": "minilm", "data": "stsb-train", "eval": "stsb-dev",
                       "prune": {"method": "structured", "neurons": 0.5,
                                 "importance": "activation"},
                       "stage": ("distill", {"method": "kd", "losses": ["clip_kd"],
                                             "alpha": 0.5}),
                       "epochs": STEPS["minilm"], "lr": 5e-5, "batch_size": 32},
}
DDP_STEPS = 30


def stage_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    kind, cfg = spec["stage"]
    cfg = {**cfg, "epochs": spec["epochs"], "lr": spec["lr"], "batch_size": spec["batch_size"],
           "warmup": 0.1, "seed": 0, "augment": spec.get("augment", False)}
    if kind == "distill" and "student" in spec:
        cfg["student"] = spec["student"]
    return {kind: cfg}


def run_one(name: str) -> dict[str, Any]:
    """Run one configuration in this process; returns its measurements."""
    from mmcompress.data import load_data
    from mmcompress.evaluation.evaluate import count_params, quality
    from mmcompress.methods import StageContext, run_stage
    from mmcompress.model_specs import load_model
    from mmcompress.recipe import CalibrationConfig, load_recipe
    from mmcompress.training.students import StudentConfig, build_student

    spec = RUNS[name]
    start = time.perf_counter()
    adapter = load_model(spec["model"], progress=False)
    train, evaluation = load_data(spec["data"]), load_data(spec["eval"])
    out: dict[str, Any] = {"run": name, "model": spec["model"], "train_data": spec["data"],
                           "train_examples": len(train), "eval_data": spec["eval"],
                           "eval_examples": len(evaluation), "recipe": stage_recipe(spec)}
    metric = {"sts": "stsb_spearman"}.get(evaluation.task) or (
        "top1" if hasattr(adapter, "classify") else "zeroshot_top1")
    out["before"] = quality(adapter, evaluation).metrics[metric]  # the model as loaded
    teacher = spec["stage"][1].get("teacher", "original")
    out["teacher"] = spec["model"] if teacher == "original" else teacher
    out["teacher_metric"] = out["before"] if teacher == "original" else quality(
        load_model(teacher, progress=False), evaluation).metrics[metric]
    context = StageContext(data=train, calibration=CalibrationConfig(samples=256, batch_size=16),
                           progress=False, extra={"eval_data": evaluation})
    context.extra["original"] = copy.deepcopy(adapter)
    stages = []
    if "prune" in spec:
        stages.append({"prune": spec["prune"]})
    if "student" in spec and spec["stage"][0] == "finetune":
        # the same student the distill run builds, trained without a teacher
        build_student(adapter, StudentConfig(**spec["student"]), context)
    stages.append(stage_recipe(spec))
    recipe = load_recipe({"stages": stages})
    out["params_teacher"] = count_params(context.extra["original"].model)
    for i, stage in enumerate(recipe.stages):
        context.extra["stage"] = i
        summary = run_stage(adapter, stage, context)
        if stage.kind == "prune":
            out["after_prune"] = quality(adapter, evaluation).metrics[metric]
        else:
            out["training"] = summary
    if "save" in spec:
        from mmcompress.io.atomic import atomic_folder
        from mmcompress.io.checkpoint import save_checkpoint

        with atomic_folder(Path(spec["save"]), overwrite=True) as tmp:
            save_checkpoint(adapter, tmp, spec["model"], [])
    out["params"] = count_params(adapter.model)
    out["metric"] = metric
    out["value"] = out["training"]["epochs"][-1]["metrics"][metric]
    out["per_epoch"] = [e["metrics"][metric] for e in out["training"]["epochs"]]
    out["fraction_of_teacher"] = round(out["value"] / out["teacher_metric"], 4)
    out["fraction_of_before"] = round(out["value"] / out["before"], 4)
    out["wall_s"] = round(time.perf_counter() - start, 1)
    return out


def ddp_worker(steps: int) -> dict[str, Any]:
    """ResNet-20 fine-tuning for `steps` steps (batch 64) in this process (or this rank)."""
    from mmcompress.data import load_data
    from mmcompress.model_specs import load_model
    from mmcompress.training import Trainer, TrainSettings
    from mmcompress.training.tasks import TaskObjective, make_task

    adapter = load_model("resnet20", progress=False)
    data = load_data("lit-cifar-train").head(64 * steps)
    task = make_task(adapter, data)
    for i in range(len(data)):  # decode images before timing
        task.image(i)
    settings = TrainSettings(epochs=1, max_steps=steps, batch_size=64, lr=1e-4,
                             evaluate=False)
    trainer = Trainer(adapter, TaskObjective(adapter, task), settings, progress=False)
    summary = trainer.fit()
    return {"processes": trainer.world.size, "steps": steps,
            "examples_per_s": summary["examples_per_s"], "seconds": summary["seconds"]}


def _child(args: list[str], torchrun: int = 0) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "benchmarks.training", *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun}", "-m", "benchmarks.training", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1])
    result["process_wall_s"] = round(time.perf_counter() - start, 1)
    return result


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r.get('run')} | error: {r['error']} |"
    t = r["training"]
    return (f"| {r['run']} | {r['metric']} {r['value']:.4f} | {r['before']:.4f} | "
            f"{r['teacher']} {r['teacher_metric']:.4f} | ×{r['fraction_of_teacher']:.3f} | "
            f"{r['params']:,} / {r['params_teacher']:,} "
            f"| {t['steps']} steps × {t['batch_size']} | {r['wall_s']} s | "
            f"{r['peak_rss_mb']:.0f} MiB |")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=",".join([*RUNS, "ddp"]))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--ddp-steps", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one or args.ddp_steps:
        torch.set_num_threads(1)
        result = run_one(args.one) if args.one else ddp_worker(args.ddp_steps)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
        return
    for name in args.runs.split(","):
        if name == "ddp":
            entry = {"1": _child(["--ddp-steps", str(DDP_STEPS)]),
                     "2": _child(["--ddp-steps", str(DDP_STEPS)], torchrun=2)}
            print(f"ddp: {json.dumps(entry)}", flush=True)
        else:
            entry = {"run": name, **_child(["--one", name])}
            print(_row(entry), flush=True)
        # read again before writing: another invocation may have added runs meanwhile
        results = load(args.out)
        results[name] = entry
        store(args.out, results)
    results = load(args.out)
    print("\n| run | after training | before | teacher | × teacher | params (after / before) "
          "| training | wall | peak RSS |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if name != "ddp":
            print(_row(r))
    if "ddp" in results:
        d = results["ddp"]
        print(f"\nDDP (ResNet-20, batch 64, {DDP_STEPS} steps): "
              f"1 process {d['1'].get('examples_per_s')} ex/s, "
              f"2 processes {d['2'].get('examples_per_s')} ex/s")


if __name__ == "__main__":
    main(sys.argv[1:])
