"""The calibration engine leaves padded token positions out of its statistics."""

import pytest
import torch
from torch import nn

from mmcompress.calibration.engine import CalibrationBatch, _run_group, mask_for
from mmcompress.errors import DataError


def test_padded_tokens_are_left_out_of_calibration_statistics():
    """Rows of padded positions never reach a collector; real rows all do."""
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    x[0, 3:] = 1e6  # padding with absurd values

    class Collect:
        rows = 0

        def add(self, rows):
            self.seen = rows
            self.rows += len(rows)

    coll = Collect()
    _run_group({"l": layer}, {"l": coll}, [CalibrationBatch(layer, lambda: x, mask)])
    assert coll.rows == 8
    torch.testing.assert_close(coll.seen, x[mask])


def test_masks_by_module_name_pick_the_longest_prefix_and_keep_whole_examples():
    """A per-module mask applies to the modules under its name (the longest prefix wins); an
    example mask [batch] keeps whole examples, whatever the input's layout; layers reading one
    tensor under different masks keep their own rows, and one that no real row reached is
    named."""
    masks = {"a": torch.tensor([True, False]), "a.b.k": torch.tensor([False, False])}
    assert mask_for(masks, "a.b.q") is masks["a"]
    assert mask_for(masks, "a.b.k") is masks["a.b.k"]
    assert mask_for(masks, "ab") is None and mask_for(masks["a"], "x") is masks["a"]
    block = nn.Module()
    block.q, block.k = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)

    class Collect:
        rows, batches = 0, 0

        def add(self, rows):
            self.seen, self.rows, self.batches = rows, self.rows + len(rows), self.batches + 1

    q, k = Collect(), Collect()
    forward = lambda x: (block.q(x), block.k(x))  # noqa: E731
    with pytest.raises(DataError, match="reached layer 'a.b.k' with no real input"):
        _run_group({"a.b.q": block.q, "a.b.k": block.k}, {"a.b.q": q, "a.b.k": k},
                   [CalibrationBatch(forward, lambda: x, masks)])
    assert q.rows == 5 and k.batches == 0
    torch.testing.assert_close(q.seen, x[0])


def test_a_reference_model_pairs_each_layer_input_with_its_own_at_the_same_rows():
    """With a reference, collectors get (input here, input in the reference) for the same
    token rows, padding left out of both."""
    import copy

    from mmcompress.adapters.base import Adapter
    from mmcompress.calibration import HessianCollector

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight.mul_(0.5)  # the "compressed" first layer

    class Runner:  # the one thing the engine needs from an adapter: running another model
        running = Adapter.running

        def __init__(self, m):
            self.model = m

    runner = Runner(model)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    coll, loads = HessianCollector(), []

    def load() -> torch.Tensor:
        loads.append(1)
        return x

    batch = CalibrationBatch(lambda inputs: runner.model(inputs), load, mask)
    _run_group({"1": model[1]}, {"1": coll}, [batch], reference, runner)
    assert runner.model is model and len(loads) == 1  # inputs loaded once for both models
    with torch.no_grad():
        mine, theirs = model[0](x)[mask], reference[0](x)[mask]
    torch.testing.assert_close(coll.hessian, 2 * mine.T @ mine / 8)
    torch.testing.assert_close(coll.cross, 2 * theirs.T @ mine / 8)
    torch.testing.assert_close(coll.reference_mean, theirs.mean(0))


def test_batches_that_bypass_the_adapter_model_cannot_pair_with_a_reference():
    import copy

    import pytest

    from mmcompress.adapters.base import Adapter
    from mmcompress.calibration import HessianCollector

    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))

    class Runner:
        running = Adapter.running

        def __init__(self, m):
            self.model = m

    x = torch.randn(3, 4)
    batch = CalibrationBatch(model, lambda: x)  # bound to the model, not to runner.model
    with pytest.raises(RuntimeError, match="did not run the reference model"):
        _run_group({"1": model[1]}, {"1": HessianCollector()}, [batch], copy.deepcopy(model),
                   Runner(model))


def test_hessian_collector_gives_the_feature_norms_wanda_uses():
    from mmcompress.calibration import HessianCollector
    from mmcompress.calibration.collectors import FeatureNormCollector

    torch.manual_seed(0)
    hessian, norms = HessianCollector(), FeatureNormCollector()
    for _ in range(3):
        x = torch.randn(7, 5) * torch.arange(1, 6)
        hessian.add(x)
        norms.add(x)
    torch.testing.assert_close(hessian.norm, norms.norm)


def test_inverse_hessian_factor_inverts_the_damped_hessian_and_names_its_caller():
    import pytest

    from mmcompress.calibration.hessian import damped, inverse_hessian_factor, without_dead_inputs
    from mmcompress.errors import UserError

    x = torch.randn(64, 8)
    x[:, 2] = 0  # an input calibration never saw
    w, h = without_dead_inputs(torch.randn(4, 8), 2 * x.T @ x / 64)
    assert h[2, 2] == 1 and (w[:, 2] == 0).all() and (h[2, :2] == 0).all()
    u = inverse_hessian_factor(h, 0.01, "SparseGPT")
    assert torch.allclose(u.T @ u @ damped(h, 0.01, torch.float32), torch.eye(8), atol=1e-4)
    assert torch.equal(torch.triu(u), u)
    with pytest.raises(UserError, match="^SparseGPT: the layer's Hessian is not positive"):
        inverse_hessian_factor(-torch.eye(8), 0.01, "SparseGPT")


def test_linear_layers_reading_one_tensor_share_one_collector():
    """q, k and v read the same tensor: one collector gathers its statistics once and all
    three get it; a layer reading another tensor keeps its own."""
    from mmcompress.calibration.collectors import HessianCollector

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(6, 6) for _ in range(4))

        def forward(self, x):
            return self.o(self.q(x) * self.k(x) + self.v(x))

    block = Attention()
    group = dict(block.named_children())
    inputs = [torch.randn(3, 4, 6) for _ in range(3)]
    batches = [CalibrationBatch(block, lambda x=x: x) for x in inputs]
    collectors = {n: HessianCollector() for n in group}
    _run_group(group, collectors, batches)
    assert collectors["q"] is collectors["k"] is collectors["v"]
    assert collectors["o"] is not collectors["q"]
    alone = HessianCollector()  # what q's own collector gathers with nothing shared
    _run_group({"q": block.q}, {"q": alone}, batches)
    assert alone.rows == collectors["q"].rows == 36
    torch.testing.assert_close(alone.hessian, collectors["v"].hessian, rtol=0, atol=0)


def test_the_input_sample_draws_every_batch_alike():
    """Rows kept per batch, when each batch alone could fill the sample: a reservoir keeps
    each batch's share (32 of 256 here); the old merge-and-cut kept mostly the last batches."""
    import torch

    from mmcompress.calibration import InputStatsCollector

    coll = InputStatsCollector(max_rows=256)
    for b in range(8):
        coll.add(torch.full((256, 3), float(b)))
    assert coll.rows == 8 * 256 and coll.sample.shape == (256, 3)
    kept = torch.bincount(coll.sample[:, 0].long(), minlength=8)
    assert kept.min() >= 16 and kept.max() <= 48, kept.tolist()


def test_the_input_sample_keeps_the_first_rows_as_often_as_the_last():
    """Over many seeds each row of an 8-row stream is in a 2-row sample a quarter of the time,
    the two that filled it too: row t must replace a slot drawn from [0, t], not [0, t)."""
    from mmcompress.calibration import InputStatsCollector

    seeds, counts = 400, torch.zeros(8)
    for seed in range(seeds):
        coll = InputStatsCollector(max_rows=2, seed=seed)
        for b in range(2):  # rows 0-1 fill the sample, rows 2-7 may replace them
            coll.add(torch.arange(4.0 * b, 4.0 * b + 4)[:, None])
        counts[coll.sample[:, 0].long()] += 1
    share = counts / seeds
    error = (0.25 * 0.75 / seeds) ** 0.5  # binomial standard error of one row's share
    assert (share - 0.25).abs().max() < 4 * error, share.tolist()
    assert abs(float(share[:2].mean()) - 0.25) < 3 * error / 2**0.5, share.tolist()


def test_the_input_sample_keeps_every_row_until_it_is_full_and_none_when_unused():
    import torch

    from mmcompress.calibration import HessianCollector, InputStatsCollector

    coll = InputStatsCollector(max_rows=10)
    coll.add(torch.arange(6.0).view(3, 2))
    coll.add(torch.arange(6.0, 12.0).view(3, 2))
    assert torch.equal(coll.sample, torch.arange(12.0).view(6, 2))
    hessian = HessianCollector()
    hessian.add(torch.ones(4, 2))
    assert hessian.sample is None and hessian.rows == 4


def test_missing_modalities_of_multimodal_data_are_not_drawn_for_calibration(tiny_clip):
    """Tri-modal data (an example may lack its image or text) as a dual encoder's calibration
    data failed as an internal error: the missing image was opened as a file."""
    import numpy as np

    from mmcompress.data import Dataset

    rng = np.random.default_rng(0)
    images = [rng.random((16, 16, 1), dtype=np.float32) if i % 3 else None for i in range(9)]
    texts = ["one", None, "two", "", "three", None, "four", "five", "six"]
    data = Dataset("tri", "multimodal", images=images, texts=texts, labels=list(range(9)),
                   class_names=[str(i) for i in range(10)])
    calib = tiny_clip.calibration_data(data, samples=16, batch_size=4, seed=0)
    assert calib.drawn["image"]["examples"] == 6 and calib.drawn["text"]["examples"] == 6
