"""The built-in fusion classifiers on the real tri-modal data (FSDD speakers held out).

Trains each fusion model once per session (one to three minutes each on one core).
"""

from __future__ import annotations

import pytest
from _helpers import SHARED_DATA
from typer.testing import CliRunner

import mmcompress
from mmcompress.cli import app
from mmcompress.models.fusion import FUSIONS

pytestmark = pytest.mark.integration

ACCURACY = ["top1", "top1_all", "top1_no_image", "top1_no_text", "top1_no_audio",
            "top1_image_only", "top1_text_only", "top1_audio_only"]
INT8 = {"stages": [{"quantize": {"method": "rtn", "bits": 8}}],
        "evaluate": {"metrics": [*ACCURACY, "size_bytes", "fidelity_cosine"]}}


@pytest.fixture(scope="module")
def int8_results() -> dict:
    if not (SHARED_DATA / "fsdd" / "recordings").is_dir():
        pytest.skip(f"FSDD recordings not found under {SHARED_DATA}")
    return {k: mmcompress.compress(f"fusion-{k}", INT8, progress=False).report for k in FUSIONS}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_beats_every_single_modality(int8_results, fusion):
    m = int8_results[fusion]["before"]
    assert m["top1_all"] >= 0.95
    assert m["top1_all"] > max(m["top1_image_only"], m["top1_text_only"], m["top1_audio_only"])


def test_late_fusion_survives_a_missing_modality(int8_results):
    """With any one modality missing, late fusion stays above 0.8 and does as well as the
    better of the two modalities left alone (within 0.01, a few examples: training on another
    CPU may round differently). The modality weights, fitted by cross-validation over the
    training speakers, keep the weak held-out-speaker audio from dragging text down."""
    m = int8_results["late"]["before"]
    for gone in ("image", "text", "audio"):
        left = [f"top1_{o}_only" for o in ("image", "text", "audio") if o != gone]
        assert m[f"top1_no_{gone}"] >= max(0.8, max(m[k] for k in left) - 0.01)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_int8_on_every_tower_loses_at_most_half_a_point(int8_results, fusion):
    before, after = int8_results[fusion]["before"], int8_results[fusion]["after"]
    assert before["top1_all"] - after["top1_all"] <= 0.005
    assert before["top1"] - after["top1"] <= 0.005
    assert after["size_bytes"] <= 0.32 * before["size_bytes"]


def test_cli_demo_runs_the_fusion_model(int8_results, tmp_path):
    result = CliRunner().invoke(app, ["demo", "--model", "fusion", "--out",
                                      str(tmp_path / "demo"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "top-1 all modalities" in result.output and "FSDD speech" in result.output
