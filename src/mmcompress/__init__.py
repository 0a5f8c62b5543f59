"""mmcompress: compress multimodal models — pruning, quantization, distillation, low-rank."""

__version__ = "0.1.0"

from .api import compress, evaluate, load  # noqa: E402

__all__ = ["__version__", "compress", "evaluate", "load"]
