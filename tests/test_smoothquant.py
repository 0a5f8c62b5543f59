"""SmoothQuant numerics, activation observers, the W8A8 module and its save/reload."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from _helpers import apply_smoothquant
from torch import nn

import mmcompress
from mmcompress.errors import RecipeError, UserError
from mmcompress.io.checkpoint import save_checkpoint
from mmcompress.modules import W8A8Linear
from mmcompress.quantization.observers import (
    activation_scale,
    activation_threshold,
    percentile_threshold,
    quantization_mse,
)
from mmcompress.quantization.smoothquant import (
    ALPHA_GRID,
    search_alpha,
    smoothing_scales,
    w8a8_error,
)
from mmcompress.recipe import load_recipe


def _outlier_inputs(n: int = 512, cols: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, cols, generator=gen)
    x[:, :3] *= 30  # a few outlier channels, as in transformer activations
    return x


def test_smoothing_scales_follow_the_formula_and_flatten_outliers():
    x, w = _outlier_inputs(), torch.randn(48, 64)
    x_max = x.abs().amax(0)
    s = smoothing_scales(x_max, w, 0.5)
    torch.testing.assert_close(s, (x_max / w.abs().amax(0)).sqrt())
    before = x_max.max() / x_max.median()
    after = (x / s).abs().amax(0)
    assert after.max() / after.median() < before / 4


@pytest.mark.parametrize("alpha", [0.2, 0.8])
def test_smoothing_scales_follow_the_formula_away_from_one_half(alpha):
    """s = max|X|^α / max|W|^(1−α): at α = 0.5 both exponents are equal, so a swapped weight
    exponent (max|W|^α) only shows at other values."""
    x, w = _outlier_inputs(), torch.randn(48, 64) * (torch.rand(64) * 3 + 0.1)
    x_max, w_max = x.abs().amax(0), w.abs().amax(0)
    s = smoothing_scales(x_max, w, alpha)
    torch.testing.assert_close(s, x_max ** alpha / w_max ** (1 - alpha))


def test_module_weight_error_is_within_half_a_step():
    """Only rounding separates the stored smoothed weight from W·diag(s)."""
    torch.manual_seed(0)
    lin, x = nn.Linear(64, 32), _outlier_inputs()
    s = smoothing_scales(x.abs().amax(0), lin.weight, 0.5)
    smoothed = lin.weight.detach() * s
    mod = W8A8Linear.from_linear(lin, float((x / s).abs().max()) / 127, s)
    err = (mod.dense_weight() * s - smoothed).abs()
    assert (err <= mod.weight_scale[:, None] / 2 + 1e-6).all()


def test_observer_thresholds_are_ordered():
    torch.manual_seed(0)
    sample = torch.distributions.StudentT(2.0).sample((20000,))  # heavy tails
    top = float(sample.abs().max())
    minmax = activation_threshold(sample, top, "minmax")
    pct = activation_threshold(sample, top, "percentile", percentile=99.9)
    assert minmax == top and pct < minmax
    assert percentile_threshold(torch.arange(1, 10001.0), 99.0) == 9900


@pytest.mark.parametrize("percentile,expected", [(99.0, 9900), (99.99, 9999), (100.0, 10000)])
def test_percentile_threshold_is_the_value_with_the_right_count_above_it(percentile, expected):
    """Exactly ⌊(100 − p)·n/100⌋ of the n values lie above the p-th percentile (numpy's
    'inverted_cdf' in exact arithmetic); taking one value fewer from the top returned the next
    value up (9,901 for p99 of 1..10,000), which a tolerance of 1 let through."""
    values = torch.arange(1, 10001.0)[torch.randperm(10000, generator=torch.Generator()
                                                     .manual_seed(0))]
    assert percentile_threshold(-values, percentile) == expected  # of |values|


_TEN = [0, 1, 2, 3, 4, 5, 6, 7, 8, 100]


@pytest.mark.parametrize("values,percentile,expected", [
    (_TEN, 80.0, 7), (_TEN, 85.0, 8), (_TEN, 90.0, 8), (_TEN, 95.0, 100),
    (range(1, 10001), 99.9, 9990)])
def test_percentile_threshold_counts_the_values_above_exactly(values, percentile, expected):
    """p90 of ten values leaves exactly one above it, but (1 − 0.9)·10 is 0.999… in floats:
    truncated to no value above, the observer returned the maximum (100) instead of 8 (and
    8 for p80, 9,991 for p99.9 of 1..10,000)."""
    assert percentile_threshold(torch.tensor(values, dtype=torch.float32), percentile) == expected


def test_mse_observer_is_no_worse_than_minmax_on_heavy_tails():
    torch.manual_seed(0)
    sample = torch.distributions.StudentT(3.0).sample((50000,))
    top = float(sample.abs().max())
    t = activation_threshold(sample, top, "mse")
    assert 0 < t < top
    assert quantization_mse(sample, t) < 0.9 * quantization_mse(sample, top)


@pytest.mark.parametrize("smooth", [False, True])
def test_w8a8_layer_close_to_fp32(smooth):
    torch.manual_seed(0)
    lin, x = nn.Linear(256, 128), torch.randn(4, 50, 256)
    s = smoothing_scales(x.abs().amax((0, 1)), lin.weight, 0.5) if smooth else None
    xs = x if s is None else x / s
    mod = W8A8Linear.from_linear(lin, float(xs.abs().max()) / 127, s)
    with torch.inference_mode():
        ref, out = lin(x), mod(x)
    assert out.shape == ref.shape
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999
    # the integer kernel (where present) and the dequantizing path agree
    torch.testing.assert_close(out, mod.reference_forward(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [32, 35])  # 35: the conv drops the last partial patch
def test_patch_conv_w8a8_matches_the_convolution(size):
    from mmcompress.modules.int8 import W8A8PatchConv2d

    torch.manual_seed(0)
    conv, x = nn.Conv2d(3, 24, 8, 8), torch.randn(2, 3, size, size)
    mod = W8A8PatchConv2d.from_conv(conv, float(x.abs().max()) / 127, torch.rand(192) + 0.5)
    with torch.inference_mode():
        ref, out = conv(x), mod(x)
    assert out.shape == ref.shape and mod.weight.shape == conv.weight.shape
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999
    torch.testing.assert_close(mod.to_dense()(x), ref, rtol=0.05, atol=0.02)
    with torch.inference_mode():  # an empty batch gives an empty output, as the conv does
        assert mod(x[:0]).shape == conv(x[:0]).shape
    with pytest.raises(ValueError, match="patchifying"):
        W8A8PatchConv2d.from_conv(nn.Conv2d(3, 8, 3, padding=1), 0.1)


def test_packed_weight_is_cached_and_rebuilt_when_the_state_changes():
    torch.manual_seed(0)
    mod = W8A8Linear.from_linear(nn.Linear(32, 16), 0.05)
    x = torch.randn(3, 32)
    first = mod(x)
    kernel = mod._kernel()
    assert mod._kernel() is kernel  # not re-packed per call
    with torch.no_grad():
        mod.weight_scale.mul_(2)
    torch.testing.assert_close(mod(x), 2 * (first - mod.bias) + mod.bias)


def test_w8a8_falls_back_when_the_kernel_is_off():
    torch.manual_seed(0)
    mod = W8A8Linear.from_linear(nn.Linear(32, 16), 0.05)
    x = torch.randn(5, 32)
    fast = mod(x)
    mod.kernel = "reference"
    torch.testing.assert_close(mod(x), fast, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mod(x.double()).float(), fast, rtol=1e-5, atol=1e-5)


def test_w8a8_without_an_integer_kernel_uses_the_dequantizing_path(monkeypatch):
    from mmcompress.modules import int8

    torch.manual_seed(0)
    mod = W8A8Linear.from_linear(nn.Linear(32, 16), 0.05, torch.rand(32) + 0.5)
    x = torch.randn(5, 32)
    fast = mod(x)
    monkeypatch.setattr(int8, "_BUILDERS", {n: (lambda: False, k)
                                            for n, (_, k) in int8._BUILDERS.items()})
    mod._cache = {}
    assert mod._kernel() is None
    torch.testing.assert_close(mod(x), fast, rtol=1e-5, atol=1e-5)


def test_onednn_gets_unsigned_activation_codes(monkeypatch):
    """oneDNN's fast int8 GEMM on VNNI CPUs takes u8 activations; given s8, it fell back to a
    reference loop 740–980× slower than fp32 on an AMD EPYC. The codes are the signed ones
    plus 128."""
    from mmcompress.modules import int8

    x = torch.linspace(-40, 40, 801).reshape(3, 267)
    signed = int8.quantize_activation(x, 0.25)
    unsigned = int8.quantize_activation(x, 0.25, unsigned=True)
    assert signed.dtype == torch.int8 and unsigned.dtype == torch.uint8
    assert torch.equal(unsigned.int(), signed.int() + int8.U8_ZERO)
    assert unsigned.min() == 0 and unsigned.max() == 255  # saturates where signed does
    torch.manual_seed(0)
    mod = W8A8Linear.from_linear(nn.Linear(32, 16), 0.05, torch.rand(32) + 0.5)
    mod.kernel = "onednn"
    if mod._kernel() is None:
        pytest.skip("no oneDNN int8 kernel on this machine")
    calls = []
    real = torch.ops.onednn.qlinear_pointwise
    monkeypatch.setattr(torch.ops.onednn, "qlinear_pointwise",
                        lambda *a: calls.append((a[0].dtype, a[2])) or real(*a), raising=False)
    x = torch.randn(5, 32)
    torch.testing.assert_close(mod(x), mod.reference_forward(x), rtol=1e-5, atol=1e-5)
    assert calls == [(torch.uint8, int8.U8_ZERO)]


@pytest.mark.parametrize("smooth", [False, True])
def test_each_integer_kernel_computes_the_reference_function(smooth):
    from mmcompress.modules import int8

    torch.manual_seed(0)
    mod = W8A8Linear.from_linear(nn.Linear(48, 24), 0.05, torch.rand(48) + 0.5 if smooth
                                 else None)
    x = torch.randn(2, 7, 48) * 3  # some inputs clip
    ran = 0
    for name in ("onednn", "fbgemm"):
        mod.kernel = name
        kernel = mod._kernel()
        if kernel is None:
            continue
        assert type(kernel) is int8._BUILDERS[name][1]
        torch.testing.assert_close(mod(x), mod.reference_forward(x), rtol=1e-5, atol=1e-5)
        ran += 1
    if not ran:
        pytest.skip("no integer kernel on this machine")


def test_auto_kernel_is_the_faster_of_those_that_compute_the_right_function(monkeypatch):
    from mmcompress.modules import int8

    class Wrong:  # instant, but saturates like an int16 GEMM would
        def __init__(self, mod):
            self.mod = mod

        def __call__(self, x):
            return self.mod.reference_forward(x).clamp(-1, 1)

    class Slow:  # right, but slower than every real kernel
        def __init__(self, mod):
            self.mod = mod

        def __call__(self, x):
            import time

            time.sleep(0.01)
            return self.mod.reference_forward(x)

    class Right:  # right, and with no delay
        def __init__(self, mod):
            self.mod = mod

        def __call__(self, x):
            return self.mod.reference_forward(x)

    monkeypatch.delenv(int8.KERNEL_ENV, raising=False)
    monkeypatch.setattr(int8, "_BUILDERS", {"wrong": (lambda: True, Wrong),
                                            "slow": (lambda: True, Slow),
                                            "right": (lambda: True, Right)})
    int8.fastest_kernel.cache_clear()
    try:
        torch.manual_seed(3)
        assert int8.fastest_kernel(16, 8) == "right"
        after = torch.rand(4)
        torch.manual_seed(3)
        assert torch.equal(torch.rand(4), after)  # the probe leaves the global generator be
        monkeypatch.setattr(int8, "_BUILDERS", {"wrong": (lambda: True, Wrong),
                                                "slow": (lambda: True, Slow)})
        int8.fastest_kernel.cache_clear()
        assert int8.fastest_kernel(16, 8) == "slow"
        monkeypatch.setattr(int8, "_BUILDERS", {"wrong": (lambda: True, Wrong)})
        int8.fastest_kernel.cache_clear()
        assert int8.fastest_kernel(16, 8) == "reference"
        monkeypatch.setenv(int8.KERNEL_ENV, "fbgemm")
        int8.fastest_kernel.cache_clear()
        assert int8.fastest_kernel(16, 8) == "fbgemm"
        monkeypatch.setenv(int8.KERNEL_ENV, "mkl")
        int8.fastest_kernel.cache_clear()
        with pytest.raises(UserError, match="MMCOMPRESS_INT8_KERNEL='mkl'"):
            int8.fastest_kernel(16, 8)
    finally:
        int8.fastest_kernel.cache_clear()


class _Block(nn.Module):
    """LayerNorm → two linears; with `post_norm` the norm's output is also the residual."""

    def __init__(self, post_norm: bool) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm, self.a, self.b = nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 16)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 2)
            self.norm.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out = self.a(h) * self.b(h).sigmoid()
        return out + h if self.post_norm else out + x


@pytest.mark.parametrize("post_norm", [False, True])
def test_folding_into_the_norm_is_exact_or_refused(post_norm):
    from mmcompress.calibration import CalibrationData
    from mmcompress.methods.smooth_fold import fold_into_norms

    torch.manual_seed(0)
    block, x = _Block(post_norm), _outlier_inputs(64, 16)
    ref, state = block(x).detach(), {k: v.clone() for k, v in block.state_dict().items()}
    calib = CalibrationData({"text": [lambda: block(x)]})
    folded = fold_into_norms(block, {"a": block.a, "b": block.b}, calib, alpha=0.5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-4)
    if post_norm:  # the residual reads the norm's output: folding would change the function
        assert folded == {}
        assert all(torch.equal(v, state[k]) for k, v in block.state_dict().items())
    else:
        assert set(folded) == {"a", "b"}
        assert not torch.equal(block.norm.weight, state["norm.weight"])


def _minmax(values: torch.Tensor, abs_max: float) -> float:
    return abs_max / 127


@pytest.mark.parametrize("alpha", [None, 0.5, 0.8])
def test_w8a8_error_predicts_the_real_layer(alpha):
    x, lin = _outlier_inputs(256, 64), nn.Linear(64, 32, bias=False)
    s = None if alpha is None else smoothing_scales(x.abs().amax(0), lin.weight, alpha)
    xs = x if s is None else x / s
    layer = W8A8Linear.from_linear(lin, _minmax(xs, float(xs.abs().max())), s)
    with torch.no_grad():
        real = float(((layer(x) - lin(x)) ** 2).mean())
    predicted = w8a8_error(x, lin.weight.detach(), s, _minmax)
    assert predicted == pytest.approx(real, rel=0.02)


def test_w8a8_error_is_the_reference_layers_error_with_a_clipping_observer():
    """The alpha search's predicted error must be the real layer's, to rounding: activation
    codes span [-128, 127] as in the layer; clamping at -127 went unseen with min-max ranges
    (nothing clips) but was off by 0.2% once a percentile range clips negative outliers."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=False)
    x = torch.distributions.StudentT(2.0).sample((512, 64))
    x[:, 0] = -x[:, 0].abs() * 5  # a channel of large negative outliers
    s = smoothing_scales(x.abs().amax(0), lin.weight, 0.5)

    def act(values, abs_max):
        return activation_scale(values, abs_max, "percentile", percentile=99.0)

    xs = x / s
    layer = W8A8Linear.from_linear(lin, act(xs, float(xs.abs().max())), s)
    with torch.no_grad():
        real = float(((layer.reference_forward(x) - lin(x)) ** 2).mean())
    assert w8a8_error(x, lin.weight.detach(), s, act) == pytest.approx(real, rel=1e-5)


def test_searched_alpha_beats_no_smoothing_and_the_grid_edges_on_outliers():
    x, w = _outlier_inputs(512, 64), torch.randn(48, 64)
    a = search_alpha(x, x.abs().amax(0), w, _minmax)
    assert a in ALPHA_GRID

    def err(alpha):
        return w8a8_error(x, w, None if alpha is None else
                          smoothing_scales(x.abs().amax(0), w, alpha), _minmax)

    assert err(a) < err(None) and err(a) <= min(err(ALPHA_GRID[0]), err(ALPHA_GRID[-1]))




@pytest.mark.parametrize("cfg", [{}, {"alpha": "auto", "activations": {"observer": "mse"}},
                                 {"alpha": None, "activations": {"observer": "mse"}},
                                 {"alpha": 0.8, "activations": {"observer": "percentile"}}])
def test_smoothquant_saves_and_reloads_identically(tiny_clip, tmp_path, cfg):
    texts, pixels = ["a cat", "the dog"], torch.rand(2, 3, 32, 32)
    ref = tiny_clip.encode_texts(texts)
    summary = apply_smoothquant(tiny_clip, **cfg)
    linears = [m for m in tiny_clip.model.modules() if isinstance(m, nn.Linear)]
    assert summary["w8a8"] > 0 and not linears
    if cfg.get("alpha", "auto") == "auto":
        assert ALPHA_GRID[0] <= summary["alpha_min"] <= summary["alpha_max"] <= ALPHA_GRID[-1]
    with torch.inference_mode():
        before_t, before_i = tiny_clip.encode_texts(texts), tiny_clip.embed_image_tensor(pixels)
    assert F.cosine_similarity(before_t, ref).min() > 0.99
    save_checkpoint(tiny_clip, tmp_path, "random:tiny", [])
    loaded = mmcompress.load(tmp_path)
    fc1 = loaded.model.text_model.encoder.layers[0].mlp.fc1
    patch = loaded.model.vision_model.embeddings.patch_embedding
    assert isinstance(fc1, W8A8Linear) and type(patch).__name__ == "W8A8PatchConv2d"
    if cfg.get("alpha", 0.5) is not None:  # pre-norm CLIP: q/k/v and fc1 smoothed by the norm
        assert summary["smoothed_by_norm"] >= 16 and fc1.input_scale is None
    with torch.inference_mode():
        assert torch.equal(loaded.encode_texts(texts), before_t)
        assert torch.equal(loaded.embed_image_tensor(pixels), before_i)


@pytest.mark.parametrize("cfg,message", [
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"alpha": "best"}, "alpha"),
    ({"activations": {"bits": 4}}, "activation bits must be 8"),
    ({"activations": {"observer": "entropy"}}, "observer"),
    ({"activations": {"bits": 8, "clip": True}}, "unknown key 'clip'"),
])
def test_bad_smoothquant_config_is_refused(cfg, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"stages": [{"quantize": {"method": "smoothquant", **cfg}}]})


def test_value_fold_removes_the_run_time_division(tiny_clip):
    from mmcompress.methods.value_fold import fold_value_scales, value_pairs

    summary = apply_smoothquant(tiny_clip, alpha=0.5)
    assert summary["smoothed_by_value"] > 0
    assert value_pairs(tiny_clip.model) == []  # no output projection divides at run time
    outs = [m for n, m in tiny_clip.model.named_modules() if n.endswith("self_attn.out_proj")]
    assert outs and all(m.input_scale is None for m in outs)
    texts, pixels = ["a cat", "the dog"], torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        before = tiny_clip.encode_texts(texts), tiny_clip.embed_image_tensor(pixels)
    # a second pass finds nothing left to fold and changes nothing
    assert fold_value_scales(tiny_clip.model, [lambda: tiny_clip.encode_texts(texts)]) == 0
    with torch.inference_mode():
        after = tiny_clip.encode_texts(texts), tiny_clip.embed_image_tensor(pixels)
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_value_fold_matches_the_unfolded_layer(tiny_clip):
    ref = copy.deepcopy(tiny_clip)
    apply_smoothquant(tiny_clip, alpha=0.5)
    apply_smoothquant(ref, alpha=0.5, fold=False)
    texts = ["a cat", "the dog", "two birds"]
    with torch.inference_mode():
        a, b = tiny_clip.encode_texts(texts), ref.encode_texts(texts)
    assert F.cosine_similarity(a, b).min() > 0.999


def test_value_fold_is_undone_when_the_check_disagrees(tiny_clip):
    from mmcompress.methods.value_fold import fold_value_scales, value_pairs

    apply_smoothquant(tiny_clip, alpha=0.5, fold=False)  # W8A8 with run-time divisions everywhere
    pairs = value_pairs(tiny_clip.model)
    assert pairs
    state = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    calls = iter(range(10))
    moving = [lambda: torch.full((2,), float(next(calls)))]  # never the same twice
    assert fold_value_scales(tiny_clip.model, moving) == 0
    assert all(torch.equal(v, state[k]) for k, v in tiny_clip.model.state_dict().items())
    assert value_pairs(tiny_clip.model) == pairs


def test_the_kernel_choice_is_remembered_per_machine(tmp_path, monkeypatch):
    """Kernels round differently: a later process must pick what the first one timed fastest,
    so a reloaded W8A8 model computes exactly what it did when saved."""
    from mmcompress.modules import int8

    monkeypatch.setenv("MMCOMPRESS_CACHE", str(tmp_path))
    calls = []

    def choose(name):
        return lambda: calls.append(name) or name

    assert int8.remembered("16x8 a/b", choose("a"), {"a", "b"}) == "a"
    assert int8.remembered("16x8 a/b", choose("b"), {"a", "b"}) == "a"  # not timed again
    assert int8.remembered("16x8 a/b", choose("b"), {"b"}) == "b"  # "a" is no longer valid
    assert calls == ["a", "b"]
    (tmp_path / "int8_kernels.json").write_text("{not json")
    assert int8.remembered("16x8 a/b", choose("a"), {"a", "b"}) == "a"  # a damaged file: redo
    entry = f"{int8._machine()} | 16x8 a/b"
    for damaged in (json.dumps({entry: ["a"]}), "[" * 100_000):  # a list crashed; so did depth
        (tmp_path / "int8_kernels.json").write_text(damaged)
        assert int8.remembered("16x8 a/b", choose("b"), {"a", "b"}) == "b"


def test_training_only_int8_activation_layers_is_nothing_to_train(tiny_clip):
    """A finetune whose targets held only W8A8 layers (their bias a parameter no gradient
    reaches) failed inside backward() with a RuntimeError, after evaluation and calibration."""
    from _helpers import toy_image_data

    recipe = {"stages": [{"quantize": {"method": "smoothquant"}},
                         {"finetune": {"method": "task", "max_steps": 1, "batch_size": 4,
                                       "targets": ["text_model.encoder.layers.0.mlp.fc1"]}}],
              "calibration": {"samples": 4, "batch_size": 2},
              "evaluate": {"max_samples": 4, "metrics": ["params"]}}
    with pytest.raises(UserError, match="nothing to train at step 1: no trainable parameter"):
        mmcompress.compress(tiny_clip, recipe, data=toy_image_data(), progress=False)
