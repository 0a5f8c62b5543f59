"""Sensitivity probes and the bit budget."""

import copy

import pytest
import torch

from mmcompress.data import load_data
from mmcompress.errors import RecipeError
from mmcompress.evaluation.evaluate import saved_size_bytes
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import METHODS, StageContext
from mmcompress.methods.allocation import allocate_bits
from mmcompress.modules.quantized import QuantLinear, quantized_bytes
from mmcompress.quantization.grid import QuantGrid
from mmcompress.recipe import load_recipe
from mmcompress.sensitivity import Probe, layer_sensitivity, tower_sensitivity

GRIDS = {4: QuantGrid(4, 16), 8: QuantGrid(8, 16)}


def test_quantized_bytes_matches_the_module():
    q = QuantLinear.from_linear(torch.nn.Linear(40, 8), QuantGrid(4, 16, symmetric=False))
    tensors = [q.qweight, q.scale, q.zero]
    assert quantized_bytes(8, 40, q.grid) == sum(t.numel() * t.element_size() for t in tensors)


def test_allocation_lowers_the_least_sensitive_layers_first():
    shapes = {"a": (64, 64), "b": (64, 64), "c": (64, 64)}
    loss = {4: {"a": 0.5, "b": 0.01, "c": 0.02}, 8: {"a": 0.0, "b": 0.0, "c": 0.0}}
    fp32 = 3 * 64 * 64 * 4
    bits, total = allocate_bits(fp32, shapes, loss, GRIDS, target=0.235 * fp32)
    assert bits == {"a": 8, "b": 4, "c": 4}
    assert total <= 0.235 * fp32


def test_unreachable_budget_is_a_recipe_error():
    shapes = {"a": (8, 8)}
    with pytest.raises(RecipeError, match="out of reach"):
        allocate_bits(8 * 8 * 4, shapes, {4: {"a": 0}, 8: {"a": 0}}, GRIDS, target=0.01 * 8 * 8 * 4)


def test_probe_restores_the_model(tiny_clip):
    data = load_data("demo").head(8)
    texts = ["a one"]
    before = tiny_clip.encode_texts(texts)
    probe = Probe.on(tiny_clip, data, 8)
    layers = {n: m for n, m in tiny_clip.model.named_modules() if isinstance(m, torch.nn.Linear)}
    towers = tower_sensitivity(probe, layers, lambda n, m: QuantLinear.from_linear(m, GRIDS[4]))
    assert set(towers) == {"vision", "text", "projector"}
    assert all(0 <= t["fidelity_loss"] < 1 for t in towers.values())
    some = dict(list(layers.items())[:3])
    losses = layer_sensitivity(probe, some, lambda n, m: QuantLinear.from_linear(m, GRIDS[4]),
                               progress=False)
    assert set(losses) == set(some)
    assert torch.equal(tiny_clip.encode_texts(texts), before)


def test_rtn_with_budget_meets_the_size(tiny_clip, tmp_path):
    fp32 = saved_size_bytes(tiny_clip.model)
    recipe = {"stages": [{"quantize": {"method": "rtn", "group_size": 16, "targets": ["text"],
                                       "budget": {"size_ratio": 0.67, "samples": 8}}}]}
    stage = load_recipe(recipe).stages[0]
    ctx = StageContext(data=load_data("demo"), progress=False)
    summary = METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, ctx)
    assert summary["predicted_size_ratio"] <= 0.67
    assert summary["bits_per_layer"]["4"] > 0 and summary["bits_per_layer"]["8"] > 0
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    actual = (tmp_path / "model.safetensors").stat().st_size / fp32
    assert actual == pytest.approx(summary["predicted_size_ratio"], abs=0.02)


def _quantized_file_size(adapter, quantize: dict, tmp_path) -> int:
    stage = load_recipe({"stages": [{"quantize": quantize}]}).stages[0]
    ctx = StageContext(data=load_data("demo"), progress=False)
    METHODS[("quantize", quantize["method"])].apply(adapter, stage.config, ctx)
    tmp_path.mkdir()
    save_checkpoint(adapter, tmp_path, "random:tiny", [])
    return (tmp_path / "model.safetensors").stat().st_size


def test_budget_same_size_as_uniform_bits_is_no_larger(tiny_clip, tmp_path):
    base = {"method": "rtn", "bits": 4, "group_size": 16, "targets": ["text"]}
    uniform = _quantized_file_size(copy.deepcopy(tiny_clip), base, tmp_path / "u")
    budget = {**base, "budget": {"same_size_as_bits": 4, "bits": [2, 4, 8], "samples": 8}}
    mixed = _quantized_file_size(tiny_clip, budget, tmp_path / "b")
    assert mixed <= uniform
    assert mixed > 0.97 * uniform  # the budget is spent, not undershot


@pytest.mark.parametrize("budget", [{}, {"size_ratio": 0.5, "same_size_as_bits": 4}])
def test_budget_needs_exactly_one_target(budget):
    with pytest.raises(RecipeError, match="exactly one"):
        load_recipe({"stages": [{"quantize": {"method": "rtn", "budget": budget}}]})
