"""Settings of evaluation and calibration runs, and the metric keys (no method imports)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from ..settings_base import Settings

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
    "recall_i2t@10",
    "recall_t2i@10",
    "stsb_spearman",
    "fidelity_cosine",
    "latency_ms_image",
    "latency_ms_text",
    "latency_ms_audio",
    "latency_ms_model",
    "peak_memory_mb",
)
#: what a model costs (no data read) and what it does on the data
COST = {"size_bytes", "params", "peak_memory_mb"} | {m for m in METRICS if m.startswith("latency")}
QUALITY = set(METRICS) - COST - {"fidelity_cosine"}


def put_in_metric_order(metrics: dict[str, Any]) -> None:
    """Reorder `metrics` in place (other holders of the dict see it) as `METRICS` lists them."""
    ordered = {k: metrics[k] for k in METRICS if k in metrics}
    metrics.clear()
    metrics.update(ordered)


#: examples of each input a calibrated method draws by default (GPTQ's, SparseGPT's and Wanda's
#: 128 calibration sequences)
DEFAULT_SAMPLES = 128
#: real tokens the default draws texts until: those 128 sequences at 256 tokens each. A short
#: text is not a sequence: 128 STS sentences hold about 1,950 tokens, barely more than the 1,536
#: inputs of MiniLM's widest layer, whose 1,536 × 1,536 Hessian they would have to estimate.
DEFAULT_TEXT_TOKENS = 128 * 256


class CalibrationConfig(Settings):
    """Where calibration examples come from and how many are used."""

    data: str | None = Field(None, description="data spec; default: the training split of a "
                             "named held-out --data (demo → demo-train, stsb-dev → stsb-train, "
                             "lit-cifar-eval → lit-cifar-train, trimodal → trimodal-train), "
                             "else the run's --data")
    samples: PositiveInt | Literal["auto"] = Field(
        "auto", description=f"examples of each input; 'auto': {DEFAULT_SAMPLES}, and texts "
        "until they hold `text_tokens` real tokens (all there are, if fewer)")
    text_tokens: PositiveInt = Field(DEFAULT_TEXT_TOKENS, description="with samples 'auto': "
                                     "the real (unpadded) tokens drawn texts add up to at least")
    batch_size: PositiveInt = Field(16, description="examples per calibration forward pass")
    seed: int = Field(0, ge=0, description="seed of the draw of calibration examples")

    @model_validator(mode="after")
    def _tokens_need_auto(self) -> CalibrationConfig:
        if "text_tokens" in self.model_fields_set and self.samples != "auto":
            raise ValueError(f"'text_tokens' sets how many texts samples 'auto' draws, but "
                             f"samples is {self.samples}: drop one of them")
        return self

    def amounts(self) -> tuple[int, int]:
        """(examples of each input, real tokens texts are drawn until; 0: no token target)."""
        if self.samples == "auto":
            return DEFAULT_SAMPLES, self.text_tokens
        return self.samples, 0


class EvaluateConfig(Settings):
    metrics: list[str] | None = Field(None, description="subset of METRICS; default all that apply")
    max_samples: PositiveInt | None = Field(None, description="evaluate on N evenly spaced "
                                            "examples (default: all)")
    latency_batch_size: PositiveInt = Field(8, description="examples per timed call")
    latency_repeats: PositiveInt = Field(
        10, description="timed calls per tower; the median is reported (a model given by its "
        "spec: timed after the stages, in alternation with the model reloaded)")

    @property
    def wanted(self) -> set[str]:
        """The metrics to measure: those given, else every one (each where it applies)."""
        return set(self.metrics or METRICS)

    def model_post_init(self, _: Any) -> None:
        unknown = [m for m in self.metrics or [] if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; "
                             f"known: {', '.join(METRICS)}")


