"""The output folder's model: `model.safetensors` + `mmcompress.json` (enough to rebuild)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..adapters import ADAPTERS, Adapter
from ..errors import CheckpointError
from ..modules import MODULE_TYPES, build_module
from ..modules.replace import replace_modules
from .structure import apply_structure, meta_base, structure_diff

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "mmcompress.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replaced_modules(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Manifest entries for every replacement module in the model (name → spec)."""
    types = tuple(MODULE_TYPES.values())
    return {n: m.spec() for n, m in model.named_modules() if isinstance(m, types)}


def state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous tensors; tensors sharing storage are stored separately."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    seen: dict[tuple[int, int], str] = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if v.numel() and key in seen:
            state[k] = v.clone()  # tied weights are stored twice rather than silently dropped
        seen.setdefault(key, k)
    return state


def save_checkpoint(adapter: Adapter, folder: Path, base_model: str, history: list[dict]) -> None:
    """Write weights, manifest and assets into `folder` (an atomic temporary folder)."""
    weights = folder / WEIGHTS
    save_file(state_for_saving(adapter.model), str(weights), metadata={"format": "pt"})
    adapter.save_assets(folder)
    manifest = {
        "format": "mmcompress",
        "format_version": FORMAT_VERSION,
        "mmcompress_version": __version__,
        "base_model": base_model,
        "adapter": adapter.name,
        "architecture": adapter.architecture(),
        "structure": structure_diff(_base_model(adapter, folder), adapter.model),
        "modules": replaced_modules(adapter.model),
        "stages": history,
        "weights": {"file": WEIGHTS, "bytes": weights.stat().st_size, "sha256": _sha256(weights)},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _base_model(adapter: Adapter, folder: Path | None) -> torch.nn.Module:
    """The adapter's base architecture on the meta device, to diff the model's structure."""
    return meta_base(lambda: type(adapter).from_architecture(adapter.architecture(), folder).model)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {MANIFEST}; not an mmcompress output folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupted: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "mmcompress":
        raise CheckpointError(f"{path} is not an mmcompress manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {manifest.get('format_version')!r} is not "
            f"supported (this mmcompress reads {FORMAT_VERSION})"
        )
    return manifest


def load_checkpoint(folder: Path) -> Adapter:
    """Rebuild the saved model and load its weights with strict checking (no pickle)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        adapter_cls = ADAPTERS[manifest["adapter"]]
        weights_info = manifest["weights"]
        adapter = adapter_cls.from_architecture(manifest["architecture"], folder)
        apply_structure(adapter.model, manifest.get("structure", {}))
        specs = manifest["modules"]
        for depth in sorted({n.count(".") for n in specs}):  # parents first: nested replacements
            replace_modules(adapter.model, {n: build_module(s) for n, s in specs.items()
                                            if n.count(".") == depth})
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{folder / MANIFEST} is inconsistent: {exc!r}") from None
    weights = folder / weights_info["file"]
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    if (
        weights.stat().st_size != weights_info["bytes"]
        or _sha256(weights) != weights_info["sha256"]
    ):
        raise CheckpointError(
            f"{weights} is truncated or altered (size or sha256 differs from {MANIFEST})"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} cannot be read: {exc}") from None
    try:
        adapter.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise CheckpointError(f"{weights} does not match the manifest: {' '.join(first)}") from None
    adapter.model.eval()
    adapter.check_finite()
    adapter.manifest = manifest  # type: ignore[attr-defined]
    return adapter
