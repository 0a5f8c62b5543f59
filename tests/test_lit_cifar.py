"""lit-cifar: the split, the cached training, the tiny model, and held-out zero-shot accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig

from mmcompress.adapters.frozen_text import load_or_train
from mmcompress.adapters.preprocess import HashTokenizer
from mmcompress.data.cifar import LIT_TRAIN_TEMPLATES as TRAIN_TEMPLATES
from mmcompress.data.cifar import split_per_class
from mmcompress.data.dataset import Dataset
from mmcompress.data.readers import CLASS_TEMPLATES
from mmcompress.models.lit_cifar import LitCifarDualEncoder, train_projection
from mmcompress.models.sentence_encoder import SentenceEncoder

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (SHARED / "resnet_cifar10").is_dir() or not (SHARED / "cifar10" / "test").is_dir(),
    reason=f"shared data not found at {SHARED}",
)


def _tiny_lit(vocab_size: int = 64) -> LitCifarDualEncoder:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return LitCifarDualEncoder(SentenceEncoder(config), depth=20).eval()


def _hash_tokenize(texts):
    return HashTokenizer(64, 16, bos=None, eos=1, pad=0)(texts)


def test_split_per_class_takes_the_first_of_each_class_in_order():
    data = Dataset(
        name="toy",
        task="classification",
        images=[np.full((1, 1, 3), i, np.float32) for i in range(7)],
        labels=[0, 0, 0, 1, 1, 2, 1],
        class_names=["a", "b", "c"],
        templates=["{}"],
    )
    head, rest = split_per_class(data, 2, ("train", "eval"))
    assert (head.name, rest.name) == ("train", "eval")
    assert head.labels == [0, 0, 1, 1, 2] and rest.labels == [0, 1]
    assert [int(im[0, 0, 0]) for im in head.images] == [0, 1, 3, 4, 5]
    assert [int(im[0, 0, 0]) for im in rest.images] == [2, 6]
    assert head.class_names == rest.class_names == data.class_names


def test_training_captions_share_no_wording_with_evaluation_prompts():
    assert not set(TRAIN_TEMPLATES) & set(CLASS_TEMPLATES)
    for template in TRAIN_TEMPLATES:
        assert not {"photo", "picture", "image"} & set(template.split()), template


def test_tiny_model_embeds_and_rebuilds_from_architecture():
    model = _tiny_lit()
    emb = model.encode_image(torch.randn(3, 3, 32, 32))
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    rebuilt = LitCifarDualEncoder.from_architecture(model.architecture())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_train_projection_changes_only_the_projection():
    model = _tiny_lit()
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(24)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = train_projection(
        model,
        images,
        [i % 3 for i in range(24)],
        ["cat", "dog", "ship"],
        lambda ims: torch.as_tensor(np.stack(ims)).permute(0, 3, 1, 2),
        _hash_tokenize,
        progress=False,
    )
    assert np.isfinite(loss)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"visual_projection.weight", "visual_projection.bias", "logit_scale"}


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.text = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)


def test_load_or_train_caches_the_trained_part_and_rebuilds_a_broken_cache(tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    calls = []

    def trainer(model: _Toy):
        def train() -> None:
            calls.append(1)
            with torch.no_grad():
                model.head.weight.fill_(0.5)

        return train

    first = _Toy()
    load_or_train(first, "toy", "k1", trainer(first))
    assert "training the built-in toy model on first use" in capsys.readouterr().err
    path = tmp_path / "toy-k1.safetensors"
    assert set(load_file(str(path))) == {"head.weight", "head.bias"}
    second = _Toy()
    load_or_train(second, "toy", "k1", trainer(second))
    assert len(calls) == 1 and capsys.readouterr().err == ""  # nothing to say when cached
    torch.testing.assert_close(second.head.weight, torch.full((2, 2), 0.5))
    path.write_bytes(b"garbage")
    third = _Toy()
    load_or_train(third, "toy", "k1", trainer(third))
    assert len(calls) == 2 and set(load_file(str(path))) == {"head.weight", "head.bias"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file stays


def test_a_cache_folder_that_cannot_be_written_trains_for_the_run_with_a_warning(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")  # a folder under a file cannot be made
    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path / "file" / "cache"))
    model = _Toy()

    def train() -> None:
        with torch.no_grad():
            model.head.weight.fill_(0.5)

    load_or_train(model, "toy", "k1", train)
    err = capsys.readouterr().err
    assert "warning: cannot write the cache folder" in err and "MMCOMPRESS_CACHE" in err
    torch.testing.assert_close(model.head.weight, torch.full((2, 2), 0.5))


def test_a_cache_write_that_fails_after_training_keeps_the_model_with_a_warning(
        tmp_path, monkeypatch, capsys):
    """A full disk found only when the trained weights are saved lost the training too."""
    import errno

    import mmcompress.adapters.frozen_text as frozen_text

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(frozen_text, "save_file", full)
    model = _Toy()

    def train() -> None:
        with torch.no_grad():
            model.head.weight.fill_(0.5)

    load_or_train(model, "toy", "k1", train)
    assert "No space left on device" in capsys.readouterr().err
    torch.testing.assert_close(model.head.weight, torch.full((2, 2), 0.5))
    assert not list(tmp_path.iterdir())


@pytest.mark.integration
@needs_data
def test_lit_cifar_split_is_fixed_and_disjoint(monkeypatch):
    from mmcompress.data.cifar import LIT_TRAIN_PER_CLASS, lit_cifar_split

    monkeypatch.setenv("MMCOMPRESS_SHARED_DATA", str(SHARED))
    train, held_out = lit_cifar_split()
    assert len(train) == len(held_out) == 4000 and LIT_TRAIN_PER_CLASS == 400
    assert not set(train.images) & set(held_out.images)
    for label in range(10):
        tr = sorted(p.name for p, y in zip(train.images, train.labels) if y == label)
        ev = sorted(p.name for p, y in zip(held_out.images, held_out.labels) if y == label)
        assert len(tr) == len(ev) == 400 and tr[-1] < ev[0]
    assert held_out.templates == CLASS_TEMPLATES
    # calibrating on the training part never sees an evaluation prompt
    assert train.templates == TRAIN_TEMPLATES
    assert not set(train.all_texts()) & set(held_out.all_texts())


@pytest.mark.integration
@needs_data
def test_lit_cifar_zero_shot_on_held_out_images(monkeypatch):
    """Trains lit-cifar on first use (about a minute; cached after) and scores unseen images."""
    from mmcompress.data import load_data
    from mmcompress.evaluation.evaluate import quality
    from mmcompress.model_specs import load_model

    monkeypatch.setenv("MMCOMPRESS_SHARED_DATA", str(SHARED))
    adapter = load_model("lit-cifar", progress=False)
    assert adapter.default_data == "lit-cifar-eval"
    subset, _ = split_per_class(load_data(adapter.default_data), 50, ("subset", "rest"))
    assert len(subset) == 500
    assert quality(adapter, subset).metrics["zeroshot_top1"] >= 0.80


@pytest.mark.integration
def test_lit_adapter_rtn_save_load_identical(tmp_path):
    """Tiny towers with MiniLM's tokenizer: int8 RTN, save, reload, identical embeddings."""
    from mmcompress.adapters.lit_cifar import LitCifarAdapter
    from mmcompress.io.checkpoint import load_checkpoint, save_checkpoint
    from mmcompress.methods import StageContext
    from mmcompress.methods.rtn import RTNConfig, apply_rtn

    adapter = LitCifarAdapter(_tiny_lit(vocab_size=30522), LitCifarAdapter.tokenizer_for(None))
    apply_rtn(adapter, RTNConfig(), StageContext(progress=False))
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(3)]
    texts = ["a photo of a cat.", "a picture of a ship."]
    save_checkpoint(adapter, tmp_path, "test", [])
    reloaded = load_checkpoint(tmp_path)
    assert isinstance(reloaded, LitCifarAdapter) and (tmp_path / "tokenizer").is_dir()
    for encode in ("encode_images", "encode_texts"):
        data = images if encode == "encode_images" else texts
        got, want = getattr(reloaded, encode)(data), getattr(adapter, encode)(data)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
