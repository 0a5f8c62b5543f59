"""Model specs → `Adapter`: named (``demo``, ``resnet20``, ``lit-cifar``, …), ``random:NAME``,
a Hugging Face folder, an output folder, a CIFAR ResNet ``.safetensors`` file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .adapters import HF_MODEL_TYPES, Adapter
from .errors import CheckpointError, UserError, require_spec

MANIFEST = "mmcompress.json"

# Named specs (besides 'random:NAME' and paths): name → loader(progress) -> Adapter.
NAMED_SPECS: dict[str, Callable[[bool], Adapter]] = {}


def register_spec(name: str, loader: Callable[[bool], Adapter]) -> None:
    """Make `name` a model spec, e.g. 'demo' or 'minilm'."""
    NAMED_SPECS[name] = loader


def _demo(progress: bool) -> Adapter:
    from .adapters.demo import DemoAdapter

    return DemoAdapter.pretrained(progress=progress)


def _minilm(progress: bool) -> Adapter:
    from .adapters.sentence import SentenceAdapter

    return SentenceAdapter.minilm()


def _lit_cifar(progress: bool) -> Adapter:
    from .adapters.lit_cifar import LitCifarAdapter

    return LitCifarAdapter.pretrained(progress=progress)


def _fusion(kind: str) -> Callable[[bool], Adapter]:
    def load(progress: bool) -> Adapter:
        from .adapters.fusion import FusionAdapter

        return FusionAdapter.pretrained(kind, progress=progress)

    return load


def _resnet(depth: int) -> Callable[[bool], Adapter]:
    def load(progress: bool) -> Adapter:
        from .adapters.classifier import ImageClassifierAdapter
        from .shared_data import shared_data_dir

        folder = shared_data_dir("resnet_cifar10")
        return ImageClassifierAdapter.from_file(folder / f"resnet{depth}.safetensors")

    return load


register_spec("demo", _demo)
register_spec("lit-cifar", _lit_cifar)
for _depth in (20, 32, 44, 56):
    register_spec(f"resnet{_depth}", _resnet(_depth))
register_spec("minilm", _minilm)
register_spec("fusion", _fusion("late"))  # late fusion: keeps working with a modality missing
for _kind in ("early", "late", "hybrid"):
    register_spec(f"fusion-{_kind}", _fusion(_kind))


def load_model(spec: str | Path | Adapter, progress: bool = True) -> Adapter:
    """Resolve a model spec. Bad specs raise `UserError` naming what was expected."""
    if isinstance(spec, Adapter):
        return spec
    require_spec(spec, "the model", Adapter)
    text = str(spec)
    if text in NAMED_SPECS:
        adapter = NAMED_SPECS[text](progress)
    elif text.startswith("random:"):
        from .adapters.random_specs import random_model

        adapter = random_model(text.removeprefix("random:"))
    else:
        path = Path(text).expanduser()
        adapter = _load_path(path)
        text = str(path.resolve())
    adapter.check_finite()
    adapter.source = text
    return adapter


def _load_path(path: Path) -> Adapter:
    if not path.exists():
        raise UserError(
            f"model {str(path)!r} not found: expected one of {', '.join(NAMED_SPECS)}, "
            "'random:NAME', a Hugging Face model folder, an mmcompress output folder "
            "or a CIFAR ResNet .safetensors file"
        )
    if path.is_file() and path.suffix == ".safetensors":
        from .adapters.classifier import ImageClassifierAdapter

        return ImageClassifierAdapter.from_file(path)  # refuses keys of other models
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
    safetensors = [*path.glob("model.safetensors"), *path.glob("model-*-of-*.safetensors")]
    if not safetensors and any(path.glob("pytorch_model*.bin")):
        raise CheckpointError(
            f"{path} holds its weights only in pickled pytorch_model*.bin files, which "
            "mmcompress never loads (a pickle can run code): save the model with safetensors "
            "(save_pretrained(..., safe_serialization=True)) and point to that folder")
    try:
        return HF_MODEL_TYPES[model_type].from_folder(path)
    except UserError:
        raise
    except Exception as exc:  # a file of the folder that does not read as it should
        why = " ".join(str(exc).split())  # the whole reason, on one line
        why = why if len(why) <= 300 else why[:297] + "..."
        raise CheckpointError(f"{path} cannot be loaded as a {model_type} model folder "
                              f"({type(exc).__name__}: {why})") from None
