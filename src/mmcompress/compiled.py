"""Compiled execution: a model's towers through ``torch.compile`` (inductor, freezing).

Eager int8 layers each quantize their input, call the integer GEMM and rescale its output as
separate ops. Compiled, inductor fuses the quantization into the op before (LayerNorm, GELU,
the residual add) and the rescaling into the op after, and lowers `W8A8Linear`'s traced
pattern to oneDNN's int8 GEMM. That lowering needs inductor's freezing (weights become
constants), which `compile_towers` switches on for the process
(``torch._inductor.config.freezing``; passing it per call through ``options`` does not reach
the lowering in torch 2.13) and raises dynamo's recompile limit to one compilation per
module, both for the process: edit the model, then compile again. Compiling takes seconds per
tower and input shape, on the first call; calls with shapes seen before reuse the compiled code.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .adapters import Adapter
from .errors import UserError
from .modules.int8 import W8A8Linear


def recompile_limit_key() -> str:
    """The name of dynamo's per-function compilation limit (before torch 2.7:
    `cache_size_limit`); read here, not at import, which would load dynamo."""
    config = torch._dynamo.config
    return "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"


def compiler_missing() -> str | None:
    """Why inductor's CPU backend cannot build code here (it needs a C++ compiler), or None."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if any(c and shutil.which(c) for c in candidates):
        return None
    return "torch.compile on CPU needs a C++ compiler (g++ or clang++; none found on PATH)"


def compile_towers(adapter: Adapter, towers: Sequence[str] | None = None) -> Adapter:
    """Compile the modules forming each tower of `adapter` in place (module names and saved
    state are unchanged); returns `adapter`. `towers`: names from ``adapter.towers()``
    (default: all)."""
    why = compiler_missing()
    if why:
        raise UserError(why)
    spec = adapter.towers()
    unknown = sorted(set(towers or ()) - set(spec))
    if unknown:
        raise UserError(f"unknown tower(s) {unknown}; {adapter.name} has {sorted(spec)}")
    for module in adapter.model.modules():
        if isinstance(module, W8A8Linear):
            module.prepare_compile()
    adapter.model.eval()
    torch._inductor.config.freezing = True
    # inductor's int8 lowering copies a tensor the way it warns against; not the user's concern
    warnings.filterwarnings("ignore", message="To copy construct from a tensor",
                            module=r"torch\._inductor")
    modules = [adapter.model.get_submodule(name) for tower in towers or spec
               for name in spec[tower]]
    # modules of one class (a ResNet's blocks) share their forward's code, which dynamo
    # compiles once per instance (frozen weights differ): past its recompile limit (8) the
    # rest ran eager, after a screen of warnings; one compilation per module always fits
    key = recompile_limit_key()
    limit = getattr(torch._dynamo.config, key)
    setattr(torch._dynamo.config, key, max(limit, sum(1 for _ in adapter.model.modules())))
    for module in modules:
        module.compile()
    return adapter


def warm_up(runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Run each closure once without gradients (compiling what it reaches); seconds each."""
    seconds = {}
    with torch.inference_mode():
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[key] = time.perf_counter() - start
    return seconds
