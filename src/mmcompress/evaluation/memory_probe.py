"""Run in a fresh process: peak RSS added by loading a model and running its towers once (to
a process that has imported torch, mmcompress and transformers' model code)."""

from __future__ import annotations

import importlib
import json
import resource
import sys
from pathlib import Path


def max_rss_mb() -> float:
    """High-water RSS of this process. `VmHWM` is per address space, unlike `ru_maxrss`,
    which Linux carries over from the parent across fork and exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB elsewhere


def import_model_code() -> None:
    """Import transformers' model code (BERT, CLIP, SigLIP; mmcompress imports it where a
    model is built), so that memory measured from after this counts the model, not the library,
    as torch's import is not counted either."""
    from mmcompress.structured.specs import HF_LAYERS

    for module in HF_LAYERS:
        importlib.import_module(module)


def main() -> None:
    spec, batch_size, unpack = sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["unpack"]
    import torch

    from mmcompress.model_specs import load_model
    from mmcompress.modules.unpack import unpack_weights

    import_model_code()
    torch.set_grad_enabled(False)
    baseline = max_rss_mb()
    adapter = load_model(spec, progress=False)
    if unpack:
        unpack_weights(adapter.model)
    for run in adapter.latency_inputs(batch_size).values():
        run()
    print(json.dumps({"peak_memory_mb": round(max_rss_mb() - baseline, 1)}))


if __name__ == "__main__":
    main()
