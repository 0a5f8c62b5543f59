"""The calibration engine leaves padded token positions out of its statistics."""

import torch
from torch import nn

from mmcompress.calibration.engine import CalibrationBatch, _run_group


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
    _run_group(layer, {"l": layer}, {"l": coll}, [CalibrationBatch(lambda: layer(x), mask)])
    assert coll.rows == 8
    torch.testing.assert_close(coll.seen, x[mask])
