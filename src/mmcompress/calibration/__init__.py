"""The one calibration engine every calibrated method uses."""

from .collectors import HessianCollector, InputStatsCollector, layer_input_rows
from .engine import CalibrationData, calibrate_layers, layer_groups

__all__ = ["CalibrationData", "HessianCollector", "InputStatsCollector", "calibrate_layers",
           "layer_groups", "layer_input_rows"]
