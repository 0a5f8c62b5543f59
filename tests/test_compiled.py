"""Compiled execution of int8 models: the traced pattern, `compile_towers`, and its errors."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import apply_smoothquant
from torch import nn

import mmcompress
from mmcompress.compiled import compile_towers, compiler_missing, recompile_limit_key
from mmcompress.errors import UserError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.modules import W8A8Linear
from mmcompress.modules.int8 import W8A8PatchConv2d


@pytest.mark.parametrize("smooth", [False, True])
def test_traced_pattern_computes_the_integer_function(smooth):
    torch.manual_seed(0)
    lin = nn.Linear(48, 24)
    s = torch.rand(48) + 0.5 if smooth else None
    mod = W8A8Linear.from_linear(lin, 0.03, s)
    mod.prepare_compile()
    x = torch.randn(3, 5, 48)
    with torch.inference_mode():
        eager, traced = mod(x), mod.graph_forward(x)
    step = float(mod.act_scale) * float(mod.weight_scale.max()) * 48  # one code off per row
    assert (eager - traced).abs().max() < step
    assert F.cosine_similarity(eager.flatten(), traced.flatten(), dim=0) > 0.99999


def test_traced_pattern_quantizes_activations_to_unsigned_codes(monkeypatch):
    """Inductor lowers the pattern to oneDNN's GEMM with the activation dtype it traced, and
    oneDNN ran signed activations in its slow reference loop on an AMD EPYC."""
    from mmcompress.modules import int8

    qd = int8._decomposed_ops()
    seen = []
    real = qd.quantize_per_tensor.default

    class Spy:
        default = staticmethod(lambda *a: seen.append(a[2:]) or real(*a))

    class Ops:
        quantize_per_tensor = Spy
        dequantize_per_tensor = qd.dequantize_per_tensor
        dequantize_per_channel = qd.dequantize_per_channel

    monkeypatch.setattr(int8, "_decomposed_ops", lambda: Ops)
    mod = W8A8Linear.from_linear(nn.Linear(8, 4), 0.03)
    mod.prepare_compile()
    mod.graph_forward(torch.randn(2, 8))
    assert seen == [(int8.U8_ZERO, 0, 255, torch.uint8)]


def test_traced_pattern_needs_prepare():
    mod = W8A8Linear.from_linear(nn.Linear(8, 4), 0.05)
    with pytest.raises(RuntimeError, match="prepare_compile"):
        mod.graph_forward(torch.randn(2, 8))


def test_prepared_layer_saves_the_same_state():
    mod = W8A8Linear.from_linear(nn.Linear(8, 4), 0.05)
    keys = set(mod.state_dict())
    mod.prepare_compile()
    assert set(mod.state_dict()) == keys  # the zero-point buffer is not saved


def test_compile_without_a_compiler_is_a_user_error(tiny_clip, monkeypatch):
    monkeypatch.setattr("mmcompress.compiled.shutil.which", lambda _: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in compiler_missing()
    with pytest.raises(UserError, match="C\\+\\+ compiler"):
        compile_towers(tiny_clip)


def test_unknown_tower_is_a_user_error(tiny_clip):
    if compiler_missing():
        pytest.skip(compiler_missing())
    with pytest.raises(UserError, match="unknown tower"):
        compile_towers(tiny_clip, ["audio"])


def test_every_block_of_a_resnet_may_compile():
    """ResNet-20's nine blocks share one forward, compiled once per block: past dynamo's
    default limit of 8 the last ran eager, after a screen of warnings."""
    if compiler_missing():
        pytest.skip(compiler_missing())
    from mmcompress.adapters.classifier import ImageClassifierAdapter
    from mmcompress.models.resnet_cifar import CifarResNet

    config, key = torch._dynamo.config, recompile_limit_key()
    before = getattr(config, key)  # assigned back, not monkeypatched: its undo hides the key
    try:
        setattr(config, key, 8)
        adapter = ImageClassifierAdapter(CifarResNet(20))
        compile_towers(adapter)  # compiles lazily: nothing is built here
        assert getattr(config, key) >= sum(1 for _ in adapter.model.modules())
    finally:
        setattr(config, key, before)


@pytest.mark.integration
def test_compiled_w8a8_clip_matches_eager_and_compiles_once(tiny_clip, tmp_path):
    """Slow (inductor builds C++): the compiled towers agree with the eager int8 model, and a
    second call with the same shapes reuses the compiled code."""
    if compiler_missing():
        pytest.skip(compiler_missing())
    from torch._dynamo.utils import counters

    apply_smoothquant(tiny_clip)
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    eager = mmcompress.load(tmp_path)
    compiled = mmcompress.load(tmp_path, compiled=True)
    assert isinstance(compiled.model.vision_model.embeddings.patch_embedding, W8A8PatchConv2d)
    texts, pixels = ["a cat", "the dog"], torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        ref_t, ref_i = eager.encode_texts(texts), eager.embed_image_tensor(pixels)
        out_t, out_i = compiled.encode_texts(texts), compiled.embed_image_tensor(pixels)
        graphs = counters["stats"]["unique_graphs"]
        again = compiled.embed_image_tensor(pixels)
        assert counters["stats"]["unique_graphs"] == graphs
    assert F.cosine_similarity(out_t, ref_t).min() > 0.999
    assert F.cosine_similarity(out_i, ref_i).min() > 0.999
    assert torch.equal(again, out_i)


def test_cli_evaluate_compile_without_a_compiler_is_one_error_line(tiny_clip_folder,
                                                                   monkeypatch):
    from typer.testing import CliRunner

    from mmcompress.cli import app

    monkeypatch.setattr("mmcompress.compiled.shutil.which", lambda _: None)
    monkeypatch.delenv("CXX", raising=False)
    result = CliRunner().invoke(app, ["evaluate", str(tiny_clip_folder), "--compile",
                                      "--metrics", "size_bytes"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "C++ compiler" in lines[0]
