import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.modules import QuantEmbedding, QuantLinear, build_module
from mmcompress.modules.quantized import QuantConv2d
from mmcompress.modules.replace import conv_padding, table_from_rows
from mmcompress.modules.unpack import compact_layers
from mmcompress.quantization.grid import QuantGrid


@torch.no_grad()
def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - approx).pow(2).mean()))


@pytest.mark.parametrize("grid,floor", [(QuantGrid(8), 35.0), (QuantGrid(4, 16), 15.0),
                                        (QuantGrid(4, None, False), 12.0)])
def test_quant_linear_sqnr_floor(grid, floor):
    torch.manual_seed(0)
    dense = nn.Linear(64, 48)
    x = torch.randn(10, 64)
    q = QuantLinear.from_linear(dense, grid)
    assert sqnr_db(dense(x), q(x)) > floor


def test_quant_linear_stores_packed_int4():
    q = QuantLinear.from_linear(nn.Linear(64, 8), QuantGrid(4, 32))
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (8, 32)
    assert all(not t.is_floating_point() or t.numel() <= 64 for t in q.state_dict().values())


def test_int8_symmetric_is_signed_int8():
    q = QuantLinear.from_linear(nn.Linear(16, 4), QuantGrid(8))
    assert q.qweight.dtype == torch.int8


def test_to_dense_matches_forward():
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(32, 8), QuantGrid(4, 8, symmetric=False))
    x = torch.randn(3, 32)
    torch.testing.assert_close(q.to_dense()(x), q(x))


@pytest.mark.parametrize("kind", ["linear", "conv", "sparse-linear"])
def test_to_dense_matches_forward_with_an_input_scale(kind):
    """A layer with an AWQ input scale s stores Q(W·diag(s)) and divides its input by s, so
    its dense weight is Q(W·diag(s))·diag(1/s); multiplying by s instead made to_dense()
    differ from forward() by ~1 on outputs of size ~1."""
    from mmcompress.modules.sparse import sparse_module, sparse_quantized

    torch.manual_seed(0)
    grid, s = QuantGrid(4, 16), torch.rand(16) + 0.5
    if kind == "conv":
        layer, x = nn.Conv2d(16, 8, 3, padding=1), torch.randn(2, 16, 5, 5)
        q = QuantConv2d.from_conv(layer, grid, input_scale=s.clone())
    else:
        layer, x = nn.Linear(16, 8), torch.randn(4, 16)
        if kind == "linear":
            q = QuantLinear.from_linear(layer, grid, input_scale=s.clone())
        else:
            layer = sparse_module(layer, torch.rand(8, 16) > 0.5)
            q = sparse_quantized(layer, grid, input_scale=s.clone())
    with torch.no_grad():
        out = q(x)
        assert sqnr_db(layer(x), out) > 10  # the quantized layer computes the layer
        torch.testing.assert_close(q.to_dense()(x), out, rtol=1e-5, atol=1e-5)


def test_rebuild_from_spec_then_load_state_is_identical():
    q = QuantLinear.from_linear(nn.Linear(32, 8), QuantGrid(3, 16))
    empty = build_module(q.spec())
    empty.load_state_dict(q.state_dict(), strict=True)
    x = torch.randn(2, 32)
    assert torch.equal(empty(x), q(x))


def test_quant_embedding_gathers_rows():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16, padding_idx=0)
    q = QuantEmbedding.from_embedding(emb, QuantGrid(4, 8))
    ids = torch.tensor([[3, 7, 49], [0, 1, 2]])
    expected = q.to_dense()(ids)
    assert torch.equal(q(ids), expected)
    assert sqnr_db(emb(ids), q(ids)) > 15


def test_compact_tables_refuse_ids_out_of_range_as_nn_embedding_does():
    """A negative id used to read a row from the end of a quantized or sparse table."""
    from mmcompress.modules.sparse import sparse_module, sparse_quantized

    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    sparse = sparse_module(emb, torch.rand(50, 16) > 0.5)
    tables = [QuantEmbedding.from_embedding(emb, QuantGrid(4, 8)), sparse,
              sparse_quantized(sparse, QuantGrid(8))]
    for table in tables:
        assert torch.equal(table(torch.tensor([0, 49])), table.to_dense()(torch.tensor([0, 49])))
        for bad in (-1, 50):
            with pytest.raises(IndexError, match="out of range"):
                table(torch.tensor([[1, bad]]))
    with pytest.raises(ValueError, match="max_norm"):
        QuantEmbedding.from_embedding(nn.Embedding(5, 4, max_norm=1.0), QuantGrid(8))


def test_no_compact_layer_takes_what_it_would_compute_differently():
    """Half precision, quantized and sparse layers pad with zeros and look rows up as they are:
    a reflect-padded convolution or a max_norm table is refused by each alike."""
    from mmcompress.modules.half import HalfWeight
    from mmcompress.modules.sparse import sparse_module

    odd = [nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Embedding(5, 4, max_norm=1.)]
    makers = [HalfWeight.from_module, lambda m: sparse_module(m, torch.ones_like(m.weight) > 0),
              lambda m: (QuantConv2d.from_conv if isinstance(m, nn.Conv2d)
                         else QuantEmbedding.from_embedding)(m, QuantGrid(8))]
    for module in odd:
        for make in makers:
            with pytest.raises(ValueError, match="padding_mode 'reflect'|max_norm"):
                make(module)


def test_quantize_stage_names_a_layer_it_cannot_reproduce(tiny_clip):
    from mmcompress.errors import RecipeError
    from mmcompress.methods import METHODS, StageContext
    from mmcompress.recipe import load_recipe

    tiny_clip.model.vision_model.embeddings.patch_embedding.padding_mode = "reflect"
    for bits in (16, 8):
        stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": bits}}]}).stages[0]
        with pytest.raises(RecipeError, match="patch_embedding: padding_mode 'reflect'.*ignore"):
            METHODS[(stage.kind, stage.config.method)].apply(tiny_clip, stage.config,
                                                              StageContext(progress=False))


def test_table_from_rows_fills_every_chunk():
    """A dense table decoded chunk by chunk (as unpacking does) holds every row, chunks
    ending mid-table included, and stays a trainable nn.Embedding."""
    weight = torch.randn(10, 3)
    table = table_from_rows(10, 3, 2, lambda ids: weight[ids], chunk=4)
    assert torch.equal(table.weight, weight)
    assert table.padding_idx == 2 and table.weight.requires_grad and not table.weight.is_meta


def test_compact_layers_count_linear_layers_but_not_tables():
    """What the CLI's unpack note counts: layers rebuilding a dense weight per call; tables
    decode only the rows a lookup reads."""
    model = nn.Sequential(QuantEmbedding.from_embedding(nn.Embedding(10, 16), QuantGrid(8)),
                          QuantLinear.from_linear(nn.Linear(16, 4), QuantGrid(8)), nn.Linear(4, 2))
    assert compact_layers(model) == 1


def test_unknown_module_type_is_refused():
    with pytest.raises(KeyError, match="unknown module type"):
        build_module({"type": "Nope"})


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("layer", [nn.Linear(16, 8), nn.Conv2d(3, 4, 3, padding=1),
                                   nn.Embedding(10, 6)])
def test_half_weight_storage(layer, dtype):
    from mmcompress.modules import HalfWeight

    half = HalfWeight.from_module(layer, dtype)
    x = torch.randint(0, 10, (2, 3)) if isinstance(layer, nn.Embedding) else (
        torch.randn(2, 16) if isinstance(layer, nn.Linear) else torch.randn(1, 3, 5, 5))
    torch.testing.assert_close(half(x), layer(x), atol=0.02, rtol=0.02)
    assert half.half_weight.element_size() == 2
    rebuilt = build_module(half.spec())
    rebuilt.load_state_dict(half.state_dict(), strict=True)
    assert torch.equal(rebuilt(x), half(x))


def test_fp16_refuses_weights_beyond_its_range_and_bf16_keeps_them():
    """A weight past 65504 would become inf: the saved folder could not be loaded."""
    from mmcompress.errors import RecipeError
    from mmcompress.modules import HalfWeight

    layer = nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight[0, 0] = 1e5
    with pytest.raises(RecipeError, match="does not fit in fp16.*use dtype: bf16"):
        HalfWeight.from_module(layer, "fp16")
    assert torch.isfinite(HalfWeight.from_module(layer, "bf16").half_weight).all()


@pytest.mark.parametrize("bits,group_size,symmetric", [(8, None, True), (4, 4, False)])
def test_quantizing_in_row_chunks_matches_one_pass(monkeypatch, bits, group_size, symmetric):
    """Large tables are quantized a few rows at a time; the stored codes and scales are the
    same as quantizing every row at once."""
    from mmcompress.modules import quantized as qmod

    emb = nn.Embedding(11, 8)
    grid = QuantGrid(bits, group_size, symmetric)
    whole = QuantEmbedding.from_embedding(emb, grid)
    monkeypatch.setattr(qmod, "ROWS_PER_CHUNK", 3)
    chunked = QuantEmbedding.from_embedding(emb, grid)
    for name, t in whole.state_dict().items():
        assert torch.equal(t, chunked.state_dict()[name]), name


def test_unpack_turns_weight_only_layers_dense_and_keeps_factored_ones():
    from mmcompress.modules.lowrank import LowRankLinear
    from mmcompress.modules.sparse import sparse_module
    from mmcompress.modules.unpack import unpack_weights

    torch.manual_seed(0)
    model = nn.Sequential(
        QuantLinear.from_linear(nn.Linear(16, 12), QuantGrid(4, 8)),
        LowRankLinear.from_factors(torch.randn(8, 2), torch.randn(2, 12), None),
        sparse_module(nn.Linear(8, 8), torch.rand(8, 8) > 0.5),
    )
    x = torch.randn(5, 16)
    before = model(x)
    assert unpack_weights(model) == 2
    assert [type(m) for m in model] == [nn.Linear, LowRankLinear, nn.Linear]
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("padding", ["valid", "same", (1, 2)])
def test_string_padding_is_resolved_and_quantized_convs_match(padding):
    """'valid' (SigLIP's patch embedding) and 'same' become numbers, so calibration can unfold
    the input and a quantized conv computes what the original does with its weights."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, (3, 5), padding=padding)
    x = torch.randn(2, 3, 9, 9)
    assert F.conv2d(x, conv.weight, conv.bias, padding=conv_padding(conv)).equal(conv(x))
    grid = QuantGrid(bits=8, group_size=None, symmetric=True)
    quant = QuantConv2d.from_conv(conv, grid)
    expected = F.conv2d(x, quant.to_dense().weight, conv.bias, padding=conv_padding(conv))
    torch.testing.assert_close(quant(x), expected)


def test_same_padding_that_cannot_be_split_evenly_is_refused():
    with pytest.raises(ValueError, match="one side more"):
        conv_padding(nn.Conv2d(3, 8, 2, padding="same"))


def test_a_quantized_table_traces_without_a_graph_break():
    """The id-range check read the ids back (`int(ids.min())`), a graph break at every call
    under torch.compile (33 warnings for `evaluate --compile` of the demo)."""
    table = QuantEmbedding.from_embedding(nn.Embedding(50, 16), QuantGrid(8, None, True))
    ids = torch.randint(0, 50, (2, 7))
    assert torch._dynamo.explain(table)(ids).graph_break_count == 0
    with pytest.raises(IndexError, match="ids must be in"):
        table(torch.tensor([[-1]]))  # eager calls still check
