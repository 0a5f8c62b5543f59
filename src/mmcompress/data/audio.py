"""Audio input: WAV files read with the standard library, resampled in torch, and the keypad
tones that stand in for speech when the real recordings are not available."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

SAMPLE_RATE = 8000  # what the audio encoders take; FSDD is recorded at this rate
MIN_RATE = SAMPLE_RATE  # below it the 0-4 kHz band the log-mel features cover does not exist
MAX_SECONDS = 10.0
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE  # WAVE format tags


def read_wav(path: Path) -> np.ndarray:
    """A WAV file as mono float32 in [-1, 1] at `SAMPLE_RATE`: integer PCM of 8, 16, 24 or
    32 bits or 32/64-bit float, in the plain or the extensible layout, any channel count
    (averaged), cut at `MAX_SECONDS`.

    Raises:
        DataError: if the file is not such a WAV, or its rate cannot be resampled.
    """
    try:
        tag, channels, rate, bits, frames = _riff_wave(path)
    except FileNotFoundError:
        raise DataError(f"audio file {path} not found") from None
    except OSError as exc:  # a folder, no permission
        raise DataError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
    width = bits // 8
    if (tag, bits) not in {(_PCM, 8), (_PCM, 16), (_PCM, 24), (_PCM, 32), (_FLOAT, 32),
                           (_FLOAT, 64)} or channels < 1 or rate < 1:
        kind = {_PCM: "integer", _FLOAT: "float"}.get(tag, f"format {tag:#x}")
        raise DataError(f"{path}: {bits}-bit {kind} samples ({channels} channels at {rate} Hz) "
                        "are not supported (8/16/24/32-bit PCM or 32/64-bit float)")
    frames = frames[: len(frames) - len(frames) % (width * channels)]  # a file cut mid-frame
    if not frames:
        raise DataError(f"{path} holds no audio samples (leave the cell empty for a missing "
                        "recording)")
    samples = _decode(frames, tag, width)
    if not np.isfinite(samples).all():
        raise DataError(f"{path} holds NaN or Inf samples")
    mono = samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples
    return resample(mono, rate, str(path))


def _riff_wave(path: Path) -> tuple[int, int, int, int, bytes]:
    """(format tag, channels, rate, bits per sample, sample bytes up to `MAX_SECONDS`) of a
    RIFF WAVE file; the extensible layout reports its sub-format's tag."""
    with Path(path).open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            raise DataError(f"{path} is not a PCM WAV file (no RIFF/WAVE header)")
        fmt = None
        while len(chunk := f.read(8)) == 8:
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                body = f.read(size)
                if len(body) < 16:
                    raise DataError(f"{path} is not a PCM WAV file (a short fmt chunk)")
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == _EXTENSIBLE and len(body) >= 26:
                    tag = struct.unpack("<H", body[24:26])[0]
                fmt = (tag, channels, rate, bits)
            elif name == b"data":
                if fmt is None:
                    raise DataError(f"{path} is not a PCM WAV file (data before its format)")
                frame = max(fmt[1] * fmt[3] // 8, 1)
                return *fmt, f.read(min(size, (int(MAX_SECONDS * fmt[2]) + 1) * frame))
            else:
                f.seek(size, 1)
            f.seek(size % 2, 1)  # chunks are word-aligned
    raise DataError(f"{path} is not a PCM WAV file (no {'data' if fmt else 'fmt'} chunk)")


def _decode(frames: bytes, tag: int, width: int) -> np.ndarray:
    """Little-endian samples as float32 in [-1, 1]."""
    if tag == _FLOAT:
        return np.frombuffer(frames, dtype=f"<f{width}").astype(np.float32)
    if width == 1:
        return (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:  # 24-bit: widen to 32 bits, keeping the sign in the top byte
        b = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((len(b), 4), np.uint8)
        wide[:, 1:] = b
        ints = wide.view("<i4")[:, 0]
    else:
        ints = np.frombuffer(frames, dtype=f"<i{width}")
    return (ints.astype(np.float64) / float(2 ** (8 * (4 if width == 3 else width) - 1))
            ).astype(np.float32)


def resample(wave_: np.ndarray, rate: int, what: str = "audio") -> np.ndarray:
    """Band-limited (FFT) resampling of a mono signal from `rate` to `SAMPLE_RATE`.

    Raises:
        DataError: for a rate below `MIN_RATE` (the band the features need is missing).
    """
    if not len(wave_):
        raise DataError(f"{what} holds no audio samples")
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(wave_, dtype=np.float32)
    if rate < MIN_RATE:
        raise DataError(
            f"{what}: sample rate {rate} Hz cannot be resampled to {SAMPLE_RATE} Hz: it holds "
            f"nothing above {rate // 2} Hz, and the audio features need 0-{SAMPLE_RATE // 2} Hz"
        )
    x = torch.as_tensor(wave_, dtype=torch.float64)
    n_out = max(1, round(len(x) * SAMPLE_RATE / rate))
    spectrum = torch.fft.rfft(x)[: n_out // 2 + 1]
    out = torch.fft.irfft(spectrum, n=n_out) * (n_out / len(x))
    return out.float().numpy()


DTMF_ROWS = (697, 770, 852, 941)
DTMF_COLS = (1209, 1336, 1477)
# keypad position of each digit: 1-9 in three rows, 0 under 8
_KEY = {d: ((d - 1) // 3, (d - 1) % 3) for d in range(1, 10)} | {0: (3, 1)}


def dtmf_tone(digit: int, rng: np.random.Generator) -> np.ndarray:
    """A keypad tone for `digit` with random timing, loudness, detuning and noise."""
    row, col = _KEY[digit]
    seconds = rng.uniform(0.25, 0.7)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    detune = rng.uniform(0.97, 1.03, size=2)
    tone = (np.sin(2 * np.pi * DTMF_ROWS[row] * detune[0] * t + rng.uniform(0, 6.3))
            + np.sin(2 * np.pi * DTMF_COLS[col] * detune[1] * t + rng.uniform(0, 6.3)))
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    lead = np.zeros(int(rng.uniform(0.0, 0.25) * SAMPLE_RATE))
    signal = np.concatenate([lead, tone * fade * rng.uniform(0.1, 0.5)])
    signal += rng.normal(0.0, rng.uniform(0.02, 0.3), size=len(signal))
    return signal.astype(np.float32)
