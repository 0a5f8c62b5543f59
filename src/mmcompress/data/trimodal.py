"""Tri-modal digits: one handwritten image, one spoken (or keyed) digit and one short text per
example, all of the same digit — except for a share where one modality is missing or shows
another digit (the label is then what the other two agree on), so that fusion matters.

- Images: scikit-learn's handwritten digits, split 70/30 as the demo does.
- Audio: the Free Spoken Digit Dataset (``fsdd``, real recordings) when ``../shared/data`` is
  there, split by speaker: `HELD_OUT_SPEAKERS` only in evaluation. Elsewhere keypad (DTMF) tones
  with noise and timing jitter (``tones``), so the built-in model works anywhere.
- Text: digit words and phrases with typos; evaluation phrases use wordings training never sees.
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


def fsdd_recordings(split: str) -> tuple[list[Path], list[int]]:
    """FSDD files and digits of `split` ('train': all but the held-out speakers, 'eval')."""
    folder = shared_data_dir("fsdd") / "recordings"
    files, labels = [], []
    for path in sorted(folder.glob("*.wav")):
        match = _FSDD_NAME.match(path.name)
        if match is None:
            continue
        if (match.group(2) in HELD_OUT_SPEAKERS) == (split == "eval"):
            files.append(path)
            labels.append(int(match.group(1)))
    if not files:
        raise DataError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{i}}.wav) in {folder}")
    return files, labels


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
                count: int) -> tuple[list[np.ndarray], np.ndarray]:
    if source == "fsdd":
        files, labels = fsdd_recordings(split)
        return [read_wav(f) for f in files], np.asarray(labels)
    labels = np.arange(count) % 10
    return [dtmf_tone(int(d), rng) for d in labels], labels


def build_split(split: str, source: str | None = None, seed: int | None = None) -> TrimodalSplit:
    """Pair items of the same digit into examples: one per audio item of `split`.

    A `MISSING_SHARE` of examples lose one modality, a `CONTRADICT_SHARE` get one item of
    another digit; both choices are seeded, so a split is the same on every call.
    """
    source = source or audio_source()
    rng = np.random.default_rng((0 if split == "train" else 1) if seed is None else seed)
    x_train, y_train, x_test, y_test = digits_split()
    images, image_labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    phrases = TRAIN_PHRASES if split == "train" else EVAL_PHRASES
    audio, audio_labels = _audio_pool(split, source, rng, 2000 if split == "train" else 500)
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
    name = f"trimodal-{split} ({_describe(source)})"
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
