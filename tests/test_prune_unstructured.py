"""Unstructured and N:M pruning: exact masks, method numerics, compact storage, quantization
after pruning, save/reload, and one-line errors for bad settings."""

import copy

import pytest
import torch
import yaml
from _helpers import FAST_EVAL, layer_inputs, output_error, toy_image_data
from safetensors.torch import save as safetensors_bytes
from torch import nn
from typer.testing import CliRunner

import mmcompress
from mmcompress.calibration.reference import reference_fit
from mmcompress.cli import app
from mmcompress.errors import RecipeError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.methods import METHODS, StageContext
from mmcompress.methods.prune_unstructured import _input_order, _select
from mmcompress.methods.sparsity_allocation import masked_error, sensitivity_sparsities
from mmcompress.modules.sparse import (
    SparseConv2d,
    SparseEmbedding,
    SparseLinear,
    SparseQuantConv2d,
    SparseQuantEmbedding,
    SparseQuantLinear,
    pack_mask,
    sparse_module,
    sparse_quantized,
    unpack_mask,
)
from mmcompress.quantization.grid import QuantGrid
from mmcompress.recipe import CalibrationConfig, load_recipe
from mmcompress.sparsity import global_keep_masks, keep_mask, parse_pattern, sparsegpt_prune
from mmcompress.sparsity.admm import admm_prune
from mmcompress.sparsity.masks import kernel_position_order
from mmcompress.sparsity.owl import outlier_ratio, owl_sparsities
from mmcompress.sparsity.permute import _trade_scores, kept_score, nm_input_order
from mmcompress.sparsity.refit import refit_kept
from mmcompress.sparsity.swaps import refine_by_swaps

SPARSE = (SparseLinear, SparseConv2d, SparseEmbedding)
PATTERNS = [None, (2, 4), (4, 8)]


def _assert_nm(keep: torch.Tensor, nm: tuple[int, int]) -> None:
    n, m = nm
    assert (keep.reshape(keep.shape[0], -1, m).sum(-1) == n).all()


def _layer_masks(x, w, sparsity, nm):
    """Keep-masks and pruned weights of the four methods on one layer."""
    h = 2 * x.T @ x / len(x)
    mag = keep_mask(w.abs(), sparsity, nm)
    wanda = keep_mask(w.abs() * x.norm(dim=0), sparsity, nm, per_row=True)
    sgpt_w, sgpt = sparsegpt_prune(w, h, sparsity, nm, block_size=32)
    admm_w, admm = admm_prune(w, h, sparsity, None if nm is None else lambda s: keep_mask(s, 0, nm))
    return {"magnitude": (mag, w * mag), "wanda": (wanda, w * wanda), "sparsegpt": (sgpt, sgpt_w),
            "admm": (admm, admm_w)}


# ---- masks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nm", PATTERNS)
@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_each_method_hits_sparsity_and_pattern_exactly(nm, sparsity):
    x, w = layer_inputs(), torch.randn(24, 64)
    for name, (keep, pruned) in _layer_masks(x, w, sparsity, nm).items():
        if nm is None:  # 0.3·24·64 = 460.8 → 461 everywhere, also when chosen per row
            assert int((~keep).sum()) == round(sparsity * keep.numel()), name
        else:
            _assert_nm(keep, nm)
        assert (pruned[~keep] == 0).all(), name


def test_per_row_selection_spreads_the_remainder_over_rows():
    keep = keep_mask(torch.rand(5, 10), 0.33, per_row=True)  # 16.5 → 17 pruned: 4, 4, 3, 3, 3
    assert (~keep).sum(1).tolist() == [4, 4, 3, 3, 3]


@pytest.mark.parametrize("sparsity", [0.6, 0.33])
def test_sparsegpt_per_row_prunes_each_rows_share_and_stays_second_order(sparsity):
    x, w = layer_inputs(), torch.randn(24, 64)
    h = 2 * x.T @ x / len(x)
    pruned, keep = sparsegpt_prune(w, h, sparsity, block_size=16, per_row=True)
    counts = (~keep).sum(1)
    assert int(counts.sum()) == round(sparsity * keep.numel())
    assert int(counts.max() - counts.min()) <= 1 and (pruned[~keep] == 0).all()
    _, whole = sparsegpt_prune(w, h, sparsity, block_size=16)
    assert int((~whole).sum(1).max() - (~whole).sum(1).min()) > 1  # the paper's differ
    wanda = keep_mask(w.abs() * x.norm(dim=0), sparsity, per_row=True)
    assert output_error(x, w, pruned) < 0.9 * output_error(x, w, w * wanda)


@pytest.mark.parametrize("per_row", [False, True])
def test_sparsegpt_act_order_is_the_plain_mask_of_the_columns_sorted_by_hessian_diagonal(
        per_row):
    x = layer_inputs(outliers=True) * torch.linspace(0.2, 3, 64)  # distinct diagonals
    torch.manual_seed(1)
    w, h = torch.randn(24, 64), 2 * x.T @ x / len(x)
    perm = torch.argsort(h.diagonal(), descending=True)
    new, keep = sparsegpt_prune(w, h, 0.6, block_size=16, per_row=per_row, act_order=True)
    sorted_new, sorted_keep = sparsegpt_prune(w[:, perm], h[perm][:, perm], 0.6, block_size=16,
                                              per_row=per_row)
    assert torch.equal(keep[:, perm], sorted_keep)
    torch.testing.assert_close(new[:, perm], sorted_new)
    assert not torch.equal(keep, sparsegpt_prune(w, h, 0.6, block_size=16,
                                                 per_row=per_row)[1])
    assert int((~keep).sum()) == round(0.6 * w.numel())
    with pytest.raises(ValueError, match="act_order"):
        sparsegpt_prune(w, h, 0.5, (2, 4), act_order=True)


def test_sparsegpt_one_block_drops_the_lowest_obs_saliencies_of_the_layer():
    """One block over all columns: the mask drops the k lowest w² / U_jj² of the whole layer
    (U: upper Cholesky factor of the damped H⁻¹), not w² / U_jj."""
    x, w = layer_inputs() * torch.logspace(-1, 1, 64), torch.randn(16, 64)  # U_jj ranges 100×
    h = 2 * x.T @ x / len(x)
    _, keep = sparsegpt_prune(w, h, 0.5, block_size=64)
    hd = h.double() + 0.01 * h.diagonal().double().mean() * torch.eye(64, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(hd), upper=True)
    saliency = (w.double() ** 2 / u.diagonal() ** 2).flatten()
    expected = torch.ones(w.numel(), dtype=torch.bool)
    expected[saliency.argsort()[:512]] = False
    assert torch.equal(keep, expected.view_as(w))


def test_ties_cannot_change_the_count():
    scores = torch.ones(8, 16)
    assert int((~keep_mask(scores, 0.5)).sum()) == 64
    masks = global_keep_masks([torch.ones(4, 4), torch.zeros(4, 4), torch.ones(2, 8)], 0.75)
    assert sum(int((~m).sum()) for m in masks) == 36 and not masks[1].any()


def test_global_magnitude_ranks_across_layers():
    torch.manual_seed(0)
    small, large = torch.randn(16, 32) * 0.1, torch.randn(16, 32)
    masks = global_keep_masks([small.abs(), large.abs()], 0.5)
    assert sum(int((~m).sum()) for m in masks) == 512
    assert (~masks[0]).sum() > 0.9 * 512 // 2 and (~masks[1]).sum() < 0.2 * 512


def test_wanda_picks_differently_from_magnitude_with_outlier_channels():
    x, w = layer_inputs(outliers=True), torch.randn(32, 64)
    masks = _layer_masks(x, w, 0.5, None)
    mag, wanda = masks["magnitude"][0], masks["wanda"][0]
    assert (mag != wanda).float().mean() > 0.1
    assert wanda[:, :4].float().mean() > mag[:, :4].float().mean()  # outlier inputs stay
    assert output_error(x, w, masks["wanda"][1]) < 0.5 * output_error(x, w, masks["magnitude"][1])


@pytest.mark.parametrize("nm", PATTERNS)
def test_sparsegpt_error_below_wanda_and_magnitude(nm):
    x, w = layer_inputs(), torch.randn(32, 64)
    err = {k: output_error(x, w, p) for k, (_, p) in _layer_masks(x, w, 0.5, nm).items()}
    assert err["sparsegpt"] < 0.9 * err["wanda"] and err["sparsegpt"] < 0.9 * err["magnitude"]


@pytest.mark.parametrize("nm,sparsity", [(None, 0.5), (None, 0.7), ((2, 4), 0.5), ((4, 8), 0.5)])
def test_admm_mask_fits_better_than_sparsegpts_after_both_refit(nm, sparsity):
    """ADMM's gradual mask (Boža 2024) beats SparseGPT's with the kept weights refitted exactly,
    and its own update already lands near that refit."""
    x, w = layer_inputs(), torch.randn(48, 64)
    h = 2 * x.T @ x / len(x)
    masks = _layer_masks(x, w, sparsity, nm)
    refit = {k: output_error(x, w, refit_kept(w, masks[k][0], h)) for k in ("sparsegpt", "admm")}
    assert refit["admm"] < 0.95 * refit["sparsegpt"]
    assert output_error(x, w, masks["admm"][1]) < 1.1 * refit["admm"]


def test_admm_sparsity_rises_gradually():
    """One iteration is one projection at the target; more let weights leave a few at a time
    and end on a different, better mask."""
    x, w = layer_inputs(), torch.randn(32, 64)
    h = 2 * x.T @ x / len(x)
    (_, once), (_, gradual) = (admm_prune(w, h, 0.7, iterations=n) for n in (1, 40))
    assert (once != gradual).float().mean() > 0.05
    errors = [output_error(x, w, refit_kept(w, k, h)) for k in (once, gradual)]
    assert errors[1] < 0.9 * errors[0]


def test_admm_sparsity_follows_the_cubic_schedule(monkeypatch):
    """Iteration t prunes s·(1 − (1 − (t+1)/ramp)³) of the weights (ramp = 3/4 of the
    iterations), then s: the documented cubic ramp, not a linear one."""
    import mmcompress.sparsity.admm as admm

    shares, pruned = [], []

    def recording(scores, sparsity, nm=None, per_row=False):
        keep = keep_mask(scores, sparsity, nm, per_row)
        shares.append(sparsity)
        pruned.append(int((~keep).sum()))
        return keep

    monkeypatch.setattr(admm, "keep_mask", recording)
    x, w = layer_inputs(), torch.randn(8, 64)
    admm_prune(w, 2 * x.T @ x / len(x), 0.6, iterations=8)  # ramp: 6 iterations
    expected = [0.6 * (1 - (1 - t / 6) ** 3) for t in range(1, 6)] + [0.6] * 3
    assert shares == pytest.approx(expected, rel=1e-12)
    assert pruned == [round(s * w.numel()) for s in expected]


# ---- mask refinement by swaps ---------------------------------------------------------------

def _row_errors(w: torch.Tensor, keep: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Each row's output error r H rᵀ over the pruned part r = w ⊙ (1 − keep)."""
    r = w * ~keep
    return ((r @ h) * r).sum(1)


@pytest.mark.parametrize("nm", PATTERNS)
def test_swaps_lower_every_rows_error_and_keep_count_and_pattern(nm):
    x, w = layer_inputs(), torch.randn(24, 64)
    h = 2 * x.T @ x / len(x)
    keep = keep_mask(w.abs() * x.norm(dim=0), 0.6, nm, per_row=True)
    refined, rounds = refine_by_swaps(w, keep, h, nm)
    assert 0 < rounds < 100  # it stopped by itself
    assert torch.equal(refined.sum(1), keep.sum(1))
    if nm is not None:
        _assert_nm(refined, nm)
    before, after = _row_errors(w, keep, h), _row_errors(w, refined, h)
    assert (after <= before * (1 + 1e-5)).all()
    assert after.sum() < 0.8 * before.sum()  # correlated inputs: Wanda's diagonal view misses


def test_swaps_stop_where_no_single_swap_helps():
    """With every weight a candidate, the refined mask is optimal under any one swap."""
    x, w = layer_inputs()[:, :12], torch.randn(6, 12)
    h = 2 * x.T @ x / len(x)
    refined, _ = refine_by_swaps(w, keep_mask(w.abs(), 0.5, per_row=True), h, rounds=1000,
                                 candidates=12)
    base = _row_errors(w, refined, h)
    for i in range(6):
        for j in (~refined[i]).nonzero().flatten():
            for k in refined[i].nonzero().flatten():
                swapped = refined.clone()
                swapped[i, j], swapped[i, k] = True, False
                assert _row_errors(w, swapped, h)[i] >= base[i] * (1 - 1e-4)


def test_swaps_keep_wanda_mask_when_inputs_are_uncorrelated():
    """A diagonal Gram matrix makes Wanda's score the exact error: nothing to swap."""
    torch.manual_seed(0)
    h, w = torch.diag(torch.rand(64) + 0.5), torch.randn(16, 64)
    keep = keep_mask(w.abs() * h.diagonal().sqrt(), 0.6, per_row=True)
    refined, rounds = refine_by_swaps(w, keep, h)
    assert torch.equal(refined, keep) and rounds == 0


# ---- input order for N:M groups (channel permutation) -------------------------------------

@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_input_order_keeps_at_least_the_own_orders_score(nm):
    torch.manual_seed(0)
    scores = torch.rand(32, 64) * torch.rand(64) ** 4  # a few strong inputs, as in Wanda scores
    order = nm_input_order(scores, nm)
    assert torch.equal(order.sort().values, torch.arange(64))
    assert kept_score(scores, nm, order) > kept_score(scores, nm) * 1.01
    assert torch.equal(nm_input_order(scores, nm), order)  # seeded: the same order every time


@pytest.mark.parametrize("nm", [(2, 4), (3, 8), (1, 4)])
def test_trade_scores_are_the_kept_scores_of_the_traded_groups(nm):
    n, m = nm
    torch.manual_seed(1)
    scores = torch.rand(5, 4 * m).round(decimals=1)  # ties too
    first, second = torch.arange(0, 2 * m).view(2, m), torch.arange(2 * m, 4 * m).view(2, m)
    got = _trade_scores(scores, first, second, n)
    for p in range(2):
        for i in range(m):
            for j in range(m):
                a, b = first[p].clone(), second[p].clone()
                a[i], b[j] = second[p, j], first[p, i]
                want = scores[:, a].topk(n).values.sum() + scores[:, b].topk(n).values.sum()
                assert got[p, i, j] == pytest.approx(float(want), abs=1e-5)


def test_input_order_spreads_inputs_every_row_needs():
    """Four inputs every row needs, side by side: in their own order one group of 2:4 holds
    them all and each row loses two; spread over four groups, every row keeps all four."""
    scores = torch.rand(8, 16) * 0.1
    scores[:, :4] += 10
    order = nm_input_order(scores, (2, 4))
    assert kept_score(scores, (2, 4)) < 22 * 8
    assert (keep_mask(scores[:, order], 0.5, (2, 4))[:, order.argsort()][:, :4]).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "admm"])
def test_calibrated_methods_order_nm_inputs_by_default_and_magnitude_does_not(method):
    def permutes(**cfg) -> bool:
        return load_recipe({"stages": [{"prune": {"method": method, **cfg}}]}
                           ).stages[0].config.permutes
    assert permutes(pattern="2:4") is (method != "magnitude")
    assert permutes(pattern="2:4", permute=True) and not permutes(pattern="4:8", permute=False)
    assert not permutes(sparsity=0.5)  # no groups to order, and no error for the default


def test_an_order_that_gains_nothing_is_not_kept():
    one_group = torch.rand(8, 4)
    assert torch.equal(nm_input_order(one_group, (2, 4)), torch.arange(4))
    best_as_is = torch.tensor([[9.0, 9, 1, 1] * 4] * 3)  # every group already keeps its 9s
    assert torch.equal(nm_input_order(best_as_is, (2, 4)), torch.arange(16))
    config = load_recipe({"stages": [{"prune": {"method": "magnitude", "pattern": "2:4",
                                                "permute": True}}]}).stages[0].config
    assert _input_order(nn.Linear(16, 3), config, lambda: best_as_is) is None  # nothing saved


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "admm"])
def test_permuted_nm_masks_follow_their_saved_order_and_reload(tiny_clip, tmp_path, method):
    texts = ["a photo of a cat", "two dogs"]
    dense = {n: m.weight.detach().abs() for n, m in tiny_clip.model.named_modules()
             if isinstance(m, nn.Linear)}
    plain = copy.deepcopy(tiny_clip)
    assert "permuted_layers" not in _apply(plain, method, pattern="2:4", permute=False)
    chosen = {"permute": True} if method == "magnitude" else {}  # the others' default
    summary = _apply(tiny_clip, method, pattern="2:4", **chosen)
    assert summary["sparsity"] == 0.5
    layers, plain_layers = _sparse_layers(tiny_clip), _sparse_layers(plain)
    ordered = 0
    for name, m in layers.items():
        assert m.follows_pattern(), name
        if isinstance(m, nn.Conv2d):  # 3 input channels: no groups of four to order
            assert m.input_order is None
            continue
        ordered += 1
        assert not torch.equal(m.input_order.long(), torch.arange(m.cols)), name
        if method == "magnitude":  # the |W| its mask keeps grows
            kept = (dense[name] * m.keep_mask()).sum()
            assert kept > (dense[name] * plain_layers[name].keep_mask()).sum(), name
    assert ordered > 10 and summary["permuted_layers"] == ordered
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    fc1 = loaded.model.text_model.encoder.layers[0].mlp.fc1
    assert torch.equal(fc1.input_order, tiny_clip.model.text_model.encoder.layers[0].mlp.fc1
                       .input_order)
    assert torch.equal(loaded.encode_texts(texts), tiny_clip.encode_texts(texts))


def test_a_convolutions_channels_take_one_order_for_every_kernel_position():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 3, 2)  # columns channel-major: channel c, position p at c·4 + p
    needed = torch.tensor([9.0] * 4 + [1.0] * 4)  # channels 0-3: every row needs them
    scores = needed[None, :, None] * torch.rand(3, 8, 4) + torch.rand(3, 8, 4)
    scores = scores.reshape(3, 32)  # each (row, position) its own scores
    config = load_recipe({"stages": [{"prune": {"method": "wanda", "pattern": "2:4"}}]}
                         ).stages[0].config
    order = _input_order(conv, config, lambda: scores)
    by_position = order.view(4, 8)  # row p: the columns of position p's groups, in order
    assert torch.equal(by_position % 4, torch.arange(4)[:, None].expand(4, 8))
    channels = by_position // 4
    assert (channels == channels[0]).all()  # one channel order at every position
    rows = torch.stack([scores[:, c * 4 + p] for p in range(4) for c in range(8)], 1)
    assert torch.equal(channels[0], nm_input_order(rows.view(3, 4, 8).reshape(12, 8), (2, 4)))
    own = kernel_position_order(8, 4)
    assert kept_score(scores, (2, 4), order) > kept_score(scores, (2, 4), own)
    keep = _select(scores, config, per_row=False, order=order)
    assert keep.view(3, 8, 4)[:, :4].sum() > keep.view(3, 8, 4)[:, 4:].sum()
    own_order = config.model_copy(update={"permute": False})
    assert torch.equal(_input_order(conv, own_order, lambda: scores), own)


def test_permuted_convolutions_follow_their_saved_order_through_quantization(tmp_path):
    from mmcompress.adapters.classifier import ImageClassifierAdapter
    from mmcompress.models.resnet_cifar import CifarResNet

    torch.manual_seed(0)
    adapter = ImageClassifierAdapter(CifarResNet(20).eval())
    summary = _apply(adapter, "magnitude", pattern="2:4", permute=True, ignore=["conv1"])
    ordered = {n: m.input_order.clone() for n, m in _sparse_layers(adapter).items()
               if m.input_order is not None}
    convs = [n for n, m in _sparse_layers(adapter).items() if isinstance(m, nn.Conv2d)]
    assert sum(n in ordered for n in convs) > len(convs) // 2
    assert summary["permuted_layers"] == len(ordered)
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 4}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(adapter, stage.config, StageContext(progress=False))
    save_checkpoint(adapter, tmp_path, "resnet20-cifar10", [])
    loaded = mmcompress.load(tmp_path)
    for name, order in ordered.items():
        layer = loaded.model.get_submodule(name)
        assert isinstance(layer, SparseQuantConv2d | SparseQuantLinear), name
        assert torch.equal(layer.input_order, order) and layer.follows_pattern(), name
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), adapter.model(x))


def test_permuted_layers_keep_their_order_when_quantized_and_reloaded(tiny_clip, tmp_path):
    recipe = {"stages": [{"prune": {"method": "wanda", "pattern": "2:4"}},
                         {"quantize": {"method": "gptq", "bits": 4, "group_size": 32}}],
              "calibration": {"samples": 8, "batch_size": 4}, "evaluate": FAST_EVAL}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_image_data(),
                                 progress=False)
    layers = [m for m in result.adapter.model.modules() if isinstance(m, SparseQuantLinear)]
    assert layers and all(m.input_order is not None and m.follows_pattern() for m in layers)
    texts = ["a cat", "the dog"]
    assert torch.equal(mmcompress.load(tmp_path / "out").encode_texts(texts),
                       result.adapter.encode_texts(texts))


def test_a_mask_breaking_its_pattern_is_seen_in_its_order():
    layer = nn.Linear(8, 2)
    keep = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    assert sparse_module(layer, keep, pattern="2:4").follows_pattern()
    assert not sparse_module(layer, keep, pattern="2:4",
                             order=torch.tensor([0, 1, 4, 5, 2, 3, 6, 7])).follows_pattern()
    conv = nn.Conv2d(4, 1, 2)  # columns channel-major: (channel, kernel position)
    two_channels = torch.tensor([[1] * 8 + [0] * 8], dtype=torch.bool)
    two_positions = torch.tensor([[1, 1, 0, 0] * 4], dtype=torch.bool)
    assert sparse_module(conv, two_channels, pattern="2:4").follows_pattern()
    assert not sparse_module(conv, two_positions, pattern="2:4").follows_pattern()


def test_an_input_order_that_is_no_order_is_refused_on_load():
    keep = torch.tensor([[1, 0, 1, 0, 0, 1, 0, 1]] * 2, dtype=torch.bool)
    layer = sparse_module(nn.Linear(8, 2), keep, pattern="2:4",
                          order=torch.tensor([0, 4, 1, 5, 2, 6, 3, 7]))
    assert layer.follows_pattern()
    state = layer.state_dict()
    state["input_order"][0] = 4
    fresh = SparseLinear.from_spec(layer.spec())
    with pytest.raises(RuntimeError, match="input_order is not an order of the layer's 8"):
        fresh.load_state_dict(state)


@pytest.mark.parametrize("value,nm", [("unstructured", None), ("2:4", (2, 4)), (" 4 : 8 ", (4, 8)),
                                      (124, (2, 4)), (248, (4, 8))])  # 124: YAML's 2:4
def test_pattern_parsing(value, nm):
    assert parse_pattern(value) == nm


@pytest.mark.parametrize("value", ["\uff12:\uff14", "4:2", "2:4:8", "0:4"])  # full-width digits
def test_pattern_parsing_refuses_what_is_no_pattern(value):
    with pytest.raises(ValueError):
        parse_pattern(value)


# ---- sparse modules -------------------------------------------------------------------------

def test_mask_bits_round_trip():
    keep = torch.rand(7, 13) > 0.5
    bits = pack_mask(keep)
    assert bits.dtype == torch.uint8 and bits.numel() == 12
    assert torch.equal(unpack_mask(bits, keep.numel()).view(7, 13), keep)


def _state_bytes(module: nn.Module) -> int:
    return len(safetensors_bytes({k: v.contiguous() for k, v in module.state_dict().items()}))


def test_sparse_linear_is_compact_exact_and_quantizable():
    torch.manual_seed(0)
    dense = nn.Linear(256, 128)
    keep = keep_mask(dense.weight.detach().abs(), 0.5)
    sparse = sparse_module(dense, keep)
    x = torch.randn(4, 256)
    torch.testing.assert_close(sparse(x), nn.functional.linear(x, dense.weight * keep, dense.bias))
    torch.testing.assert_close(sparse.to_dense()(x), sparse(x))
    assert isinstance(sparse, nn.Linear) and sparse.logical_params() == 128 * 257
    assert _state_bytes(sparse) <= 0.6 * _state_bytes(dense)
    quant = sparse_quantized(sparse, QuantGrid(8))
    assert _state_bytes(quant) <= 0.2 * _state_bytes(dense)
    assert (quant.weight[~keep] == 0).all() and (quant.weight[keep] != 0).float().mean() > 0.95
    torch.testing.assert_close(quant(x), sparse(x), atol=0.02, rtol=0.02)


def test_sparse_values_train_and_zeros_stay_zero():
    torch.manual_seed(0)
    sparse = sparse_module(nn.Linear(16, 8), torch.rand(8, 16) > 0.5)
    sparse(torch.randn(3, 16)).sum().backward()
    assert sparse.values.grad is not None and sparse.values.grad.shape == sparse.values.shape


@pytest.mark.parametrize("grid", [QuantGrid(8), QuantGrid(4, 16), QuantGrid(3, None, False)])
def test_sparse_conv_quantized_keeps_zeros_and_rebuilds(grid):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    keep = keep_mask(conv.weight.detach().reshape(6, -1).abs(), 0.5, (2, 4))
    sparse = sparse_module(conv, keep)
    quant = sparse_quantized(sparse, grid, input_scale=torch.rand(8) + 0.5)
    assert isinstance(sparse, nn.Conv2d) and isinstance(quant, SparseQuantConv2d)
    assert (quant.weight.reshape(6, -1)[~keep] == 0).all()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(quant.to_dense()(x), quant(x), atol=1e-4, rtol=1e-4)
    empty = type(quant).from_spec(quant.spec())
    empty.load_state_dict(quant.state_dict(), strict=True)
    assert torch.equal(empty(x), quant(x))



@pytest.mark.parametrize("dim", [13, 16])  # rows starting mid-byte, and on byte borders
@pytest.mark.parametrize("grid", [None, QuantGrid(8), QuantGrid(4, 8, False), QuantGrid(3)])
def test_sparse_embedding_lookups_read_only_their_rows_and_reload(grid, dim):
    torch.manual_seed(0)
    table = nn.Embedding(40, dim, padding_idx=0)
    keep = keep_mask(table.weight.detach().abs(), 0.5, per_row=True)
    sparse = sparse_module(table, keep)
    module = sparse if grid is None else sparse_quantized(sparse, grid)
    assert isinstance(module, SparseEmbedding if grid is None else SparseQuantEmbedding)
    ids = torch.tensor([[0, 5, 39, 5], [17, 2, 2, 38]])
    rows = module.weight.reshape(40, dim)
    counts = keep.sum(1)
    assert (rows[~keep] == 0).all() and counts.max() - counts.min() <= 1  # each token half
    torch.testing.assert_close(module(ids), nn.functional.embedding(ids, rows))
    if grid is None:
        torch.testing.assert_close(module(ids), nn.functional.embedding(ids, table.weight * keep))
    empty = type(module).from_spec(module.spec())
    empty.load_state_dict(module.state_dict(), strict=True)
    assert torch.equal(empty(ids), module(ids))
    torch.testing.assert_close(module.to_dense()(ids), module(ids))


def test_sparse_embedding_row_index_spans_chunks_after_reload():
    torch.manual_seed(0)
    table = nn.Embedding(9000, 8)  # more rows than one counting chunk (4096)
    sparse = sparse_module(table, torch.rand(9000, 8) > 0.3)
    empty = type(sparse).from_spec(sparse.spec())
    empty.load_state_dict(sparse.state_dict(), strict=True)  # the index is not in the file
    assert "row_start" not in sparse.state_dict()
    ids = torch.tensor([0, 4095, 4096, 8191, 8999])
    expected = nn.functional.embedding(ids, table.weight * sparse.keep_mask())
    assert torch.equal(empty(ids), expected)


def test_sparse_embedding_values_train_except_the_padding_row():
    sparse = sparse_module(nn.Embedding(10, 8, padding_idx=3), torch.rand(10, 8) > 0.5)
    sparse(torch.tensor([1, 1, 3])).sum().backward()
    grad = torch.zeros(10, 8).masked_scatter_(sparse.keep_mask(), sparse.values.grad)
    assert (grad[1][sparse.keep_mask()[1]] == 2).all() and (grad[[0, 2, 3, 4]] == 0).all()

# ---- kept weights refitted to the mask -------------------------------------------------------

@pytest.mark.parametrize("nm", PATTERNS)
def test_refit_is_each_rows_least_squares_fit_and_beats_sparsegpt(nm):
    x, w = layer_inputs(), torch.randn(16, 64)
    h = 2 * x.T @ x / len(x)
    masks = _layer_masks(x, w, 0.6, nm)
    keep = masks["wanda"][0].clone()
    keep[0, :] = False
    keep[0, :5] = True  # rows with another count of kept weights are solved apart
    refit = refit_kept(w, keep, h, damp=1e-9)
    assert torch.equal(refit != 0, keep)
    for r in range(len(w)):
        cols = keep[r].nonzero().squeeze(1)
        best = torch.linalg.lstsq(x[:, cols].double(), (x @ w[r]).double()[:, None]).solution
        torch.testing.assert_close(refit[r, cols].double(), best.squeeze(1), rtol=1e-4,
                                   atol=1e-4)
    sgpt_keep, sgpt_w = masks["sparsegpt"]
    assert output_error(x, w, refit_kept(w, sgpt_keep, h)) < output_error(x, w, sgpt_w)


def test_refit_solves_the_damped_problem_on_nearly_collinear_inputs():
    """ŵ_K = w_K + H_KK⁻¹ H_KP w_P with H damped by `damp` · mean diag H (docs/methods.md),
    where the damping matters; a right-hand side from the undamped H pulls ŵ toward zero."""
    torch.manual_seed(0)
    x = torch.randn(512, 6) @ torch.randn(6, 32) + 0.01 * torch.randn(512, 32)  # rank ≈ 6
    w = torch.randn(8, 32)
    h = 2 * x.T @ x / len(x)
    keep = keep_mask(w.abs() * x.norm(dim=0), 0.5, per_row=True)
    refit = refit_kept(w, keep, h, damp=0.1)
    hd = h.double() + 0.1 * h.diagonal().double().mean() * torch.eye(32, dtype=torch.float64)
    for r in range(len(w)):
        k, p = keep[r], ~keep[r]
        wr = w[r].double()
        expected = wr[k] + torch.linalg.solve(hd[k][:, k], hd[k][:, p] @ wr[p])
        torch.testing.assert_close(refit[r, k].double(), expected, rtol=1e-5, atol=1e-5)
        assert (refit[r, p] == 0).all()


def test_refit_to_the_reference_fit_is_the_least_squares_fit_to_unpruned_outputs():
    """Asymmetric refit: masking and refitting `reference_fit`'s map M gives, per row, the
    least-squares fit of the unpruned outputs x_ref·w from the pruned model's inputs x."""
    x_ref = layer_inputs()  # what the unpruned model feeds the layer; x, what the pruned one does
    x = x_ref * torch.linspace(0.6, 1.4, 64) + 0.05 * torch.randn_like(x_ref)
    w = torch.randn(16, 64)
    h, cross = 2 * x.T @ x / len(x), 2 * x_ref.T @ x / len(x)
    target = reference_fit(w, h, cross, damp=1e-9).float()
    keep = keep_mask(target.abs() * x.norm(dim=0), 0.6, None, per_row=True)
    refit = refit_kept(target, keep, h, damp=1e-9)
    for r in range(len(w)):
        cols = keep[r].nonzero().squeeze(1)
        best = torch.linalg.lstsq(x[:, cols].double(), (x_ref @ w[r]).double()[:, None]).solution
        torch.testing.assert_close(refit[r, cols].double(), best.squeeze(1), rtol=1e-3,
                                   atol=1e-3)

    def error(fitted: torch.Tensor) -> float:
        return float(((x_ref @ w.T - x @ fitted.T) ** 2).mean())

    assert error(refit) < 0.75 * error(refit_kept(w, keep, h, damp=1e-9))  # the symmetric refit


# ---- methods on a tiny CLIP -----------------------------------------------------------------

def _apply(adapter, method, **cfg):
    stage = load_recipe({"stages": [{"prune": {"method": method, **cfg}}]}).stages[0]
    ctx = StageContext(data=toy_image_data(),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    return METHODS[("prune", method)].apply(adapter, stage.config, ctx)


def _sparse_layers(adapter) -> dict[str, nn.Module]:
    return {n: m for n, m in adapter.model.named_modules() if isinstance(m, SPARSE)}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "admm"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_methods_prune_every_targeted_layer_exactly(tiny_clip, method, pattern):
    cfg = {"pattern": pattern} if pattern != "unstructured" else {"sparsity": 0.6}
    summary = _apply(tiny_clip, method, **cfg)
    layers = _sparse_layers(tiny_clip)
    n_linear = sum(isinstance(m, nn.Linear) for m in layers.values())
    assert summary["modules"] == len(layers) and n_linear > 10
    assert isinstance(layers["vision_model.embeddings.patch_embedding"], SparseConv2d)
    for name, m in layers.items():
        keep = m.keep_mask()
        assert torch.equal(m.weight.reshape(keep.shape) != 0, keep) or (m.values == 0).any()
        if pattern == "unstructured":
            assert m.nnz == keep.numel() - round(0.6 * keep.numel()), name
        elif isinstance(m, nn.Conv2d):  # groups run over channels of one kernel position
            _assert_nm(keep.view(m.out_channels, 3, 64).transpose(1, 2).reshape(keep.shape), (2, 4))
        else:  # over the order the layer saved (method != magnitude: chosen by default)
            assert (m.input_order is None) is (method == "magnitude"), name
            order = torch.arange(m.cols) if m.input_order is None else m.input_order.long()
            _assert_nm(keep[:, order], (2, 4))
    assert summary["sparsity"] == pytest.approx(0.6 if pattern == "unstructured" else 0.5,
                                                abs=1e-3)



@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_embedding_tables_are_pruned_by_magnitude_row_by_row(tiny_clip, method):
    tables = {n: m.weight.detach().clone() for n, m in tiny_clip.model.named_modules()
              if isinstance(m, nn.Embedding)}
    summary = _apply(tiny_clip, method, sparsity=0.5, embeddings=True)
    layers = _sparse_layers(tiny_clip)
    assert set(tables) <= set(layers) and summary["modules"] == len(layers)
    for name, weight in tables.items():
        keep = layers[name].keep_mask()
        assert torch.equal(keep, keep_mask(weight.abs(), 0.5, per_row=True)), name
    texts = ["a cat", "the dog"]
    assert tiny_clip.encode_texts(texts).isfinite().all()

def test_sparsegpt_reloads_identically_and_keeps_texts_close(tiny_clip, tmp_path):
    texts = ["a cat", "the dog"]
    dense = tiny_clip.encode_texts(texts)
    _apply(tiny_clip, "sparsegpt", sparsity=0.5, targets=["text"])
    pruned = tiny_clip.encode_texts(texts)
    assert nn.functional.cosine_similarity(dense, pruned).min() > 0.8
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    assert isinstance(loaded.model.text_model.encoder.layers[0].mlp.fc1, SparseLinear)
    assert torch.equal(loaded.encode_texts(texts), pruned)


@pytest.mark.parametrize("nm", PATTERNS)
def test_sparsegpt_fitted_to_reference_outputs_undoes_input_error(nm):
    """From inputs an earlier pruned layer perturbed, SparseGPT on the least-squares map to the
    reference outputs lands closer to them than SparseGPT on W."""
    from mmcompress.calibration.reference import reference_fit

    x_ref, w = layer_inputs(), torch.randn(32, 64)
    x = x_ref + 0.5 * torch.randn_like(x_ref) @ torch.randn(64, 64) * 0.2
    h, cross = 2 * x.T @ x / len(x), 2 * x_ref.T @ x / len(x)
    err = {}
    for kind, weight in (("own", w), ("fitted", reference_fit(w, h, cross, 0.01).float())):
        pruned, keep = sparsegpt_prune(weight, h, 0.5, nm, block_size=32)
        assert keep.float().mean() == pytest.approx(0.5)
        err[kind] = float(((x @ pruned.T - x_ref @ w.T) ** 2).mean())
    assert err["fitted"] < 0.8 * err["own"]


@pytest.mark.parametrize("method,extra", [("sparsegpt", {}), ("sparsegpt", {"refit": False}),
                                          ("wanda", {"sequential": True, "refit": True}),
                                          ("admm", {})])
def test_asymmetric_pruning_prunes_exactly_and_reloads(tiny_clip, tmp_path, method, extra):
    texts = ["a cat", "the dog"]
    dense = tiny_clip.encode_texts(texts)
    symmetric = copy.deepcopy(tiny_clip)
    summary = _apply(tiny_clip, method, sparsity=0.5, targets=["text"], asymmetric=True,
                     **extra)
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    pruned = tiny_clip.encode_texts(texts)
    _apply(symmetric, method, sparsity=0.5, targets=["text"], **extra)
    assert not torch.allclose(symmetric.encode_texts(texts), pruned, atol=1e-5)  # it acted
    assert nn.functional.cosine_similarity(dense, pruned).min() > 0.8
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    assert torch.equal(mmcompress.load(tmp_path).encode_texts(texts), pruned)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "admm"])
def test_one_shot_statistics_come_from_the_unpruned_model(tiny_clip, method):
    """With `sequential: false` the last block is pruned as if nothing before it were: as a run
    on that block alone; sequential pruning sees the earlier blocks' error and picks otherwise."""
    last = f"text_model.encoder.layers.{len(tiny_clip.model.text_model.encoder.layers) - 1}"
    runs = {}
    for kind, cfg in (("one-shot", {"sequential": False, "targets": ["text"]}),
                      ("sequential", {"sequential": True, "targets": ["text"]}),
                      ("alone", {"sequential": True, "targets": [last]})):
        adapter = copy.deepcopy(tiny_clip)
        summary = _apply(adapter, method, sparsity=0.6, **cfg)
        assert summary["sparsity"] == pytest.approx(0.6, abs=1e-3)
        runs[kind] = {n: m for n, m in _sparse_layers(adapter).items() if n.startswith(last)}
    for name, alone in runs["alone"].items():
        assert torch.equal(runs["one-shot"][name].keep_mask(), alone.keep_mask()), name
        assert torch.equal(runs["one-shot"][name].values, alone.values), name
    assert any(not torch.equal(runs["sequential"][n].keep_mask(), m.keep_mask())
               for n, m in runs["alone"].items())


def _row_spread(keep: torch.Tensor) -> int:
    counts = keep.reshape(keep.shape[0], -1).sum(1)
    return int(counts.max() - counts.min())


def test_wanda_compares_rows_of_linear_layers_and_whole_convolutions(tiny_clip):
    conv, fc = "vision_model.embeddings.patch_embedding", "text_model.encoder.layers.0.mlp.fc1"
    auto = copy.deepcopy(tiny_clip)
    _apply(auto, "wanda", sparsity=0.6)
    layers = _sparse_layers(auto)
    assert _row_spread(layers[conv].keep_mask()) > 1  # the convolution's filters compete
    assert _row_spread(layers[fc].keep_mask()) <= 1  # each row keeps its share (± remainder)
    _apply(tiny_clip, "wanda", sparsity=0.6, comparison="row")
    assert _row_spread(_sparse_layers(tiny_clip)[conv].keep_mask()) <= 1


def test_sparsegpt_compares_rows_in_linear_layers_unless_told_layer(tiny_clip):
    fc, conv = "text_model.encoder.layers.0.mlp.fc1", "vision_model.embeddings.patch_embedding"
    block_wide = copy.deepcopy(tiny_clip)
    _apply(tiny_clip, "sparsegpt", sparsity=0.6)
    _apply(block_wide, "sparsegpt", sparsity=0.6, comparison="layer")
    layers, paper = _sparse_layers(tiny_clip), _sparse_layers(block_wide)
    assert _row_spread(layers[fc].keep_mask()) <= 1 < _row_spread(paper[fc].keep_mask())
    assert _row_spread(layers[conv].keep_mask()) > 1  # auto: a convolution's filters compete


def test_sparsegpt_act_order_chooses_on_the_columns_by_decreasing_hessian_diagonal(tiny_clip):
    fc = "text_model.encoder.layers.0.mlp.fc1"
    ordered = copy.deepcopy(tiny_clip)
    _apply(tiny_clip, "sparsegpt", sparsity=0.6)
    _apply(ordered, "sparsegpt", sparsity=0.6, act_order=True)
    plain, visited = _sparse_layers(tiny_clip)[fc], _sparse_layers(ordered)[fc]
    assert int(visited.keep_mask().sum()) == int(plain.keep_mask().sum())
    assert not torch.equal(visited.keep_mask(), plain.keep_mask())
    assert visited.input_order is None  # an unstructured mask saves no order


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_swaps_change_masks_not_counts_and_reload(tiny_clip, tmp_path, pattern, method):
    cfg = {"pattern": pattern} if pattern != "unstructured" else {"sparsity": 0.6}
    cfg["sequential"] = False  # every layer's mask from the same statistics with and without
    plain = copy.deepcopy(tiny_clip)
    _apply(plain, method, swaps=0, **cfg)
    summary = _apply(tiny_clip, method, swaps=50, **cfg)
    assert 0 < summary["swap_rounds_max"] <= 50
    plain_layers, layers = _sparse_layers(plain), _sparse_layers(tiny_clip)
    assert summary["sparsity"] == pytest.approx(0.6 if pattern == "unstructured" else 0.5,
                                                abs=1e-3)
    changed = 0
    for name, m in layers.items():
        keep, before = m.keep_mask(), plain_layers[name].keep_mask()
        assert torch.equal(keep.sum(1), before.sum(1)), name
        if pattern == "2:4" and not isinstance(m, nn.Conv2d):
            _assert_nm(keep[:, m.input_order.long()], (2, 4))  # groups over its chosen order
        changed += int((keep != before).sum())
    assert changed > 0
    texts = ["a photo of a cat", "two dogs"]
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    assert torch.equal(mmcompress.load(tmp_path).encode_texts(texts),
                       tiny_clip.encode_texts(texts))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "admm"])
def test_refit_keeps_the_mask_changes_weights_and_reloads(tiny_clip, tmp_path, method):
    plain, default = copy.deepcopy(tiny_clip), copy.deepcopy(tiny_clip)
    _apply(plain, method, sparsity=0.6, refit=False)
    _apply(default, method, sparsity=0.6)
    _apply(tiny_clip, method, sparsity=0.6, refit=True)
    texts = ["a photo of a cat", "two dogs"]
    refit_by_default = method != "wanda"  # Wanda updates no weights by default
    assert torch.equal(default.encode_texts(texts), (tiny_clip if refit_by_default
                                                     else plain).encode_texts(texts))
    plain_layers, layers = _sparse_layers(plain), _sparse_layers(tiny_clip)
    moved = 0
    for name, m in layers.items():
        if method == "wanda":  # the same scores: the same masks
            assert torch.equal(m.keep_mask(), plain_layers[name].keep_mask()), name
        assert m.nnz == plain_layers[name].nnz
        moved += int(not torch.allclose(m.values, plain_layers[name].values))
    assert moved > 10
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    assert torch.equal(mmcompress.load(tmp_path).encode_texts(texts),
                       tiny_clip.encode_texts(texts))


def _layer_inputs_while_pruning(adapter, name: str, method: str, **cfg) -> torch.Tensor:
    """Prune only layer `name` in one pass and return the inputs it saw while calibrating."""
    seen: list[torch.Tensor] = []
    hook = adapter.model.get_submodule(name).register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    _apply(adapter, method, targets=[name], sequential=False, **cfg)
    hook.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("method,extra", [("wanda", {}), ("sparsegpt", {}),
                                          ("sparsegpt", {"refit": False}), ("admm", {})])
def test_bias_correction_keeps_the_mean_output_on_calibration_inputs(tiny_clip, method, extra):
    name = "vision_model.encoder.layers.1.mlp.fc2"
    dense = copy.deepcopy(tiny_clip.model.get_submodule(name))
    x = _layer_inputs_while_pruning(tiny_clip, name, method, sparsity=0.6,
                                    bias_correction=True, **extra)
    pruned = tiny_clip.model.get_submodule(name)
    assert isinstance(pruned, SparseLinear) and pruned.nnz == round(0.4 * pruned.cols * pruned.rows)
    with torch.no_grad():
        shift = (pruned(x) - dense(x)).mean(0)
        assert shift.abs().max() < 1e-4 * dense(x).abs().mean()
        assert not torch.allclose(pruned.bias, dense.bias)


def test_bias_correction_refit_is_least_squares_with_an_intercept(tiny_clip):
    """With the mask fixed, refitting to the centred Gram matrix and shifting the bias solves
    each row's least squares with an intercept, and loses less than the plain refit."""
    name = "vision_model.encoder.layers.1.mlp.fc1"
    dense = copy.deepcopy(tiny_clip.model.get_submodule(name))
    plain = copy.deepcopy(tiny_clip)
    cfg = {"sparsity": 0.7, "swaps": 0, "refit": True, "damp": 1e-7}
    x = _layer_inputs_while_pruning(tiny_clip, name, "wanda", bias_correction=True, **cfg)
    _layer_inputs_while_pruning(plain, name, "wanda", **cfg)
    shifted, fitted = tiny_clip.model.get_submodule(name), plain.model.get_submodule(name)
    keep = shifted.keep_mask()
    assert torch.equal(keep, fitted.keep_mask())  # Wanda's scores: the same mask
    with torch.no_grad():
        target = dense(x).double()
        for row in range(0, keep.shape[0], 7):
            design = torch.cat([x[:, keep[row]], torch.ones(len(x), 1)], 1).double()
            solution = torch.linalg.lstsq(design, target[:, row:row + 1]).solution.squeeze(1)
            got = torch.cat([shifted.weight[row, keep[row]], shifted.bias[row:row + 1]])
            assert torch.allclose(got.double(), solution, rtol=1e-3, atol=1e-4), row
        errors = [float((m(x) - dense(x)).pow(2).mean()) for m in (shifted, fitted)]
    assert errors[0] < 0.99 * errors[1]


def test_global_scope_spreads_sparsity_unevenly(tiny_clip):
    summary = _apply(tiny_clip, "magnitude", sparsity=0.5, scope="global")
    layers = _sparse_layers(tiny_clip).values()
    assert sum(m.rows * m.cols - m.nnz for m in layers) == round(
        0.5 * sum(m.rows * m.cols for m in layers))
    assert len({round(m.sparsity, 2) for m in layers}) > 3 and summary["sparsity"] == 0.5


def test_owl_ratios_prune_outlier_blocks_less():
    gen = torch.Generator().manual_seed(0)
    flat = [torch.rand(32, 32, generator=gen)]
    spiky = [torch.rand(32, 32, generator=gen)]
    spiky[0][:, :2] *= 40  # outlier input channels
    ratios = {"a": outlier_ratio(flat, 5.0), "b": outlier_ratio(spiky, 5.0), "c": 0.01}
    assert ratios["a"] == 0 < ratios["b"]
    per_block = owl_sparsities(ratios, 0.7, 0.08)
    assert per_block["b"] < per_block["c"] < per_block["a"]
    assert max(per_block.values()) - min(per_block.values()) == pytest.approx(0.16)
    assert sum(per_block.values()) / 3 == pytest.approx(0.7)
    assert owl_sparsities({"a": 0.1, "b": 0.1}, 0.6, 0.08) == {"a": 0.6, "b": 0.6}


@pytest.mark.parametrize("target", [0.03, 0.5, 0.95])
def test_owl_removes_the_target_share_of_all_weights_even_where_it_clamps(target):
    """Blocks of unequal size, sparsities near 0 or 0.99: the weights removed in all are
    still the target, and each block stays in [0, 0.99]."""
    ratios, sizes = {"a": 0.0, "b": 0.0, "c": 1.0}, {"a": 100, "b": 300, "c": 600}
    per_block = owl_sparsities(ratios, target, 0.08, sizes)
    removed = sum(per_block[b] * n for b, n in sizes.items()) / sum(sizes.values())
    assert removed == pytest.approx(target, abs=1e-6)
    assert all(0.0 <= v <= 0.99 for v in per_block.values())
    assert per_block["c"] <= per_block["a"] == per_block["b"]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_owl_keeps_the_mean_sparsity_and_varies_it_by_block(tiny_clip, method):
    summary = _apply(tiny_clip, method, sparsity=0.6, layer_sparsity="owl", targets=["text"])
    layers = _sparse_layers(tiny_clip)
    by_block: dict[str, set] = {}
    for name, m in layers.items():
        block = name.split(".mlp")[0].split(".self_attn")[0]
        by_block.setdefault(block, set()).add(round(m.sparsity, 2))
    assert all(len(v) == 1 for v in by_block.values())  # one sparsity per block
    assert len({next(iter(v)) for v in by_block.values()}) > 1
    assert summary["sparsity"] == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("swaps", [0, 20])
def test_one_shot_owl_gets_the_same_sparsities_from_the_masks_pass(tiny_clip, swaps,
                                                                   monkeypatch):
    """One-shot Wanda reads OWL's ratios from the pass that also scores its masks (with
    `swaps`, a Gram matrix's diagonal) and gives the per-block sparsities of a separate pass."""
    from mmcompress.methods import prune_unstructured as pu

    sequential = copy.deepcopy(tiny_clip)
    _apply(sequential, "wanda", sparsity=0.6, layer_sparsity="owl", targets=["text"],
           sequential=True)
    passes = []
    original = pu._unpruned_stats
    monkeypatch.setattr(pu, "_unpruned_stats", lambda *a: passes.append(a[-1]) or original(*a))
    _apply(tiny_clip, "wanda", sparsity=0.6, layer_sparsity="owl", targets=["text"],
           swaps=swaps)
    assert passes == ["wanda"]
    for name, m in _sparse_layers(tiny_clip).items():
        assert m.sparsity == pytest.approx(_sparse_layers(sequential)[name].sparsity), name


def test_masked_error_is_the_relative_output_error():
    x, w = layer_inputs(), torch.randn(12, 64)
    keep = torch.rand_like(w) > 0.4
    direct = ((x @ (w * ~keep).T) ** 2).sum() / ((x @ w.T) ** 2).sum()
    assert masked_error(w, keep, x.T @ x) == pytest.approx(float(direct), rel=1e-6)


def test_sensitivity_prunes_the_layer_whose_inputs_matter_less_more():
    """Two layers alike but for their inputs: one reads 4 strong features and 60 near-zero
    ones, the other 64 alike; the first can lose far more of its weights for the same error,
    and all weights together lose the target share."""
    torch.manual_seed(0)
    scale = torch.cat([torch.full((4,), 10.0), torch.full((60,), 0.01)])
    x = {"few": torch.randn(256, 64) * scale, "all": torch.randn(256, 64)}
    layers = {n: nn.Linear(64, 32, bias=False) for n in x}
    norms = {n: v.norm(dim=0) for n, v in x.items()}

    def keep_at(name, module, sparsity):
        return keep_mask(module.weight.detach().abs() * norms[name], sparsity, per_row=True)

    per_layer = sensitivity_sparsities(layers, {n: v.T @ v for n, v in x.items()}, 0.5,
                                       keep_at, probe=None)
    assert per_layer["few"] > 0.5 > per_layer["all"]
    assert (per_layer["few"] + per_layer["all"]) / 2 == pytest.approx(0.5, abs=0.03)


def test_sensitivity_prunes_the_layer_the_probe_finds_harmless_more():
    """Two identical layers: the curve alone cannot tell them apart, the probe's measured loss
    (ten times larger for 'key') decides which one loses more weights."""
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    layer = nn.Linear(64, 32, bias=False)
    layers = {"key": layer, "other": copy.deepcopy(layer)}

    class Probe:
        def measure(self, modules, compress):
            loss = 0.1 if "key" in modules else 0.01
            return {"similarity_loss": loss, "fidelity_loss": float("nan")}

    def keep_at(name, module, sparsity):
        return keep_mask(module.weight.detach().abs() * x.norm(dim=0), sparsity, per_row=True)

    per_layer = sensitivity_sparsities(layers, dict.fromkeys(layers, x.T @ x), 0.5, keep_at,
                                       Probe())
    assert per_layer["key"] < 0.5 < per_layer["other"]


def test_sensitivity_sparsities_keep_the_stage_sparsity_and_vary_by_layer(tiny_clip):
    summary = _apply(tiny_clip, "wanda", sparsity=0.6, layer_sparsity="sensitivity",
                     targets=["text"], sensitivity_samples=8)
    sparsities = {round(m.sparsity, 2) for m in _sparse_layers(tiny_clip).values()}
    assert len(sparsities) > 1
    low, high = summary["layer_sparsity_range"]
    assert low < 0.6 < high
    assert summary["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert list(summary["tower_sparsity"]) == ["text"]
    assert summary["tower_sparsity"]["text"] == pytest.approx(summary["sparsity"], abs=1e-4)


def _quantize(adapter, method, **cfg):
    stage = load_recipe({"stages": [{"quantize": {"method": method, **cfg}}]}).stages[0]
    ctx = StageContext(data=toy_image_data(),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    return METHODS[("quantize", method)].apply(adapter, stage.config, ctx)


@pytest.mark.parametrize("method,cfg", [("rtn", {"bits": 8}),
                                        ("gptq", {"bits": 4, "group_size": 16}),
                                        ("awq", {"bits": 4, "group_size": 16, "n_grid": 4})])
def test_quantizing_a_pruned_model_keeps_its_zeros(tiny_clip, method, cfg):
    _apply(tiny_clip, "magnitude", pattern="2:4", targets=["text"])
    masks = {n: m.keep_mask() for n, m in _sparse_layers(tiny_clip).items()}
    _quantize(tiny_clip, method, targets=["text"], embeddings=False, **cfg)
    modules = dict(tiny_clip.model.named_modules())
    for name, keep in masks.items():
        m = modules[name]
        assert isinstance(m, SparseQuantLinear) and torch.equal(m.keep_mask(), keep)
        w = m.weight.reshape(keep.shape)
        assert (w[~keep] == 0).all() and (w[keep] != 0).float().mean() > 0.9


def test_prune_then_quantize_in_one_recipe(tiny_clip, tmp_path):
    recipe = {"stages": [{"prune": {"method": "sparsegpt", "sparsity": 0.5}},
                         {"quantize": {"method": "gptq", "bits": 8}}],
              "calibration": {"samples": 8, "batch_size": 4}, "evaluate": FAST_EVAL}
    names = {n for n, m in tiny_clip.model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_image_data(),
                                 progress=False)
    layers = {n: m for n, m in result.adapter.model.named_modules()
              if isinstance(m, SparseQuantLinear | SparseQuantConv2d)}
    assert set(layers) == names and all(m.nnz == m.rows * m.cols // 2 for m in layers.values())
    report = result.report
    assert report["stages"][0]["summary"]["sparsity"] == 0.5
    assert report["after"]["size_bytes"] < 0.4 * report["before"]["size_bytes"]
    assert report["after"]["fidelity_cosine"] > 0.8
    texts = ["a cat", "the dog"]
    assert torch.equal(mmcompress.load(tmp_path / "out").encode_texts(texts),
                       result.adapter.encode_texts(texts))



def test_pruned_tables_quantize_and_reload_in_one_recipe(tiny_clip, tmp_path):
    recipe = {"stages": [{"prune": {"method": "wanda", "sparsity": 0.5, "embeddings": True}},
                         {"quantize": {"method": "rtn", "bits": 8}}],
              "calibration": {"samples": 8, "batch_size": 4}, "evaluate": FAST_EVAL}
    tables = [n for n, m in tiny_clip.model.named_modules() if isinstance(m, nn.Embedding)]
    result = mmcompress.compress(tiny_clip, recipe, out=tmp_path / "out", data=toy_image_data(),
                                 progress=False)
    modules = dict(result.adapter.model.named_modules())
    assert tables and all(isinstance(modules[n], SparseQuantEmbedding) for n in tables)
    texts = ["a cat", "the dog"]
    assert torch.equal(mmcompress.load(tmp_path / "out").encode_texts(texts),
                       result.adapter.encode_texts(texts))
    unpacked = mmcompress.load(tmp_path / "out", unpack=True)
    kinds = {type(m) for m in unpacked.model.modules()}
    assert nn.Embedding in kinds and not kinds & {SparseQuantEmbedding, SparseQuantLinear}
    torch.testing.assert_close(unpacked.encode_texts(texts), result.adapter.encode_texts(texts),
                               atol=1e-5, rtol=1e-4)


# ---- bad settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,fragment", [
    ({"sparsity": 1.0}, "less than 1"),
    ({"sparsity": -0.1}, "greater than or equal to 0"),
    ({"pattern": "3:2"}, "pattern must be"),
    ({"pattern": "2:4:8"}, "pattern must be"),
    ({"pattern": "dense"}, "pattern must be"),
    ({}, "give 'sparsity'"),
    ({"pattern": "2:4", "sparsity": 0.7}, "means sparsity 0.5"),
    ({"sparsity": 0.5, "scope": "global", "method": "wanda"}, "needs method 'magnitude'"),
    ({"sparsity": 0.5, "scope": "tower"}, "scope"),
    ({"sparsity": 0.5, "blocksize": 4, "method": "sparsegpt"}, "unknown key 'blocksize'"),
    ({"sparsity": 0.5, "layer_sparsity": "owl"}, "needs method wanda, sparsegpt or admm"),
    ({"pattern": "2:4", "layer_sparsity": "owl", "method": "wanda"}, "unstructured pattern"),
    ({"pattern": "2:4", "layer_sparsity": "sensitivity", "method": "sparsegpt"},
     "layer_sparsity 'sensitivity'"),
    ({"sparsity": 0.5, "embeddings": True, "schedule": {"end": 0.5}}, "set 'embeddings' false"),
    ({"sparsity": 0.5, "method": "sparsegpt", "asymmetric": True, "sequential": False},
     "set 'sequential: true'"),
    ({"sparsity": 0.5, "method": "wanda", "asymmetric": True}, "set 'sequential: true'"),
    ({"sparsity": 0.5, "method": "wanda", "asymmetric": True, "sequential": True,
      "schedule": {"end": 0.5}}, "drop one of them"),
    ({"sparsity": 0.5, "sequential": False}, "unknown key 'sequential'"),  # magnitude
    ({"sparsity": 0.5, "method": "wanda", "swaps": 10, "schedule": {"end": 0.5}},
     "drop one of them"),
    ({"sparsity": 0.5, "method": "wanda", "swaps": -1}, "greater than or equal to 0"),
    ({"sparsity": 0.5, "method": "sparsegpt", "swaps": 10, "refit": False}, "set 'refit: true'"),
    ({"sparsity": 0.5, "method": "admm", "swaps": 10, "refit": False}, "set 'refit: true'"),
    ({"sparsity": 0.5, "method": "admm", "iterations": 0}, "greater than or equal to 1"),
    ({"sparsity": 0.5, "method": "wanda", "refit": True, "schedule": {"end": 0.5}},
     "drop one of them"),
    ({"sparsity": 0.5, "refit": True}, "unknown key 'refit'"),  # magnitude
    ({"sparsity": 0.5, "method": "wanda", "permute": True}, "give an N:M 'pattern'"),
    ({"pattern": "2:4", "method": "sparsegpt", "act_order": True}, "'act_order' orders"),
    ({"sparsity": 0.5, "method": "wanda", "act_order": True}, "unknown key 'act_order'"),
])
def test_bad_settings_are_recipe_errors(cfg, fragment):
    cfg = {"method": "magnitude", **cfg}
    with pytest.raises(RecipeError, match=fragment):
        load_recipe({"stages": [{"prune": cfg}]})


def test_swaps_true_means_the_default_rounds_wandas_default():
    recipe = load_recipe("stages:\n  - prune: {method: wanda, sparsity: 0.5, swaps: true}\n"
                         "  - prune: {method: wanda, sparsity: 0.5, swaps: false}\n"
                         "  - prune: {method: wanda, sparsity: 0.5}\n"
                         "  - prune: {method: sparsegpt, sparsity: 0.5}\n")
    assert [s.config.swaps for s in recipe.stages] == [200, 0, 200, 0]


def test_unquoted_yaml_pattern_is_read_as_n_m():
    recipe = load_recipe("stages:\n  - prune: {method: wanda, pattern: 2:4}\n")
    assert recipe.stages[0].config.pattern == "2:4"


def test_pattern_not_dividing_a_layer_is_refused_before_any_change(tiny_clip):
    with pytest.raises(RecipeError, match=r"not a multiple of 5.*'ignore'"):
        _apply(tiny_clip, "magnitude", pattern="2:5")
    assert not _sparse_layers(tiny_clip)


def test_cli_prints_one_error_line_for_bad_sparsity(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"prune": {"method": "wanda",
                                                            "sparsity": 1.5}}]}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compress", "--model", "demo", "--recipe", str(recipe),
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "sparsity" in lines[0]
    assert not out.exists()


# ---- the pretrained MiniLM on real data ----------------------------------------------------

@pytest.mark.integration
def test_calibrated_pruning_keeps_minilm_far_closer_than_magnitude(shared_data):
    """70% of every encoder linear weight of the pretrained MiniLM, calibrated on STS-B train
    and scored on STS-B dev pairs: ADMM and SparseGPT stay close to the dense embeddings and
    Spearman, magnitude pruning does not (full runs: benchmarks.prune_unstructured)."""
    from mmcompress.data import load_data
    from mmcompress.evaluation.evaluate import quality
    from mmcompress.methods import run_stages
    from mmcompress.model_specs import load_model

    base = load_model("minilm", progress=False)
    train = load_data(shared_data / "stsb" / "sts-train.csv")
    dev = load_data(shared_data / "stsb" / "sts-dev.csv").head(500)
    dense = quality(base, dev)
    context = StageContext(data=train, calibration=CalibrationConfig(samples=256),
                           progress=False)
    result = {}
    for method in ("magnitude", "sparsegpt", "admm"):
        adapter = copy.deepcopy(base)
        run_stages(adapter, load_recipe({"stages": [{"prune": {
            "method": method, "sparsity": 0.7}}]}).stages, context)
        result[method] = quality(adapter, dev, dense.embeddings).metrics
    loss = {m: dense.metrics["stsb_spearman"] - r["stsb_spearman"] for m, r in result.items()}
    fidelity = {m: r["fidelity_cosine"] for m, r in result.items()}
    assert loss["admm"] < 0.03 and loss["sparsegpt"] < 0.04 < loss["magnitude"]
    assert fidelity["admm"] > fidelity["sparsegpt"] > fidelity["magnitude"] + 0.2


def test_global_scope_keeps_every_token_rows_share(tiny_clip):
    """Tables are not ranked against the linear weights: each row keeps the same share."""
    _apply(tiny_clip, "magnitude", sparsity=0.5, scope="global", embeddings=True)
    table = tiny_clip.model.text_model.embeddings.token_embedding
    assert isinstance(table, SparseEmbedding)
    kept = table.keep_mask().sum(1)
    assert (kept == table.embedding_dim // 2).all()


def test_nothing_pruned_reports_zero_sparsity(tiny_clip):
    summary = _apply(tiny_clip, "magnitude", sparsity=0.0)
    assert summary["sparsity"] == 0.0 and not _sparse_layers(tiny_clip)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_quantized_layers_are_refused_before_anything_changes(tiny_clip, method):
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8,
                                                  "targets": ["text"]}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, StageContext(progress=False))
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    with pytest.raises(RecipeError, match="a QuantLinear .* prune before quantizing"):
        _apply(tiny_clip, method, sparsity=0.5)
    assert all(torch.equal(v, tiny_clip.model.state_dict()[k]) for k, v in before.items())
    summary = _apply(tiny_clip, method, sparsity=0.5, targets=["vision"])  # the fp32 tower
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("quantize", [{"method": "rtn", "bits": 16},
                                      {"method": "smoothquant"}])
def test_dense_formats_after_pruning_say_they_store_sparse_layers_dense(tiny_clip, quantize):
    _apply(tiny_clip, "magnitude", sparsity=0.5, targets=["text"])
    n = len(_sparse_layers(tiny_clip))
    stage = load_recipe({"stages": [{"quantize": {**quantize, "targets": ["text"]}}]}).stages[0]
    ctx = StageContext(data=toy_image_data(),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    summary = METHODS[("quantize", quantize["method"])].apply(tiny_clip, stage.config, ctx)
    assert summary["sparse_stored_dense"] == n > 0


def test_half_precision_tables_do_not_block_pruning_the_layers(tiny_clip):
    """Tables stored in half precision (HalfWeight) stop a prune stage only when it prunes
    tables too."""
    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 16,
                                                  "targets": ["re:_embedding$"],
                                                  "ignore": ["re:patch"]}}]}).stages[0]
    METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, StageContext(progress=False))
    assert _apply(tiny_clip, "magnitude", sparsity=0.5)["sparsity"] == pytest.approx(0.5)
    with pytest.raises(RecipeError, match="a HalfWeight"):
        _apply(tiny_clip, "magnitude", sparsity=0.5, embeddings=True)


def test_smoothquant_folds_its_scales_into_the_norms_before_pruned_layers(tiny_clip):
    """A sparse layer's `.weight` is rebuilt on every access, so scaling it in place did
    nothing: the fold check failed and every fold was undone (W8A8 divided inputs at run time)."""
    _apply(tiny_clip, "magnitude", sparsity=0.5, targets=["text"])
    stage = load_recipe({"stages": [{"quantize": {"method": "smoothquant",
                                                  "targets": ["text"]}}]}).stages[0]
    ctx = StageContext(data=toy_image_data(),
                       calibration=CalibrationConfig(samples=8, batch_size=4), progress=False)
    summary = METHODS[("quantize", "smoothquant")].apply(tiny_clip, stage.config, ctx)
    assert summary["smoothed_by_norm"] > 0


def test_scaling_a_sparse_layers_columns_scales_its_dense_weight():
    from mmcompress.modules.sparse import sparse_module

    layer = nn.Linear(6, 4)
    keep = torch.rand(4, 6) > 0.5
    sparse = sparse_module(layer, keep)
    s = torch.arange(1.0, 7.0)
    expected = sparse.weight * s
    sparse.scale_columns(s)
    torch.testing.assert_close(sparse.weight, expected)
