"""Settings of evaluation and calibration runs, and the metric keys (no method imports)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

METRICS = (
    "size_bytes",
    "params",
    "top1",
    "top1_all",
    "top1_no_image",
    "top1_no_text",
    "top1_no_audio",
    "top1_image_only",
    "top1_text_only",
    "top1_audio_only",
    "zeroshot_top1",
    "recall_i2t@1",
    "recall_t2i@1",
    "recall_i2t@5",
    "recall_t2i@5",
    "stsb_spearman",
    "fidelity_cosine",
    "latency_ms_image",
    "latency_ms_text",
    "latency_ms_audio",
    "latency_ms_model",
    "peak_memory_mb",
)


class CalibrationConfig(BaseModel):
    """Where calibration examples come from and how many are used."""

    model_config = ConfigDict(extra="forbid")
    data: str | None = Field(None, description="data spec; default: the run's --data")
    samples: PositiveInt = 128
    batch_size: PositiveInt = 16
    seed: int = 0


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metrics: list[str] | None = Field(None, description="subset of METRICS; default all that apply")
    max_samples: PositiveInt | None = Field(None, description="evaluate on the first N examples")
    latency_batch_size: PositiveInt = 8
    latency_repeats: PositiveInt = 10

    def model_post_init(self, _: Any) -> None:
        unknown = [m for m in self.metrics or [] if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")


