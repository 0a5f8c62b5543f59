"""Tri-modal data: WAV reading and resampling, keypad tones, typos, the CSV reader and its
refusals (one `error:` line, exit 2)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmcompress.cli import app
from mmcompress.data import load_data
from mmcompress.data.audio import SAMPLE_RATE, dtmf_tone, read_wav, resample
from mmcompress.data.trimodal import typo
from mmcompress.errors import DataError


def write_wav(path: Path, rate: int, seconds: float = 0.25, freq: float = 440.0,
              channels: int = 1) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(x, channels).tobytes())
    return path


def test_wav_at_the_model_rate_reads_back(tmp_path):
    x = read_wav(write_wav(tmp_path / "a.wav", SAMPLE_RATE, channels=2))
    assert x.dtype == np.float32 and len(x) == SAMPLE_RATE // 4
    assert abs(float(np.abs(x).max()) - 0.5) < 1e-3


def test_higher_rates_are_resampled_keeping_the_tone(tmp_path):
    x = read_wav(write_wav(tmp_path / "b.wav", 44100, freq=1000.0))
    assert len(x) == round(44100 * 0.25 * SAMPLE_RATE / 44100)
    peak_hz = np.argmax(np.abs(np.fft.rfft(x))) * SAMPLE_RATE / len(x)
    assert abs(peak_hz - 1000.0) < 10


def test_a_rate_below_the_model_rate_is_refused(tmp_path):
    with pytest.raises(DataError, match="cannot be resampled"):
        read_wav(write_wav(tmp_path / "c.wav", 4000))
    with pytest.raises(DataError, match="cannot be resampled"):
        resample(np.zeros(10, np.float32), 100)


def test_a_file_that_is_not_wav_is_refused(tmp_path):
    fake = tmp_path / "d.wav"
    fake.write_bytes(b"ID3\x03\x00 this is an mp3, honestly")
    with pytest.raises(DataError, match="not a PCM WAV"):
        read_wav(fake)


def test_dtmf_tone_holds_its_keypad_frequencies():
    x = dtmf_tone(5, np.random.default_rng(0))  # row 770 Hz, column 1336 Hz
    spectrum = np.abs(np.fft.rfft(x))
    top = sorted(np.argsort(spectrum)[-2:] * SAMPLE_RATE / len(x))
    assert abs(top[0] - 770) < 40 and abs(top[1] - 1336) < 60


def test_typos_change_letters_but_not_digits():
    rng = np.random.default_rng(0)
    noisy = [typo("seven 7", rng, rate=0.5) for _ in range(20)]
    assert any(t != "seven 7" for t in noisy)
    assert all("7" in t for t in noisy)


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    write_wav(tmp_path / "one.wav", SAMPLE_RATE)
    path = tmp_path / "set.csv"
    path.write_text("label,text,audio\n" + "\n".join(rows) + "\n")
    return path


def test_csv_reader_reads_missing_cells_as_missing(tmp_path):
    data = load_data(_csv(tmp_path, ["1,one,one.wav", "seven,,one.wav", "2,two,"]))
    assert data.task == "multimodal" and data.labels == [1, 7, 2]
    assert data.texts == ["one", None, "two"] and data.audio[2] is None
    assert data.images == [None, None, None]


@pytest.mark.parametrize("rows, message", [
    (["1,one,", "2,two,"], "column 'audio' is empty"),
    (["1,one,not-there.wav"], "row 2: audio file .* not found"),
    (["eleven,one,one.wav"], "not a digit"),
    (["\u00b2,one,one.wav"], "not a digit"),  # '²' passes str.isdigit, not int()
    (["1,one, two,one.wav"], "row 2: 4 fields, the header names 3"),  # a field was dropped
    (['1,"one,one.wav'], "not a readable CSV"),  # an unterminated quote was read to the end
])
def test_csv_reader_refuses_bad_input(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_data(_csv(tmp_path, rows))


def test_cli_bad_audio_is_one_error_line(tmp_path):
    from test_fusion import FAST, tiny_adapter, tiny_data

    import mmcompress

    model = tmp_path / "model"
    recipe = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}], "evaluate": FAST}
    mmcompress.compress(tiny_adapter("late"), recipe, out=model, data=tiny_data(),
                        progress=False)
    (tmp_path / "song.wav").write_bytes(b"not a wav at all")
    csv = tmp_path / "bad.csv"
    csv.write_text("label,text,audio\n3,three,song.wav\n")
    result = CliRunner().invoke(app, ["evaluate", str(model), "--data", str(csv), "--quiet"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a PCM WAV" in lines[0]


@pytest.mark.integration  # slow: builds the whole 500-example split (seconds)
def test_without_shared_data_the_audio_is_keypad_tones(monkeypatch, tmp_path):
    from mmcompress.data.trimodal import audio_source, build_split

    monkeypatch.setenv("MMCOMPRESS_SHARED_DATA", str(tmp_path / "nothing-here"))
    assert audio_source() == "tones"
    split = build_split("eval")
    data = split.data
    assert "keypad tones" in data.name and len(data) == 500
    missing = [sum(x is None for x in col) for col in (data.images, data.texts, data.audio)]
    assert 0.10 < sum(missing) / len(data) < 0.20  # MISSING_SHARE = 0.15
    items = split.item_labels
    contradicting = ((items >= 0) & (items != np.asarray(data.labels)[:, None])).any(1)
    assert 0.05 < contradicting.mean() < 0.15  # CONTRADICT_SHARE = 0.10
    assert all(a is None or a.dtype == np.float32 for a in data.audio)


def test_fsdd_folds_hold_out_each_training_speaker_once(monkeypatch, tmp_path):
    from mmcompress.data.trimodal import FOLDS, HELD_OUT_SPEAKERS, fsdd_recordings

    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    speakers = ["ann", "bob", "cat", "dan", "eve", *HELD_OUT_SPEAKERS]
    for s in speakers:
        for d in range(10):
            (folder / f"{d}_{s}_0.wav").touch()
    (folder / "notes.txt").touch()
    monkeypatch.setenv("MMCOMPRESS_SHARED_DATA", str(tmp_path))

    def who(split: str, fold: int = 0) -> set[str]:
        return {p.name.split("_")[1] for p in fsdd_recordings(split, fold)[0]}

    assert who("eval") == set(HELD_OUT_SPEAKERS)
    assert who("train") == set(speakers) - set(HELD_OUT_SPEAKERS)
    held = [who("validation", k) for k in range(FOLDS)]
    for k in range(FOLDS):
        assert held[k] and not held[k] & who("fit", k)
        assert held[k] | who("fit", k) == who("train")
    assert set().union(*held) == who("train")  # every training speaker validates once
    assert sorted(fsdd_recordings("validation", 0)[1]) == sorted(list(range(10)) * len(held[0]))


def test_image_folds_split_the_training_images():
    from mmcompress.data.trimodal import FOLDS, _image_pool

    train = _image_pool("train", 0)[0]
    for k in range(FOLDS):
        fit, validation = _image_pool("fit", k)[0], _image_pool("validation", k)[0]
        assert len(fit) + len(validation) == len(train)
        assert abs(len(validation) - len(train) / FOLDS) <= 1
        seen = {x.tobytes() for x in fit}
        assert not any(x.tobytes() in seen for x in validation)


def test_a_wav_cut_off_mid_frame_reads_its_whole_frames(tmp_path):
    path = write_wav(tmp_path / "cut.wav", SAMPLE_RATE, channels=2)
    path.write_bytes(path.read_bytes()[:-3])  # the last frame loses 3 of its 4 bytes
    assert len(read_wav(path)) == SAMPLE_RATE // 4 - 1


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 16000])
def test_a_wav_without_samples_is_refused(tmp_path, rate):
    with pytest.raises(DataError, match="holds no audio samples"):
        read_wav(write_wav(tmp_path / "empty.wav", rate, seconds=0))


def test_an_audio_path_that_is_a_folder_is_a_data_error(tmp_path):
    (tmp_path / "x.wav").mkdir()
    with pytest.raises(DataError, match="cannot read audio file"):
        read_wav(tmp_path / "x.wav")


def _riff(fmt: bytes, samples: bytes, extra_chunk: bool = True) -> bytes:
    """A WAVE file from a fmt chunk body and sample bytes (with an odd-sized LIST chunk)."""
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    if extra_chunk:
        body += b"LIST" + (3).to_bytes(4, "little") + b"abc\0"  # padded to a word
    body += b"data" + len(samples).to_bytes(4, "little") + samples
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@pytest.mark.parametrize("layout", ["pcm16-extensible", "pcm24", "float32", "float64"])
def test_extensible_24_bit_and_float_wavs_read_like_16_bit_pcm(tmp_path, layout):
    """Python 3.11's `wave` refuses the extensible layout (ffmpeg and sox write it for more
    than two channels or 16 bits) and float samples; 24-bit PCM was refused too."""
    import struct

    rng = np.random.default_rng(0)
    signal = np.clip(rng.normal(0, 0.3, (400, 2)), -0.99, 0.99)
    bits, tag = {"pcm16-extensible": (16, 0xFFFE), "pcm24": (24, 1), "float32": (32, 3),
                 "float64": (64, 3)}[layout]
    if tag == 3:
        samples = signal.astype(f"<f{bits // 8}").tobytes()
        expected = signal.astype(np.float32)
    else:
        ints = np.round(signal * 2 ** (bits - 1)).astype(np.int64)
        raw = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, : bits // 8]
        samples = raw.tobytes()
        expected = (ints / 2 ** (bits - 1)).astype(np.float32)
    align = 2 * bits // 8
    fmt = struct.pack("<HHIIHH", tag, 2, SAMPLE_RATE, SAMPLE_RATE * align, align, bits)
    if tag == 0xFFFE:  # cbSize, valid bits, channel mask, sub-format GUID (PCM)
        fmt += struct.pack("<HHI", 22, bits, 3) + (1).to_bytes(2, "little") + bytes(14)
    path = tmp_path / "x.wav"
    path.write_bytes(_riff(fmt, samples))
    assert np.allclose(read_wav(path), expected.mean(1), atol=1e-6)


def test_a_wav_without_samples_or_of_an_unknown_format_is_refused(tmp_path):
    import struct

    path = tmp_path / "x.wav"
    path.write_bytes(_riff(struct.pack("<HHIIHH", 2, 1, SAMPLE_RATE, 0, 1, 4), b"\0" * 8))
    with pytest.raises(DataError, match="4-bit format 0x2 samples"):
        read_wav(path)
    path.write_bytes(_riff(struct.pack("<HHIIHH", 1, 1, SAMPLE_RATE, 0, 2, 16), b""))
    with pytest.raises(DataError, match="holds no audio samples"):
        read_wav(path)
