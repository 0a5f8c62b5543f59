"""STS TSV reader and the sentence-encoder adapter (tiny in-process BERT; MiniLM when marked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

import mmcompress
from mmcompress.adapters.sentence import SentenceAdapter
from mmcompress.data import Dataset, load_data
from mmcompress.data.sts import read_sts
from mmcompress.errors import CheckpointError, DataError, UserError
from mmcompress.model_specs import load_model
from mmcompress.models.sentence_encoder import SentenceEncoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "playing", "guitar",
         "the", "woman", "dog", "runs", "on", "grass", "cat", "sleeps"]
PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ('The "dog" runs on the grass.', "A cat sleeps.", 0.4),
    ("A woman is playing.", "A man is playing.", 2.5),
]
INT8 = {
    "stages": [{"quantize": {"method": "rtn", "bits": 8}}],
    "evaluate": {"metrics": ["stsb_spearman", "fidelity_cosine"], "latency_repeats": 1},
}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _stsb_line(i: int, a: str, b: str, score: float, extra: int = 0) -> str:
    fields = ["main-captions", "MSRvid", "2012test", f"{i:04d}", f"{score:.3f}", a, b]
    return "\t".join(fields + ["extra"] * extra)


def tiny_config() -> BertConfig:
    return BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )


@pytest.fixture
def tiny_adapter() -> SentenceAdapter:
    torch.manual_seed(0)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    return SentenceAdapter(SentenceEncoder(tiny_config()), tokenizer, max_seq_length=24)


@pytest.fixture
def sts_file(tmp_path: Path) -> Path:
    lines = [_stsb_line(i, a, b, s, extra=2 * (i == 1)) for i, (a, b, s) in enumerate(PAIRS)]
    return _write(tmp_path / "sts-dev.csv", lines)


# ---- the STS reader ------------------------------------------------------------------------


def test_reads_sts_benchmark_layout(sts_file: Path) -> None:
    data = load_data(sts_file)
    assert (data.task, data.name, len(data)) == ("sts", "sts-dev", 3)
    assert data.texts == [a for a, _, _ in PAIRS]
    assert data.texts_b == [b for _, b, _ in PAIRS]
    assert data.scores == pytest.approx([s for _, _, s in PAIRS])
    assert data.texts_b[0] == "A man plays the guitar."  # later fields (a 9-field row) ignored
    assert '"dog"' in data.texts[1]  # quotes are text, not CSV quoting


@pytest.mark.parametrize(
    "lines",
    [
        [f"{s}\t{a}\t{b}" for a, b, s in PAIRS],
        [f"{a}\t{b}\t{s}" for a, b, s in PAIRS],
        ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s}" for a, b, s in PAIRS],
        ["score\ts1\ts2", f"{PAIRS[0][2]}\t10\t11"] + [f"{s}\t{a}\t{b}" for a, b, s in PAIRS[1:]],
    ],
    ids=["score-first", "score-last", "header", "numeric-sentences-with-header"],
)
def test_reads_three_column_layouts(tmp_path: Path, lines: list[str]) -> None:
    data = load_data(_write(tmp_path / "pairs.tsv", lines))
    assert data.task == "sts"
    assert data.scores == pytest.approx([s for _, _, s in PAIRS])
    assert data.texts[1:] == [a for a, _, _ in PAIRS[1:]]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("main-captions\tMSRvid\t2012test\t0009\t3.0\tonly one sentence", "line 2: 6 tab"),
        (_stsb_line(9, "a", "b", 0.0).replace("0.000", "high"), "line 2: score 'high'"),
        (_stsb_line(9, "a", "b", 0.0).replace("0.000", "nan"), "line 2: score 'nan'"),
    ],
    ids=["too-few-fields", "non-numeric-score", "nan-score"],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", [_stsb_line(0, *PAIRS[0]), bad])
    with pytest.raises(DataError, match=message) as info:
        load_data(path)
    assert str(path) in str(info.value)


def test_unreadable_layouts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="which column holds the score"):
        read_sts(_write(tmp_path / "a.tsv", ["1\tx\t2", "3\ty\t4"]))
    with pytest.raises(DataError, match="4 tab-separated fields"):
        read_sts(_write(tmp_path / "b.tsv", ["1\tx\ty\tz"]))
    with pytest.raises(DataError, match="no sentence pairs"):
        read_sts(_write(tmp_path / "c.tsv", [""]))


# ---- the adapter ---------------------------------------------------------------------------


def test_encode_texts_gives_unit_vectors_independent_of_padding(tiny_adapter) -> None:
    texts = ["a man is playing guitar", "a dog", "the woman runs on the grass"] * 3
    emb = tiny_adapter.encode_texts(texts, batch_size=4)
    assert emb.shape == (9, 32) and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(9))
    alone = tiny_adapter.encode_texts(["a dog"])  # no padding: mean pooling must ignore pads
    torch.testing.assert_close(alone[0], emb[1], atol=1e-5, rtol=1e-5)


def test_latency_input_is_one_padded_text_batch(tiny_adapter) -> None:
    from mmcompress.adapters.base import LATENCY_SEQ_LEN

    runs = tiny_adapter.latency_inputs(3)
    assert set(runs) == {"text"}
    assert runs["text"]().shape == (3, 32)
    assert tiny_adapter.text_tensors(["a"], pad_to=LATENCY_SEQ_LEN)["input_ids"].shape[1] == 32


def test_int8_compress_save_load_gives_identical_outputs(tiny_adapter, tmp_path: Path) -> None:
    data = Dataset("pairs", "sts", texts=[p[0] for p in PAIRS] * 2,
                   texts_b=[p[1] for p in PAIRS] * 2, scores=[p[2] for p in PAIRS] * 2)
    texts = data.texts + data.texts_b
    before = tiny_adapter.encode_texts(texts)
    result = mmcompress.compress(tiny_adapter, INT8, out=tmp_path / "out", data=data,
                                 progress=False)
    assert result.report["after"]["fidelity_cosine"] > 0.99
    compressed = result.adapter.encode_texts(texts)
    assert not torch.equal(before, compressed)  # the weights did change
    loaded = mmcompress.load(tmp_path / "out")
    assert isinstance(loaded, SentenceAdapter) and loaded.max_seq_length == 24
    assert torch.equal(loaded.encode_texts(texts), compressed)


def test_reload_without_tokenizer_is_a_checkpoint_error(tiny_adapter, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="tokenizer"):
        SentenceAdapter.from_architecture(tiny_adapter.architecture(), tmp_path)


def _saved_output(adapter: SentenceAdapter, folder: Path) -> Path:
    from mmcompress.io.checkpoint import save_checkpoint

    save_checkpoint(adapter, folder, None, [])
    return folder


def test_saved_tokenizer_is_hashed_in_the_manifest(tiny_adapter, tmp_path: Path) -> None:
    """An edited or deleted tokenizer file is refused (it was read silently: a swapped vocab
    changed every output, a missing one fell back to another tokenizer)."""
    out = _saved_output(tiny_adapter, tmp_path / "out")
    manifest = json.loads((out / "mmcompress.json").read_text())
    listed = {e["file"] for e in manifest["assets"]}
    assert "tokenizer/tokenizer.json" in listed and all(f.startswith("tokenizer/")
                                                        for f in listed)
    tok = out / "tokenizer" / "tokenizer.json"
    table = json.loads(tok.read_text())
    vocab = table["model"]["vocab"]
    a, b = list(vocab)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tok.write_text(json.dumps(table))
    with pytest.raises(CheckpointError, match="tokenizer.json is truncated or altered"):
        mmcompress.load(out)
    tok.unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        mmcompress.load(out)
    out = _saved_output(tiny_adapter, tmp_path / "out2")
    (out / "tokenizer" / "added_tokens.json").write_text("{}")
    with pytest.raises(CheckpointError, match="added_tokens.json is not listed .* an asset is"):
        mmcompress.load(out)


def test_assets_list_cannot_be_dropped_or_point_outside(tiny_adapter, tmp_path: Path) -> None:
    out = _saved_output(tiny_adapter, tmp_path / "out")
    path = out / "mmcompress.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "assets"}))
    with pytest.raises(CheckpointError, match="altered: its contents are not those saved"):
        mmcompress.load(out)
    from mmcompress.io.checkpoint import _check_assets  # behind the digest: defence in depth

    for name in ("../elsewhere/tokenizer.json", "/etc/passwd"):
        outside = dict(manifest["assets"][0], file=name)
        with pytest.raises(CheckpointError, match="not a path inside the folder"):
            _check_assets(out, {"assets": [outside]})


@pytest.fixture
def tiny_folder(tiny_adapter, tmp_path: Path) -> Path:
    """A tiny BERT saved as a local Hugging Face folder with its tokenizer."""
    folder = tmp_path / "tiny-bert"
    BertModel(tiny_config(), add_pooling_layer=False).save_pretrained(folder)
    tiny_adapter.tokenizer.save_pretrained(str(folder))
    return folder


def test_bert_folder_loads_as_sentence_encoder(tiny_folder: Path) -> None:
    adapter = load_model(tiny_folder, progress=False)
    assert isinstance(adapter, SentenceAdapter)
    assert adapter.max_seq_length == 64  # 256 by default, capped by the position table
    (tiny_folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    assert load_model(tiny_folder, progress=False).max_seq_length == 16
    for bad in (-5, "abc"):  # -5 was taken; 'abc' was an internal error
        (tiny_folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": bad}))
        with pytest.raises(UserError, match="max_seq_length|cannot be loaded"):
            load_model(tiny_folder, progress=False)


def test_folder_with_cls_pooling_is_refused(tiny_folder: Path) -> None:
    (tiny_folder / "1_Pooling").mkdir()
    (tiny_folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    with pytest.raises(UserError, match="mean pooling"):
        load_model(tiny_folder, progress=False)


def test_default_data_without_shared_data_is_a_data_error(tmp_path, monkeypatch) -> None:
    assert SentenceAdapter.default_data == "stsb-dev"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMCOMPRESS_SHARED_DATA", raising=False)
    with pytest.raises(DataError, match="stsb-dev.*not found"):
        load_data("stsb-dev")


# ---- the pretrained MiniLM on real data ----------------------------------------------------


@pytest.mark.integration
def test_minilm_reproduces_stsb_dev_spearman(shared_data: Path) -> None:
    data = load_data(shared_data / "stsb" / "sts-dev.csv")
    assert len(data) == 1500
    result = mmcompress.evaluate("minilm", data, {"metrics": ["stsb_spearman"]}, progress=False)
    assert result["metrics"]["stsb_spearman"] == pytest.approx(0.8672, abs=1e-3)
