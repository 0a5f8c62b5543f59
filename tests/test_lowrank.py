"""Low-rank factorization: numerics, rank allocation, the stages, save/reload, bad values."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _helpers import FAST_EVAL, toy_image_data
from torch import nn
from typer.testing import CliRunner

import mmcompress
from mmcompress.cli import app
from mmcompress.data import Dataset
from mmcompress.errors import DataError, RecipeError, UserError
from mmcompress.factorization import cp_conv, scaled_svd, tucker2_conv
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import METHODS, StageContext
from mmcompress.methods.rank_allocation import (
    LayerOptions,
    allocate_ranks,
    uniform_choice,
    uniform_ranks,
)
from mmcompress.modules.lowrank import (
    CPConv2d,
    LowRankLinear,
    TuckerConv2d,
    conv_args,
    max_useful_rank,
)
from mmcompress.recipe import CalibrationConfig, load_recipe


def _inputs(n=1024, d=64):
    torch.manual_seed(0)
    return torch.randn(n, d) @ torch.randn(d, d) * 0.3 + torch.randn(d)


def _out_err(x, w, approx):
    return float(((x @ (approx - w).T) ** 2).sum())


def test_factor_product_equals_the_truncated_svd():
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    truncated = (u[:, :6] * s[:6]) @ vh[:6]
    low = LowRankLinear.from_linear(linear, 6)
    torch.testing.assert_close(low.weight.double(), truncated, atol=1e-5, rtol=1e-5)
    x = torch.randn(5, 40)
    torch.testing.assert_close(low(x), x @ truncated.float().T + linear.bias, atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(low.to_dense()(x), low(x), atol=1e-5, rtol=1e-5)
    assert low.logical_params() == 6 * (40 + 24) + 24


def test_factors_only_where_they_save_weights():
    assert max_useful_rank(24, 40) == 14  # 24·40 / 64 = 15
    assert max_useful_rank(32, 32) == 15  # 16 exactly breaks even
    with pytest.raises(ValueError, match="saves no parameters"):
        LowRankLinear(32, 32, 16, bias=True)


def test_whitened_svd_has_less_output_error_than_plain_svd():
    x, w = _inputs(), torch.randn(48, 64)
    hessian = x.T @ x / len(x)
    plain = scaled_svd(w, hessian, "none")
    whitened = scaled_svd(w, hessian, "cholesky", damp=1e-6)
    for rank in (4, 16, 32):
        err = {k: _out_err(x, w, torch.matmul(*d.factors(rank)))
               for k, d in (("plain", plain), ("whitened", whitened))}
        assert err["whitened"] < 0.8 * err["plain"]
        # the predicted relative error per rank is the measured one
        total = float(((x @ w.T) ** 2).sum())
        assert whitened.error[rank] == pytest.approx(err["whitened"] / total, rel=1e-3)
        assert plain.error[rank] == pytest.approx(err["plain"] / total, rel=1e-2)


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_removes_the_mean_output_error(bias):
    from mmcompress.calibration import HessianCollector
    from mmcompress.methods.lowrank import SVDFactorizer, SVDWhitenConfig

    x = _inputs()
    lin = nn.Linear(64, 48, bias=bias)
    stats = HessianCollector()
    stats.add(x)
    out = {}
    for correct in (False, True):
        config = SVDWhitenConfig(rank=8, bias_correction=correct)
        layer = SVDFactorizer(config).factor("layer", lin, 8, stats)
        with torch.no_grad():
            out[correct] = layer(x) - lin(x)
    assert out[True].mean(0).abs().max() < 1e-4 < out[False].mean(0).abs().max()
    assert float((out[True] ** 2).sum()) < float((out[False] ** 2).sum())


def test_asvd_scaling_folds_back_exactly_at_full_rank():
    x, w = _inputs(), torch.randn(16, 64)
    d = scaled_svd(w, x.T @ x, "asvd", x.abs().mean(0))
    torch.testing.assert_close(torch.matmul(*d.factors(16)), w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scaling", ["asvd", "none"])
def test_scaled_svd_error_is_the_output_error_on_the_damped_gram_matrix(scaling):
    """`error[r]` = tr(E H_d Eᵀ) / tr(W H_d Wᵀ) with E = W − W_r and H_d = XᵀX + damp ·
    mean(diag) · I, the same damped matrix the Cholesky scaling whitens with, so the errors of
    every scaling are on one footing (a direction no input reached still counts a little)."""
    x = _inputs().double()
    x[:, :2] *= 10  # outlier channels: the damping term is large next to most of XᵀX
    w = torch.randn(24, 64, dtype=torch.float64)
    h = x.T @ x
    h_damped = h + 0.05 * h.diagonal().mean() * torch.eye(64, dtype=torch.float64)
    svd = scaled_svd(w, h, scaling, x.abs().mean(0), damp=0.05)
    for rank in (1, 4, 12, 23):
        e = w - torch.matmul(*svd.factors(rank)).double()
        expected = (e @ h_damped * e).sum() / (w @ h_damped * w).sum()
        assert float(svd.error[rank]) == pytest.approx(float(expected), rel=1e-4)


def test_energy_rank_counts_an_exact_tie_as_kept():
    """The smallest rank whose error is at most 1 − energy: a rank keeping exactly `energy`
    qualifies (also through float rounding), not only one keeping more."""
    exact = scaled_svd(torch.diag(torch.tensor([3.0, 2, 1, 1, 1], dtype=torch.float64)))
    assert float(exact.error[2]) == 3 / 16  # s² = 9, 4, 1, 1, 1: rank 2 keeps 13/16 exactly
    assert exact.energy_rank(13 / 16) == 2 and exact.energy_rank(0.82) == 3
    for spectrum, energy in (([0.6, 0.3, 0.1], 0.9), ([0.5, 0.3, 0.2], 0.8)):
        w = torch.diag(torch.tensor(spectrum, dtype=torch.float64).sqrt())
        assert scaled_svd(w).energy_rank(energy) == 2, spectrum


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (2, 2)])
def test_tucker_and_cp_convs_compute_their_dense_kernel(stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, (3, 5), stride, padding, bias=True)
    x = torch.randn(2, 6, 11, 9)
    tucker = TuckerConv2d(conv_args(conv), [4, 5])
    cp = CPConv2d(conv_args(conv), [7])
    for mod in (tucker, cp):
        torch.testing.assert_close(mod(x), mod.to_dense()(x), atol=1e-5, rtol=1e-4)


def test_full_rank_tucker_and_high_rank_cp_reproduce_the_kernel():
    torch.manual_seed(0)
    w = torch.randn(8, 6, 3, 3)
    first, core, last = tucker2_conv(w, 6, 8)
    torch.testing.assert_close(torch.einsum("oa,abhw,bi->oihw", last, core, first), w,
                               atol=1e-4, rtol=1e-4)
    a, b, c, d = cp_conv(torch.einsum("or,ir,hr,wr->oihw", *(torch.randn(n, 3) for n in w.shape)),
                         3)
    rebuilt = torch.einsum("or,ir,hr,wr->oihw", a, b, c, d)
    assert float(rebuilt.norm()) > 0 and all(f.isfinite().all() for f in (a, b, c, d))


def test_tucker_ranks_take_a_budget_met_exactly():
    """Ranks whose weights equal the budget fit it ("at most"): a 16×16×3×3 kernel at 832 of
    2,304 weights gets ranks (8, 8), 16·8 + 8·8·9 + 8·16 = 832."""
    from mmcompress.factorization.conv import ConvShape

    shape = ConvShape(16, 16, 3, 3)
    assert shape.tucker_params(8, 8) == 832
    assert shape.tucker_ranks(832 / 2304) == (8, 8)
    assert shape.tucker_ranks(831 / 2304) == (7, 7)


def test_svd_options_carry_the_output_error_of_their_own_rank():
    """Each option (weights, loss, rank) the allocation chooses from has the relative output
    error of that rank's factors on the calibration inputs, not of the rank one below."""
    from mmcompress.calibration import HessianCollector
    from mmcompress.methods.lowrank import SVDFactorizer, SVDWhitenConfig

    x = _inputs(d=48)
    lin = nn.Linear(48, 40)
    stats = HessianCollector()
    stats.add(x)
    factorizer = SVDFactorizer(SVDWhitenConfig(param_ratio=0.5, damp=1e-8, asymmetric=False))
    layer = factorizer.options("layer", lin, stats)
    w = lin.weight.detach()
    total = float(((x @ w.T) ** 2).sum())
    assert [r for _, _, r in layer.options] == list(range(1, max_useful_rank(40, 48) + 1))
    for weights, loss, rank in layer.options:
        assert weights == rank * (40 + 48)
        factored = factorizer.factor("layer", lin, rank, stats)
        measured = _out_err(x, w, factored.weight.detach()) / total
        assert loss == pytest.approx(measured, rel=1e-3, abs=1e-6), rank


def test_allocation_spends_the_budget_where_the_loss_is_lowest():
    # 'flat' loses much per rank removed, 'steep' has a cheap tail: the budget comes from 'steep'
    def layer(losses):
        return LayerOptions(100, [(10 * r, loss, r) for r, loss in enumerate(losses, 1)])

    layers = {"flat": layer([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]),
              "steep": layer([0.3, 0.05, 0.01, 0.005, 0.002, 0.001, 0.0, 0.0, 0.0])}
    choices, kept = allocate_ranks(layers, param_ratio=0.75)
    assert choices == {"flat": None, "steep": 5} and kept == 150
    assert uniform_choice(layers["flat"], 0.75) == 7
    with pytest.raises(RecipeError, match="out of reach"):
        allocate_ranks(layers, param_ratio=0.05)


def test_allocation_gives_the_overshoot_back_to_a_layer_whose_loss_is_flat():
    # 'free' costs nothing at any rank: its hull drops straight to rank 1 (kept 110 of the 140
    # allowed); what that overshot goes back to it, so the model keeps what the budget allows
    layers = {"free": LayerOptions(100, [(10 * r, 0.0, r) for r in range(1, 10)]),
              "costly": LayerOptions(100, [(50, 0.5, 5), (90, 0.1, 9)])}
    choices, kept = allocate_ranks(layers, param_ratio=0.7)
    assert kept == 140 and choices == {"free": 4, "costly": None}


def test_allocation_factors_a_layer_whose_first_step_is_costly():
    # factoring at all costs 0.2 at once, then each rank removed is free: the hull sees it
    layers = {"a": LayerOptions(100, [(90, 0.2, 9), (50, 0.2, 5), (10, 0.2, 1)]),
              "b": LayerOptions(100, [(90, 0.15, 9), (80, 0.3, 8)])}
    choices, kept = allocate_ranks(layers, param_ratio=0.6)
    assert choices == {"a": 1, "b": None} and kept == 110


def test_uniform_ranks_lower_the_share_to_meet_the_budget_or_refuse_it():
    # 'wide' cannot keep less than 60%: at 50% each 'fine' alone keeps 50, 110 in all
    layers = {"wide": LayerOptions(100, [(60, 0.0, 6)]),
              "fine": LayerOptions(100, [(10 * r, 0.0, r) for r in range(1, 10)])}
    assert uniform_choice(layers["wide"], 0.5) == 6 and uniform_choice(layers["fine"], 0.5) == 5
    assert uniform_ranks(layers, 0.5) == ({"wide": 6, "fine": 4}, 100)
    assert uniform_ranks(layers, 0.7) == ({"wide": 6, "fine": 7}, 130)
    with pytest.raises(RecipeError, match=r"0\.3 is out of reach: the smallest ranks keep 0\.35 "):
        uniform_ranks(layers, 0.3)


def _run(adapter, stages, data=None):
    recipe = load_recipe({"stages": stages})
    ctx = StageContext(data=data if data is not None else toy_image_data(12),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    return [METHODS[(s.kind, s.config.method)].apply(adapter, s.config, ctx)
            for s in recipe.stages]


def _reloads_identically(adapter, tmp_path):
    texts, images = ["a cat", "the dog"], [np.full((16, 16, 3), 0.5, np.float32)]
    before = adapter.encode_texts(texts), adapter.encode_images(images)
    save_checkpoint(adapter, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    assert torch.equal(loaded.encode_texts(texts), before[0])
    assert torch.equal(loaded.encode_images(images), before[1])
    return loaded


@pytest.mark.parametrize("cfg", [
    {"method": "svd", "rank": 4},
    {"method": "svd", "energy": 0.8},
    {"method": "svd", "param_ratio": 0.5, "allocation": "uniform"},
    {"method": "svd-whiten", "param_ratio": 0.5, "sensitivity_samples": 8},
    {"method": "svd-whiten", "rank": 6, "whiten": "asvd"},
    {"method": "tucker", "param_ratio": 0.5, "sensitivity_samples": 8},
    {"method": "cp", "rank": 8, "n_iter_max": 10},
])
def test_lowrank_stages_save_and_reload_identically(tiny_clip, tmp_path, cfg):
    (summary,) = _run(tiny_clip, [{"lowrank": cfg}])
    assert summary["modules"] > 0 and summary["param_ratio"] < 1
    if "param_ratio" in cfg:
        assert summary["param_ratio"] <= cfg["param_ratio"]
    _reloads_identically(tiny_clip, tmp_path)


def test_param_ratio_counts_the_selected_weights(tiny_clip):
    layers = {n: m.weight.numel() for n, m in tiny_clip.model.named_modules()
              if isinstance(m, nn.Linear) and n.startswith("text_model")}
    (summary,) = _run(tiny_clip, [{"lowrank": {"method": "svd", "param_ratio": 0.6,
                                               "sensitivity_samples": 0, "targets": ["text"]}}])
    factored = {n: m for n, m in tiny_clip.model.named_modules() if isinstance(m, LowRankLinear)}
    kept = sum(m.logical_params() - m.out_features for m in factored.values())
    kept += sum(v for n, v in layers.items() if n not in factored)
    assert summary["param_ratio"] == pytest.approx(kept / sum(layers.values()), abs=1e-4)
    assert summary["param_ratio"] <= 0.6


def test_calibrated_summary_counts_every_selected_layer(tiny_clip):
    selected = sum(isinstance(m, nn.Linear) for n, m in tiny_clip.model.named_modules()
                   if n.startswith("text_model"))
    (summary,) = _run(tiny_clip, [{"lowrank": {"method": "svd-whiten", "param_ratio": 0.7,
                                               "sensitivity_samples": 0, "targets": ["text"]}}])
    factored = sum(isinstance(m, LowRankLinear) for m in tiny_clip.model.modules())
    assert summary["modules"] == factored and summary["kept_dense"] >= 0
    assert summary["modules"] + summary["kept_dense"] == selected


class _PatchThenGrouped(nn.Sequential):
    @property
    def weight(self) -> torch.Tensor:  # CLIP's embeddings read the patch convolution's dtype
        return self[0].weight


@pytest.mark.parametrize("allocation", ["uniform", "sensitivity"])
def test_grouped_convolutions_stay_dense_inside_the_budget(tiny_clip, allocation):
    """Tucker cannot take grouped or depthwise convolutions: they stay dense, and count as
    kept weights of the selected layers, so the budget is met over all of them."""
    emb = tiny_clip.model.vision_model.embeddings
    grouped = [nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 32, 3, padding=1,
                                                                      groups=2)]
    emb.patch_embedding = _PatchThenGrouped(emb.patch_embedding, *grouped)
    convs = {n: m.weight.numel() for n, m in tiny_clip.model.named_modules()
             if isinstance(m, nn.Conv2d)}
    (summary,) = _run(tiny_clip, [{"lowrank": {"method": "tucker", "param_ratio": 0.5,
                                               "allocation": allocation,
                                               "sensitivity_samples": 0}}])
    modules = dict(tiny_clip.model.named_modules())
    kept = sum(modules[n].logical_params() if isinstance(modules[n], TuckerConv2d) else w
               for n, w in convs.items())  # the patch convolution has no bias
    assert summary["modules"] == 1 and summary["kept_dense"] == 2
    assert kept / sum(convs.values()) == pytest.approx(summary["param_ratio"], abs=1e-4)
    assert summary["param_ratio"] <= 0.5


def test_lowrank_then_int8_factors_are_quantized_and_reload(tiny_clip, tmp_path):
    stages = [{"lowrank": {"method": "svd-whiten", "rank": 6, "targets": ["text"]}},
              {"quantize": {"method": "rtn", "bits": 8, "targets": ["re:mlp\\.fc1"],
                            "embeddings": False}}]
    _run(tiny_clip, stages)
    fc1 = tiny_clip.model.text_model.encoder.layers[0].mlp.fc1
    assert isinstance(fc1, LowRankLinear)
    assert type(fc1.down).__name__ == type(fc1.up).__name__ == "QuantLinear"
    assert fc1.weight.shape == (64, 32)
    loaded = _reloads_identically(tiny_clip, tmp_path)
    assert type(loaded.model.text_model.encoder.layers[1].mlp.fc1.up).__name__ == "QuantLinear"


def test_asymmetric_fit_changes_only_blocks_after_the_first(tiny_clip):
    """The first block sees the original inputs, so both fits factor W itself there; later
    blocks see the factored model's outputs, and the asymmetric fit corrects for them."""
    import copy

    symmetric = copy.deepcopy(tiny_clip)
    stage = {"method": "svd-whiten", "rank": 4, "targets": ["text"]}
    _run(tiny_clip, [{"lowrank": stage}])
    _run(symmetric, [{"lowrank": {**stage, "asymmetric": False}}])
    layers = [(a.text_model.encoder.layers[i].mlp.fc2, b.text_model.encoder.layers[i].mlp.fc2)
              for a, b in [(tiny_clip.model, symmetric.model)] for i in (0, 1)]
    (first_a, first_b), (second_a, second_b) = layers
    assert torch.equal(first_a.weight, first_b.weight)
    assert not torch.allclose(second_a.weight, second_b.weight, atol=1e-4)


def test_structured_pruning_lowrank_sparse_factors_and_int8_in_one_recipe(tiny_clip, tmp_path):
    """Prune MLP neurons, factor what is left, prune the factors to 2:4 and quantize them: every
    stage acts on the previous one's layers, and the result reloads identically."""
    stages = [{"prune": {"method": "structured", "neurons": 0.5, "targets": ["text"]}},
              {"lowrank": {"method": "svd-whiten", "rank": 4, "targets": ["text"]}},
              {"prune": {"method": "sparsegpt", "pattern": "2:4", "targets": ["re:mlp"]}},
              {"quantize": {"method": "rtn", "bits": 8, "targets": ["re:mlp"],
                            "embeddings": False}}]
    summaries = _run(tiny_clip, stages)
    assert summaries[2]["sparsity"] == pytest.approx(0.5)
    fc1 = tiny_clip.model.text_model.encoder.layers[0].mlp.fc1
    assert isinstance(fc1, LowRankLinear) and fc1.weight.shape == (32, 32)  # 64 → 32 neurons
    assert type(fc1.down).__name__ == type(fc1.up).__name__ == "SparseQuantLinear"
    assert float((fc1.down.weight == 0).float().mean()) >= 0.5
    _reloads_identically(tiny_clip, tmp_path)


@pytest.mark.parametrize("method", ["gptq", "smoothquant"])
def test_factored_projections_are_calibrated_by_the_batches_that_reach_them(tiny_clip, tmp_path,
                                                                            method):
    """The projector tower takes image and text batches, but each factored projection is
    reached by one kind only: its factors calibrate without block replay."""
    _run(tiny_clip, [{"lowrank": {"method": "svd", "rank": 8, "targets": ["projector"]}},
                     {"quantize": {"method": method, "targets": ["projector"]}}])
    proj = tiny_clip.model.visual_projection
    assert isinstance(proj, LowRankLinear) and type(proj.down).__name__ != "Linear"
    _reloads_identically(tiny_clip, tmp_path)


@pytest.mark.parametrize("cfg,message", [
    ({"method": "svd", "rank": 4, "param_ratio": 0.5}, "exactly one of"),
    ({"method": "svd"}, "exactly one of"),
    ({"method": "svd", "rank": 4, "allocation": "uniform"}, "only with param_ratio"),
    ({"method": "tucker", "energy": 0.9}, "unknown key 'energy'"),
    ({"method": "svd", "param_ratio": 1.5}, "less than 1"),
])
def test_bad_configs_are_recipe_errors(cfg, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"stages": [{"lowrank": cfg}]})


def test_a_rank_that_saves_nothing_is_refused(tiny_clip):
    with pytest.raises(RecipeError, match="saves no weights on any selected layer"):
        _run(tiny_clip, [{"lowrank": {"method": "svd", "rank": 22}}])


def _factored(adapter) -> int:
    return sum(isinstance(m, (LowRankLinear, TuckerConv2d, CPConv2d))
               for m in adapter.model.modules())


@pytest.mark.parametrize("cfg,floor", [
    ({"method": "svd", "param_ratio": 0.05, "allocation": "uniform"},
     "the smallest ranks keep 0.05587"),
    ({"method": "cp", "param_ratio": 0.1, "allocation": "uniform"},
     "the smallest ranks cp searches (kept fractions down to 0.125 per layer) keep 0.1245"),
    ({"method": "cp", "param_ratio": 0.1, "sensitivity_samples": 0},
     "the smallest ranks cp searches (kept fractions down to 0.125 per layer) keep 0.1245"),
])
def test_an_unreachable_budget_is_refused_before_the_model_changes(tiny_clip, cfg, floor):
    message = f"param_ratio {cfg['param_ratio']} is out of reach: {floor} of the selected"
    with pytest.raises(RecipeError, match=re.escape(message)):
        _run(tiny_clip, [{"lowrank": cfg}])
    assert _factored(tiny_clip) == 0


def test_a_fixed_cp_rank_goes_below_the_searched_grid(tiny_clip):
    # the refusal above names the grid's floor, not the method's: rank 1 keeps far less
    (summary,) = _run(tiny_clip, [{"lowrank": {"method": "cp", "rank": 1, "n_iter_max": 2}}])
    assert summary["modules"] == 1 and summary["param_ratio"] < 0.02


@pytest.mark.parametrize("method", ["svd", "svd-whiten"])
def test_an_energy_that_saves_nothing_is_refused(tiny_clip, method):
    with pytest.raises(RecipeError, match=r"energy 0\.9999 saves no weights on any selected"):
        _run(tiny_clip, [{"lowrank": {"method": method, "energy": 0.9999}}])
    assert _factored(tiny_clip) == 0


def test_empty_calibration_data_is_refused(tiny_clip):
    with pytest.raises(DataError, match="empty"):
        _run(tiny_clip, [{"lowrank": {"method": "svd-whiten", "rank": 4}}],
             Dataset("empty", "classification"))


def test_non_finite_weight_is_refused(tiny_clip):
    tiny_clip.model.text_model.encoder.layers[1].mlp.fc2.weight.data[0, 0] = float("nan")
    with pytest.raises(UserError, match="fc2.*NaN or Inf"):
        _run(tiny_clip, [{"lowrank": {"method": "svd", "rank": 4, "targets": ["re:fc2"]}}])


def test_non_finite_activations_are_refused(tiny_clip):
    tiny_clip.model.text_model.encoder.layers[0].layer_norm1.weight.data.fill_(float("inf"))
    with pytest.raises(DataError, match="non-finite"):
        _run(tiny_clip, [{"lowrank": {"method": "svd-whiten", "rank": 4,
                                      "targets": ["text_model.encoder.layers.1"]}}])


def test_cli_reports_a_useless_rank_as_one_error_line(tiny_clip_folder, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"lowrank": {"method": "svd", "rank": 40}}],
                                      "evaluate": FAST_EVAL}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compress", "--model", str(tiny_clip_folder), "--recipe",
                                      str(recipe), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "rank 40" in lines[0]
    assert not out.exists()


def test_example_recipe_parses():
    path = Path(__file__).parents[1] / "examples" / "recipes" / "lowrank-svd-whiten.yaml"
    recipe = load_recipe(path)
    assert [s.config.method for s in recipe.stages] == ["svd-whiten", "rtn"]


def test_a_fit_to_reference_outputs_has_less_error_than_factoring_the_weight():
    """From inputs that earlier compression has perturbed, factoring the least-squares map to
    the reference outputs beats factoring W itself on ‖W·x_ref − A·B·x‖ at every rank."""
    from mmcompress.calibration.reference import reference_fit

    x_ref, w = _inputs(), torch.randn(48, 64)
    x = x_ref + 0.3 * torch.randn_like(x_ref) @ torch.randn(64, 64) * 0.2
    hessian, cross = x.T @ x / len(x), x_ref.T @ x / len(x)
    target = x_ref @ w.T
    own = scaled_svd(w, hessian, "cholesky", damp=1e-6)
    fitted = scaled_svd(reference_fit(w, hessian, cross, 1e-6), hessian, "cholesky", damp=1e-6)
    for rank in (4, 16, 40):
        err = {k: float(((x @ torch.matmul(*d.factors(rank)).T - target) ** 2).sum())
               for k, d in (("own", own), ("fitted", fitted))}
        # optimal, so never worse; the perturbation's share is what it can undo
        assert err["fitted"] < err["own"] * (0.999 if rank < 40 else 0.8)
    # inputs that match the reference's leave W as it is, whatever the damping
    torch.testing.assert_close(reference_fit(w, hessian, hessian, 0.1).float(), w)
    assert torch.equal(reference_fit(w, hessian, None, 0.1).float(), w)


@pytest.mark.parametrize("first, refusal", [
    ({"prune": {"method": "magnitude", "sparsity": 0.5, "targets": ["text"]}},
     "a pruned sparse layer"),
    ({"quantize": {"method": "rtn", "bits": 8, "targets": ["text"]}},
     "a QuantLinear .*factor before quantizing"),
    ({"quantize": {"method": "rtn", "bits": 16, "dtype": "bf16", "targets": ["text"]}},
     "a HalfWeight"),
])
def test_lowrank_refuses_layers_an_earlier_stage_pruned_or_made_compact(tiny_clip, first,
                                                                        refusal):
    """Factors would be dense fp32 again: the pruning or quantization would be lost silently."""
    _run(tiny_clip, [first])
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    with pytest.raises(RecipeError, match=refusal):
        _run(tiny_clip, [{"lowrank": {"method": "svd", "rank": 4}}])
    assert all(torch.equal(v, tiny_clip.model.state_dict()[k]) for k, v in before.items())
    summary = _run(tiny_clip, [{"lowrank": {"method": "svd", "rank": 4,
                                            "targets": ["vision"]}}])[0]
    assert summary["modules"] > 0


def test_compact_linear_layers_do_not_stop_factoring_convolutions(tiny_clip):
    _run(tiny_clip, [{"quantize": {"method": "rtn", "bits": 8, "targets": ["text"]}}])
    _run(tiny_clip, [{"lowrank": {"method": "tucker", "param_ratio": 0.5,
                                  "sensitivity_samples": 8}}])
    assert isinstance(tiny_clip.model.vision_model.embeddings.patch_embedding, TuckerConv2d)


def test_every_registered_layer_type_is_plain_sparse_factored_or_known_compact():
    """A new compact layer type must say which plain layer it stands in for, or stages that
    refuse compact layers would take it for something else."""
    from mmcompress.methods.base import _COMPACT_KINDS
    from mmcompress.modules.registry import MODULE_TYPES
    from mmcompress.modules.sparse import SPARSE_FLOAT

    factored_or_half = ("LowRankLinear", "TuckerConv2d", "CPConv2d", "HalfWeight")
    unknown = [name for name, cls in MODULE_TYPES.items() if cls not in SPARSE_FLOAT
               and name not in factored_or_half and cls not in _COMPACT_KINDS]
    assert unknown == []


@pytest.mark.parametrize("bits", [4, 8])
def test_quantizing_conv_factors_below_8_bits_is_warned_of(tiny_clip, capsys, bits):
    """CP factors then int4 took a ResNet-20 from 0.830 to 0.091 top-1 without a word."""
    from mmcompress.methods.base import run_stages

    recipe = load_recipe({"stages": [
        {"lowrank": {"method": "cp", "rank": 8, "n_iter_max": 5, "targets": ["vision"]}},
        {"quantize": {"method": "rtn", "bits": bits, "group_size": None,
                      "targets": ["vision"]}},
        {"quantize": {"method": "rtn", "bits": 8, "group_size": None, "targets": ["text"]}}]})
    ctx = StageContext(data=toy_image_data(12), progress=False,
                       calibration=CalibrationConfig(samples=8, batch_size=4))
    _, quantized, text_quantized = run_stages(tiny_clip, recipe.stages, ctx)
    assert "factor_layers_below_8_bits" not in text_quantized  # said once, by the stage
    err = capsys.readouterr().err  # that took them below 8 bits
    if bits == 8:
        assert "factor_layers_below_8_bits" not in quantized and "warning" not in err
    else:  # first, vertical, horizontal and last of the patch embedding
        assert quantized["factor_layers_below_8_bits"] == 4
        assert "warning: 4 factors of CP or Tucker convolutions" in err
        assert err.count("factors of CP or Tucker") == 1
