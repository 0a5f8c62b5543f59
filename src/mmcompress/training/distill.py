"""Knowledge distillation as a trainer objective.

``L = (1 − α)·L_task + α·Σ_k w_k·L_k`` over the chosen losses k:

- ``logits`` (classifiers): Hinton KD, T²·KL(p_T ‖ p_S) at temperature T;
- ``features``: MSE between block outputs over real tokens (student block j ↔ the teacher
  block it was before blocks were removed, else spread evenly: j ↔ ⌈(j+1)·n/m⌉ − 1),
  through a learned linear projection (1×1 convolution for feature maps) where widths
  differ; every pass of a block counts (a sentence pair runs the encoder once per side);
- ``attention``: KL(teacher ‖ student) of the same blocks' attention maps, over real queries;
- ``affinity`` (dual encoders): TinyCLIP affinity mimicking, soft cross-entropy between the
  teacher's and the student's image→text and text→image distributions over the batch;
- ``clip_kd`` (dual encoders; sentence encoders get the feature part only): CLIP-KD's feature
  loss (squared distance of embeddings) plus its interactive contrastive loss (student images
  against teacher texts and student texts against teacher images).

The teacher is frozen and runs under ``no_grad``; when only output losses are used, its
outputs are cached per example (image index, caption text, sentence pair) after the first
time they are computed.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

from ..adapters import Adapter
from ..errors import RecipeError, UserError
from ..structured.groups import block_origin
from . import losses
from .checkpoints import state_digest
from .taps import Taps, block_lists
from .tasks import Batch, ContrastiveTask, Outputs, TrainingTask, make_task, model_device, to_device

LOSSES = ("logits", "features", "attention", "affinity", "clip_kd")
FOR_TASK = {
    "classification": {"logits", "features", "attention"},
    "contrastive": {"features", "attention", "affinity", "clip_kd"},
    "sts": {"features", "attention", "clip_kd"},
    "multimodal": {"logits"},
}
OUTPUT_LOSSES = {"logits", "affinity", "clip_kd"}


def spread(m: int, n: int) -> list[int]:
    """Teacher block for each of `m` student blocks over `n` teacher blocks (last ↔ last)."""
    return [math.ceil((j + 1) * n / m) - 1 for j in range(m)]


def inherited_blocks(student: nn.Module, teacher: nn.Module) -> dict[str, list[int]]:
    """For each block list the two models share, the teacher block each student block was
    before blocks were removed (a student shrunk by `student: layers`, or an earlier stage that
    removed whole blocks), for a teacher that is the model before those removals. Lists where
    some block has no such teacher block are left out (they are spread evenly)."""
    s_lists, t_lists = block_lists(student), block_lists(teacher)
    out = {}
    for name in s_lists.keys() & t_lists.keys():
        at = {block_origin(b, i): i for i, b in enumerate(t_lists[name])}
        mapped = [at.get(block_origin(b, j)) for j, b in enumerate(s_lists[name])]
        if None not in mapped:
            out[name] = mapped
    return out


class _TeacherCache:
    """Teacher outputs per example key, filled as batches are first seen."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[Hashable, torch.Tensor]] = {}

    def get(self, keys: dict[str, list[Hashable]]) -> Outputs | None:
        if not keys:
            return None
        try:
            return {name: torch.stack([self.rows[name][k] for k in ks]) if ks != [None]
                    else self.rows[name][None] for name, ks in keys.items()}
        except KeyError:
            return None

    def put(self, keys: dict[str, list[Hashable]], out: Outputs) -> None:
        for name, ks in keys.items():
            store = self.rows.setdefault(name, {})
            if ks == [None]:
                store[None] = out[name].detach()
            else:
                for k, row in zip(ks, out[name].detach()):
                    store[k] = row


class DistillObjective:
    """Student task loss blended with distillation losses against a frozen teacher."""

    def __init__(self, student: Adapter, teacher: Adapter, task: TrainingTask,
                 losses_: list[str], alpha: float = 0.5, temperature: float = 2.0,
                 weights: dict[str, float] | None = None,
                 layer_map: dict[str, list[int]] | None = None, cache: bool = True,
                 seed: int = 0) -> None:
        self.student, self.teacher, self.task = student, teacher, task
        self.losses = list(dict.fromkeys(losses_))
        self.alpha, self.temperature = alpha, temperature
        self.weights = {k: (weights or {}).get(k, 1.0) for k in self.losses}
        self._check_losses(teacher)
        teacher.model.eval().requires_grad_(False)
        inner = {"features", "attention"} & set(self.losses)
        self.cache = _TeacherCache() if cache and not inner else None
        self.pairs = self._pairs(layer_map) if inner else {}
        s_lists = {n: [j for j, _ in p] for n, p in self.pairs.items()}
        t_lists = {n: [i for _, i in p] for n, p in self.pairs.items()}
        self.s_taps = Taps(student.model, s_lists, "features" in inner, "attention" in inner)
        self.t_taps = Taps(teacher.model, t_lists, "features" in inner, "attention" in inner)
        self.modules: nn.Module = nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):  # the projections' initial weights: from
            torch.manual_seed(seed)  # the stage's seed, whatever ran before
            self._probe()

    def __len__(self) -> int:
        return len(self.task)

    def describe(self) -> dict[str, Any]:
        return {"objective": "distill", **self.task.describe(),
                "teacher": state_digest(self.teacher.model), "losses": self.weights,
                "alpha": self.alpha, "temperature": self.temperature,
                "pairs": {n: p for n, p in self.pairs.items()}}

    # -- checks ----------------------------------------------------------------------------
    def _check_losses(self, teacher: Adapter) -> None:
        kind = self.task.kind
        try:
            teacher_kind = make_task(teacher, self.task.data).kind
        except UserError as exc:
            raise UserError(f"the teacher's outputs do not match the student's task: {exc}") \
                from None
        if teacher_kind != kind:
            raise UserError(f"the teacher's outputs do not match the student's task: the "
                            f"teacher is trained as {teacher_kind}, the student as {kind}")
        bad = [k for k in self.losses if k not in FOR_TASK[kind]]
        if bad:
            raise RecipeError(f"distill losses {bad} do not apply to a {kind} model "
                              f"(available: {', '.join(sorted(FOR_TASK[kind]))})")

    def _pairs(self, layer_map: dict[str, list[int]] | None) -> dict[str, list[tuple[int, int]]]:
        s_lists, t_lists = block_lists(self.student.model), block_lists(self.teacher.model)
        common = [n for n in s_lists if n in t_lists]
        if not common:
            raise RecipeError("features/attention distillation needs blocks the student and "
                              "teacher share by name (transformer layers, residual blocks); "
                              f"student has {sorted(s_lists) or 'none'}, teacher "
                              f"{sorted(t_lists) or 'none'}")
        pairs = {}
        for name in common:
            m, n = len(s_lists[name]), len(t_lists[name])
            mapped = (layer_map or {}).get(name) or spread(m, n)
            if len(mapped) != m or max(mapped) >= n:
                raise RecipeError(f"layer map for {name} does not fit {m} student and {n} "
                                  "teacher blocks")
            pairs[name] = list(enumerate(mapped))
        return pairs

    def _probe(self) -> None:
        """Run both models once on two examples: check outputs agree, build projections."""
        idx = torch.arange(min(2, len(self.task)))
        s_batch, t_batch = self._batches(idx)
        with torch.no_grad():
            s_out, s_taps = self._run(self.student, self.s_taps, s_batch)
            t_out, t_taps = self._run(self.teacher, self.t_taps, t_batch)
        for name in ("logits", "image", "text", "a"):
            if name in s_out and s_out[name].shape[-1] != t_out[name].shape[-1] \
                    and OUTPUT_LOSSES & set(self.losses):
                raise UserError(f"the teacher's outputs do not match the student's: {name} is "
                                f"{t_out[name].shape[-1]}-wide for the teacher, "
                                f"{s_out[name].shape[-1]} for the student")
        for key, s_calls in s_taps.outputs.items():
            s_feat, t_feat = s_calls[0].value, t_taps.outputs[self._teacher_key(key)][0].value
            if s_feat.shape[2:] != t_feat.shape[2:] and s_feat.dim() == 4:
                raise UserError(f"feature maps of {key[0]}.{key[1]} differ in size: "
                                f"{tuple(s_feat.shape)} vs teacher {tuple(t_feat.shape)}")
            s_w, t_w = (s_feat.shape[1], t_feat.shape[1]) if s_feat.dim() == 4 else \
                (s_feat.shape[-1], t_feat.shape[-1])
            if s_w != t_w:
                proj = (nn.Conv2d(s_w, t_w, 1) if s_feat.dim() == 4 else nn.Linear(s_w, t_w))
                self.modules[_module_key(key)] = proj

    def _teacher_key(self, key: tuple[str, int]) -> tuple[str, int]:
        name, j = key
        return name, dict(self.pairs[name])[j]

    # -- the loss --------------------------------------------------------------------------
    def _batches(self, indices: torch.Tensor) -> tuple[Batch, Any]:
        """The student's batch, and a closure building the teacher's from the same draws."""
        rng = torch.get_rng_state()
        s_batch = self.task.batch(self.student, indices)
        after = torch.get_rng_state()

        def teacher_batch() -> Batch:
            torch.set_rng_state(rng)
            try:
                return self.task.batch(self.teacher, indices)
            finally:
                torch.set_rng_state(after)

        return s_batch, teacher_batch

    def _run(self, adapter: Adapter, taps: Taps, batch: Any) -> tuple[Outputs, Taps]:
        batch = batch() if callable(batch) else batch
        batch = to_device(batch, model_device(adapter))
        with taps.recording():
            out = self.task.forward(adapter, batch)
        return out, taps

    def _teacher_outputs(self, s_batch: Batch, t_batch: Any) -> tuple[Outputs, Taps]:
        keys = self.task.keys(s_batch) if self.cache is not None else None
        cached = self.cache.get(keys) if keys is not None else None
        if cached is not None:
            return cached, self.t_taps
        with torch.no_grad():
            out, taps = self._run(self.teacher, self.t_taps, t_batch)
        if keys is not None:
            self.cache.put(keys, out)
        return out, taps

    def parts(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss term on the examples `indices` (the task loss under ``task``)."""
        s_batch, t_batch = self._batches(indices)
        s_batch = to_device(s_batch, model_device(self.student))
        s_out, s_taps = self._run(self.student, self.s_taps, s_batch)
        t_out, t_taps = self._teacher_outputs(s_batch, t_batch)
        out = {"task": self.task.loss(s_out, s_batch)}
        for name in self.losses:
            out[name] = getattr(self, f"_{name}")(s_out, t_out, s_batch, s_taps, t_taps)
        return out

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        parts = self.parts(indices)
        kd = sum(self.weights[k] * parts[k] for k in self.losses)
        return (1 - self.alpha) * parts["task"] + self.alpha * kd

    def _logits(self, s: Outputs, t: Outputs, batch: Batch, *_: Any) -> torch.Tensor:
        return losses.hinton_kd(s["logits"], t["logits"], self.temperature)

    def _affinity(self, s: Outputs, t: Outputs, batch: Batch, *_: Any) -> torch.Tensor:
        text = ContrastiveTask.paired_text
        return losses.affinity_mimic(s["image"], text(s, batch), s["scale"],
                                     t["image"], text(t, batch), t["scale"])

    def _clip_kd(self, s: Outputs, t: Outputs, batch: Batch, *_: Any) -> torch.Tensor:
        if self.task.kind == "sts":
            return (losses.embedding_mse(s["a"], t["a"]) + losses.embedding_mse(s["b"], t["b"]))
        text = ContrastiveTask.paired_text
        s_text, t_text = text(s, batch), text(t, batch)
        feature = losses.embedding_mse(s["image"], t["image"]) + \
            losses.embedding_mse(s_text, t_text)
        interactive = losses.interactive_contrastive(s["image"], s_text, t["image"], t_text,
                                                     s["scale"], batch["labels"])
        return feature + interactive

    def _calls(self, key: tuple[str, int], s_taps: Taps, t_taps: Taps, maps: bool):
        """(student, teacher) records of each call of a student block and its teacher block."""
        s_calls = (s_taps.maps if maps else s_taps.outputs)[key]
        t_calls = (t_taps.maps if maps else t_taps.outputs)[self._teacher_key(key)]
        return zip(s_calls, t_calls, strict=True)

    def _features(self, s: Outputs, t: Outputs, batch: Batch, s_taps: Taps,
                  t_taps: Taps) -> torch.Tensor:
        terms = []
        for key in s_taps.outputs:
            proj = getattr(self.modules, _module_key(key), None)
            for s_call, t_call in self._calls(key, s_taps, t_taps, maps=False):
                s_feat = proj(s_call.value) if proj is not None else s_call.value
                terms.append(losses.feature_mse(s_feat, t_call.value, s_call.tokens))
        return torch.stack(terms).mean()

    def _attention(self, s: Outputs, t: Outputs, batch: Batch, s_taps: Taps,
                   t_taps: Taps) -> torch.Tensor:
        if not s_taps.maps:
            raise RecipeError("attention distillation: the shared blocks have no attention "
                              "(residual blocks); use features")
        terms = [losses.attention_kl(s_call.value, t_call.value, s_call.tokens)
                 for key in s_taps.maps
                 for s_call, t_call in self._calls(key, s_taps, t_taps, maps=True)]
        return torch.stack(terms).mean()


def _module_key(key: tuple[str, int]) -> str:
    return f"{key[0]}.{key[1]}".replace(".", "_")
