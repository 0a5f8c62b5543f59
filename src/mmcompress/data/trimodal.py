"""Tri-modal digits: one handwritten image, one spoken (or keyed) digit and one short text per
example, all of the same digit — except for a share where one modality is missing or shows
another digit (the label is then what the other two agree on), so that fusion matters.

- Images: scikit-learn's handwritten digits, split 70/30 as the demo does.
- Audio: the Free Spoken Digit Dataset (``fsdd``, real recordings) when ``../shared/data`` is
  there, split by speaker: `HELD_OUT_SPEAKERS` only in evaluation. Elsewhere keypad (DTMF) tones
  with noise and timing jitter (``tones``), so the built-in model works anywhere.
- Text: digit words and phrases with typos; evaluation phrases use wordings training never sees.

Besides ``train`` and ``eval``, the training split divides `FOLDS` ways into ``fit`` and
``validation`` (fold k: the k-th of the training speakers, in name order modulo `FOLDS`, and a
quarter of the training images held out of ``fit``): a model trained on ``fit`` meets new
speakers and new images on ``validation``, as the final model meets them on ``eval``, without
ever seeing ``eval``. (With tones, ``fit`` and ``validation`` are fresh tones of their own.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..shared_data import shared_data_dir
from .audio import dtmf_tone, read_wav
from .dataset import Dataset
from .demo import DIGIT_WORDS, digits_split

MODALITIES = ("image", "text", "audio")
HELD_OUT_SPEAKERS = ("george",)
FOLDS = 4  # ``fit``/``validation`` divisions of the training split (by speaker, and images)
SPLITS = ("train", "eval", "fit", "validation")
_TONES = {"train": 2000, "eval": 500, "fit": 1500, "validation": 500}
MISSING_SHARE = 0.15  # one modality (chosen at random) absent
CONTRADICT_SHARE = 0.10  # one modality shows another digit
TYPO_RATE = 0.12  # per character
TRAIN_PHRASES = ["{word}", "the number {word}", "digit {num}", "{num}", "it is a {word}",
                 "a {word}", "number {num}", "the digit {word}", "{word} please", "dial {num}"]
EVAL_PHRASES = ["{word}", "this one is {word}", "press {num}", "my digit: {word}",
                "the value {num}", "{word}!"]
_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


@dataclass
class TrimodalSplit:
    """A tri-modal dataset and, for training, the digit each item really shows."""

    data: Dataset
    item_labels: np.ndarray  # [N, 3]: digit of image, text, audio (-1 where missing)
    audio_source: str


def audio_source() -> str:
    """``fsdd`` when the shared recordings are there, else ``tones``."""
    try:
        shared_data_dir("fsdd")
        return "fsdd"
    except DataError:
        return "tones"


def fsdd_recordings(split: str, fold: int = 0) -> tuple[list[Path], list[int]]:
    """FSDD files and digits of `split` (one of `SPLITS`; ``fit`` and ``validation`` of `fold`)."""
    folder = shared_data_dir("fsdd") / "recordings"
    found = [(p, m) for p in sorted(folder.glob("*.wav")) if (m := _FSDD_NAME.match(p.name))]
    if not found:
        raise DataError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{i}}.wav) in {folder}")
    trained = sorted({m.group(2) for _, m in found} - set(HELD_OUT_SPEAKERS))
    speakers = {"eval": set(HELD_OUT_SPEAKERS), "train": set(trained),
                "validation": set(trained[fold::FOLDS])}
    speakers["fit"] = speakers["train"] - speakers["validation"]
    chosen = [(p, int(m.group(1))) for p, m in found if m.group(2) in speakers[split]]
    if not chosen:
        raise DataError(f"no FSDD recordings for the {split} split in {folder}")
    return [p for p, _ in chosen], [d for _, d in chosen]


def typo(text: str, rng: np.random.Generator, rate: float = TYPO_RATE) -> str:
    """Randomly drop, double, swap or replace characters (about `rate` of them)."""
    out: list[str] = []
    chars = list(text)
    i = 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            kind = rng.integers(4)
            if kind == 0:
                pass  # dropped
            elif kind == 1:
                out += [c, c]
            elif kind == 2 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
            else:
                out.append(chr(ord("a") + int(rng.integers(26))))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def digit_phrase(digit: int, rng: np.random.Generator, phrases: list[str]) -> str:
    template = phrases[int(rng.integers(len(phrases)))]
    return typo(template.format(word=DIGIT_WORDS[digit], num=digit), rng)


def _audio_pool(split: str, source: str, rng: np.random.Generator,
                fold: int) -> tuple[list[np.ndarray], np.ndarray]:
    if source == "fsdd":
        files, labels = fsdd_recordings(split, fold)
        return [read_wav(f) for f in files], np.asarray(labels)
    labels = np.arange(_TONES[split]) % 10
    return [dtmf_tone(int(d), rng) for d in labels], labels


def _image_pool(split: str, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """The digit images of `split`: the demo's test images for 'eval', its training images
    for 'train', and a fixed `FOLDS`-way division of those for 'fit' and 'validation'."""
    x_train, y_train, x_test, y_test = digits_split()
    if split in ("train", "eval"):
        return (x_train, y_train) if split == "train" else (x_test, y_test)
    order = np.random.default_rng(0).permutation(len(x_train))
    held = np.zeros(len(order), dtype=bool)
    held[order[fold::FOLDS]] = True
    part = held if split == "validation" else ~held
    return x_train[part], y_train[part]


def build_split(split: str, source: str | None = None, seed: int | None = None,
                fold: int = 0) -> TrimodalSplit:
    """Pair items of the same digit into examples: one per audio item of `split` (``fit`` and
    ``validation``: of division `fold`).

    A `MISSING_SHARE` of examples lose one modality, a `CONTRADICT_SHARE` get one item of
    another digit; both choices are seeded, so a split is the same on every call.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0 <= fold < FOLDS:
        raise ValueError(f"fold must be in 0..{FOLDS - 1}, got {fold}")
    source = source or audio_source()
    # train 0 and eval 1 (as always); fold k's fit 4 + 2k and validation 5 + 2k
    default_seed = SPLITS.index(split) if split in ("train", "eval") else \
        len(SPLITS) + 2 * fold + (split == "validation")
    rng = np.random.default_rng(default_seed if seed is None else seed)
    images, image_labels = _image_pool(split, fold)
    phrases = EVAL_PHRASES if split == "eval" else TRAIN_PHRASES
    audio, audio_labels = _audio_pool(split, source, rng, fold)
    by_digit = {d: np.flatnonzero(image_labels == d) for d in range(10)}
    n = len(audio)
    labels = audio_labels.astype(int)
    item = np.repeat(labels[:, None], 3, axis=1)
    fate = rng.random(n)
    which = rng.integers(3, size=n)
    contradict = (fate >= MISSING_SHARE) & (fate < MISSING_SHARE + CONTRADICT_SHARE)
    item[contradict, which[contradict]] = (labels[contradict]
                                           + rng.integers(1, 10, size=contradict.sum())) % 10
    pool_by_digit = {d: np.flatnonzero(audio_labels == d) for d in range(10)}
    out_images, out_texts, out_audio = [], [], []
    for i in range(n):
        img_d, txt_d, aud_d = item[i]
        out_images.append(images[rng.choice(by_digit[img_d])])
        out_texts.append(digit_phrase(int(txt_d), rng, phrases))
        same = aud_d == labels[i]
        out_audio.append(audio[i] if same else audio[rng.choice(pool_by_digit[aud_d])])
    missing = np.flatnonzero(fate < MISSING_SHARE)
    for i in missing:
        column = (out_images, out_texts, out_audio)[which[i]]
        column[i] = None
        item[i, which[i]] = -1
    part = f"-{fold}" if split in ("fit", "validation") else ""
    name = f"trimodal-{split}{part} ({_describe(source)})"
    data = Dataset(name=name, task="multimodal", images=out_images, texts=out_texts,
                   audio=out_audio, labels=labels.tolist(), class_names=list(DIGIT_WORDS))
    return TrimodalSplit(data, item, source)


def _describe(source: str) -> str:
    if source == "fsdd":
        return f"FSDD speech, speakers {'+'.join(HELD_OUT_SPEAKERS)} held out for evaluation"
    return "synthetic keypad tones: ../shared/data/fsdd not found"


def trimodal_eval() -> Dataset:
    """The held-out tri-modal set (data spec ``trimodal``)."""
    return build_split("eval").data


def trimodal_train() -> Dataset:
    """The training tri-modal set (data spec ``trimodal-train``), e.g. for calibration."""
    return build_split("train").data
