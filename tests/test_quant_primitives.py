import pytest
import torch

from mmcompress.quantization.grid import (
    QuantGrid,
    compute_scales,
    dequantize,
    expand_groups,
    quantize,
)
from mmcompress.quantization.packing import pack_codes, pack_rows, unpack_codes, unpack_rows


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_roundtrip_every_width(bits):
    codes = torch.randint(0, 2**bits, (37,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == (37 * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, 37), codes)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_pack_rows_allows_gathering_rows(bits):
    codes = torch.randint(0, 2**bits, (6, 13), dtype=torch.uint8)
    packed = pack_rows(codes, bits)
    rows = torch.tensor([4, 1])
    assert torch.equal(unpack_rows(packed[rows], bits, 13), codes[rows])


def test_int4_packs_two_per_byte():
    codes = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    assert pack_rows(codes, 4).shape == (8, 32)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits,group", [(8, None), (4, 16), (3, 8)])
def test_rounding_error_within_half_step(bits, group, symmetric):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    grid = QuantGrid(bits, group, symmetric)
    scale, zero = compute_scales(w, grid)
    codes = quantize(w, grid, scale, zero)
    assert codes.max() <= 2**bits - 1
    err = (dequantize(codes, grid, scale, zero) - w).abs()
    step = expand_groups(scale, grid, 32)
    assert (err <= step / 2 + 1e-6).all()


def test_ragged_last_group_and_wide_groups():
    assert QuantGrid(4, 12).groups(32) == 3
    assert QuantGrid(4, 128).groups(9) == 1
    w = torch.randn(3, 20)
    grid = QuantGrid(4, 8)
    scale, zero = compute_scales(w, grid)
    assert scale.shape == (3, 3)
    err = (dequantize(quantize(w, grid, scale, zero), grid, scale, zero) - w).abs()
    assert (err[:, 16:] <= scale[:, 2:] / 2 + 1e-6).all()


def test_zero_rows_do_not_divide_by_zero():
    w = torch.zeros(4, 8)
    grid = QuantGrid(4, None, False)
    scale, zero = compute_scales(w, grid)
    assert torch.equal(dequantize(quantize(w, grid, scale, zero), grid, scale, zero), w)


@pytest.mark.parametrize("grid,cols", [(QuantGrid(8), 40), (QuantGrid(4, 16), 48),
                                       (QuantGrid(4, 16, False), 40), (QuantGrid(3, 8), 20)])
def test_quantize_and_dequantize_are_the_elementwise_formulas(grid, cols):
    """Scales broadcast over full groups (or repeated where the last group is short) give the
    per-weight formulas bit for bit, and the inputs are left as they were."""
    torch.manual_seed(0)
    w = torch.randn(6, cols)
    original = w.clone()
    scale, zero = compute_scales(w, grid)
    s = expand_groups(scale, grid, cols)
    z = expand_groups(torch.full_like(scale, grid.midpoint) if zero is None else zero, grid, cols)
    codes = quantize(w, grid, scale, zero)
    assert torch.equal(codes, (torch.round(w / s) + z).clamp(0, grid.qmax).to(torch.uint8))
    stored = codes.clone()
    assert torch.equal(dequantize(codes, grid, scale, zero), (codes.float() - z) * s)
    assert torch.equal(w, original) and torch.equal(codes, stored)
    transposed = quantize(w.t().contiguous().t(), grid, scale, zero)  # non-contiguous input
    assert torch.equal(transposed, codes)
