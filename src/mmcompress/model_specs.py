"""Model specs → `Adapter`: ``demo``, ``random:NAME``, a Hugging Face folder, an output folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .adapters import HF_MODEL_TYPES, Adapter
from .errors import CheckpointError, UserError

MANIFEST = "mmcompress.json"

# Named specs (besides 'random:NAME' and paths): name → loader(progress) -> Adapter.
NAMED_SPECS: dict[str, Callable[[bool], Adapter]] = {}


def register_spec(name: str, loader: Callable[[bool], Adapter]) -> None:
    """Make `name` a model spec, e.g. 'demo' or 'minilm'."""
    NAMED_SPECS[name] = loader


def _demo(progress: bool) -> Adapter:
    from .adapters.demo import DemoAdapter

    return DemoAdapter.pretrained(progress=progress)


register_spec("demo", _demo)


def load_model(spec: str | Path | Adapter, progress: bool = True) -> Adapter:
    """Resolve a model spec. Bad specs raise `UserError` naming what was expected."""
    if isinstance(spec, Adapter):
        return spec
    text = str(spec)
    if text in NAMED_SPECS:
        adapter = NAMED_SPECS[text](progress)
    elif text.startswith("random:"):
        from .adapters.random_specs import random_model

        adapter = random_model(text.removeprefix("random:"))
    else:
        adapter = _load_path(Path(text).expanduser())
    adapter.check_finite()
    return adapter


def _load_path(path: Path) -> Adapter:
    if not path.exists():
        raise UserError(
            f"model {str(path)!r} not found: expected one of {', '.join(NAMED_SPECS)}, "
            "'random:NAME', a Hugging Face model folder or an mmcompress output folder"
        )
    if (path / MANIFEST).is_file():
        from .io.checkpoint import load_checkpoint

        return load_checkpoint(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"{path} is neither an mmcompress output folder nor a model folder "
            "(no mmcompress.json or config.json)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from None
    if model_type not in HF_MODEL_TYPES:
        raise UserError(
            f"{path}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(HF_MODEL_TYPES))}"
        )
    return HF_MODEL_TYPES[model_type].from_folder(path)
