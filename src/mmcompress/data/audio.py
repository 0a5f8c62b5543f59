"""Audio input: WAV files read with the standard library, resampled in torch, and the keypad
tones that stand in for speech when the real recordings are not available."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

SAMPLE_RATE = 8000  # what the audio encoders take; FSDD is recorded at this rate
MIN_RATE = SAMPLE_RATE  # below it the 0-4 kHz band the log-mel features cover does not exist
MAX_SECONDS = 10.0
_DTYPES = {1: np.uint8, 2: np.int16, 4: np.int32}


def read_wav(path: Path) -> np.ndarray:
    """A WAV file as mono float32 in [-1, 1] at `SAMPLE_RATE`.

    Raises:
        DataError: if the file is not a PCM WAV, or its rate cannot be resampled.
    """
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(min(w.getnframes(), int(MAX_SECONDS * rate) + 1))
    except FileNotFoundError:
        raise DataError(f"audio file {path} not found") from None
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{path} is not a PCM WAV file ({exc})") from None
    except OSError as exc:  # a folder, no permission
        raise DataError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
    if width not in _DTYPES:
        raise DataError(f"{path}: {8 * width}-bit samples are not supported (8, 16 or 32-bit PCM)")
    frames = frames[: len(frames) - len(frames) % (width * channels)]  # a file cut mid-frame
    if not frames:
        raise DataError(f"{path} holds no audio samples (leave the cell empty for a missing "
                        "recording)")
    samples = np.frombuffer(frames, dtype=_DTYPES[width]).astype(np.float32)
    if width == 1:
        samples = samples - 128.0
    samples /= float(2 ** (8 * width - 1))
    mono = samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples
    return resample(mono, rate, str(path))


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
