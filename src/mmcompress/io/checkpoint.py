"""The output folder's model: `model.safetensors` + `mmcompress.json` (enough to rebuild).

`buffers.safetensors` holds the buffers a state dict leaves out (position ids, an audio
window). With it, loading builds the architecture on the meta device and allocates only what
the saved model holds, uninitialised, before the weights are copied in, one module's tensors at
a time (`tensor_file.py`): no randomly initialised copy of the original dense model first and no
whole copy of the file, so a compressed model costs about its own size to load. Folders
written before that file existed, or a model keeping a tensor neither file restores, load as
before: the architecture built and initialised in memory, then the weights copied in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..adapters import ADAPTERS, Adapter
from ..errors import CheckpointError
from ..modules import MODULE_TYPES, build_module
from ..modules.replace import replace_modules
from .structure import apply_structure, meta_base, structure_diff
from .tensor_file import DTYPES, TensorFile

FORMAT_VERSION = 2  # 2: assets listed with their sha256, the whole manifest digested
READABLE_VERSIONS = (1, 2)
WEIGHTS = "model.safetensors"
BUFFERS = "buffers.safetensors"
MANIFEST = "mmcompress.json"
DESCRIBED = ("adapter", "architecture", "structure", "modules")  # what format 1 digested
ASSETS = "assets"  # manifest key: [{file, bytes, sha256}] of the tokenizer and other assets
FILE_ENTRIES = ("weights", "buffers")  # manifest keys hashing the files; outside the digest
DESCRIPTION_KEY = "mmcompress_description_sha256"


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


def _separate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as contiguous tensors; tensors sharing storage are stored separately."""
    state = {k: v.detach().contiguous() for k, v in state.items()}
    seen: dict[tuple[int, int], str] = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if v.numel() and key in seen:
            state[k] = v.clone()  # tied weights are stored twice rather than silently dropped
        seen.setdefault(key, k)
    return state


def state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous tensors; tensors sharing storage are stored separately."""
    return _separate(model.state_dict())


def unsaved_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers the state dict leaves out (registered with ``persistent=False``), by dotted
    name; not those a module derives again while loading (its `derived_buffers`)."""
    return {
        f"{name}.{b}" if name else b: t
        for name, m in model.named_modules()
        for b, t in m._buffers.items()
        if t is not None and b in m._non_persistent_buffers_set
        and b not in getattr(m, "derived_buffers", ())
    }


def _file_entry(path: Path, folder: Path | None = None) -> dict[str, Any]:
    """Name (relative to `folder` when given), size and sha256 of a file the manifest covers."""
    name = path.relative_to(folder).as_posix() if folder is not None else path.name
    return {"file": name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def save_checkpoint(adapter: Adapter, folder: Path, base_model: str | None,
                    history: list[dict]) -> None:
    """Write weights, manifest and assets into `folder` (an atomic temporary folder)."""
    weights, buffers = folder / WEIGHTS, folder / BUFFERS
    present = _files(folder)
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
        ASSETS: [_file_entry(p, folder) for p in sorted(_files(folder) - present)],
        "stages": history,
    }
    save_file(state_for_saving(adapter.model), str(weights),
              metadata=weights_metadata(description_digest(manifest)))
    save_file(_separate(unsaved_buffers(adapter.model)), str(buffers), metadata={"format": "pt"})
    manifest.update(weights=_file_entry(weights), buffers=_file_entry(buffers))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _format_1(manifest: dict[str, Any]) -> bool:
    """A folder written before assets were listed and the whole manifest digested."""
    return manifest.get("format_version") == 1


def weights_metadata(digest: str = "0" * 64) -> dict[str, str]:
    """The metadata of `model.safetensors` (a size measured before saving passes no `digest`:
    a stand-in of the same length gives the same file size)."""
    return {"format": "pt", DESCRIPTION_KEY: digest}


def description_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest as it reads back from JSON, all but the entries hashing the two
    files (format 1: its model description alone, `DESCRIBED`); the weights file keeps it in
    its metadata, which the manifest's own hash of that file covers, so an edit to either is
    caught (base model, stage history and asset hashes included)."""
    if _format_1(manifest):
        described = {k: manifest.get(k) for k in DESCRIBED}
    else:
        described = {k: v for k, v in manifest.items() if k not in FILE_ENTRIES}
    canonical = json.dumps(json.loads(json.dumps(described)), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_description(manifest: dict[str, Any], metadata: dict[str, str], weights: Path
                       ) -> None:
    """Refuse a manifest that is not the one saved with the weights (its digest is in their
    file's `metadata`; folders written before the digest existed have none)."""
    saved = metadata.get(DESCRIPTION_KEY)
    if saved is None and not _format_1(manifest):
        raise CheckpointError(f"{weights} is altered: it lacks the digest of {MANIFEST}")
    if saved is not None and saved != description_digest(manifest):
        raise CheckpointError(f"{weights.parent / MANIFEST} is altered: its contents are "
                              f"not those saved with {weights.name}")


def _base_model(adapter: Adapter, folder: Path | None) -> torch.nn.Module:
    """The adapter's base architecture on the meta device, to diff the model's structure."""
    return meta_base(lambda: type(adapter).from_architecture(adapter.architecture(), folder).model)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():  # missing, a folder, a FIFO, a link to nowhere or a link loop
        raise CheckpointError(f"{folder}: no {MANIFEST} file; not an mmcompress output folder")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, too deep, huge numbers
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise CheckpointError(f"{path} is corrupted: {why}") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "mmcompress":
        raise CheckpointError(f"{path} is not an mmcompress manifest")
    version = manifest.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this mmcompress reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    return manifest


def _verified(folder: Path, entry: Any, nested: bool = False) -> Path:
    """The file a manifest entry names, once its size and sha256 match the entry (`nested`:
    a path inside `folder`, such as ``tokenizer/vocab.txt``; else a name in it)."""
    try:
        name = entry["file"]
        parts = Path(name).parts
        if nested and (Path(name).is_absolute() or ".." in parts or not parts):
            raise ValueError(f"{name!r} is not a path inside the folder")
        path = folder / (name if nested else Path(name).name)
        size, digest = entry["bytes"], entry["sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / MANIFEST} is inconsistent: {exc!r}") from None
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        intact = path.stat().st_size == size and _sha256(path) == digest
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not intact:
        raise CheckpointError(
            f"{path} is truncated or altered (size or sha256 differs from {MANIFEST})"
        )
    return path


def _check_assets(folder: Path, manifest: dict[str, Any]) -> None:
    """Every asset the manifest lists (format 2: the tokenizer) is there, unaltered, and the
    folders holding them hold nothing else: a file added changes a tokenizer too (format 1
    listed none)."""
    entries = manifest.get(ASSETS, [])
    if not isinstance(entries, list):
        raise CheckpointError(f"{folder / MANIFEST}: {ASSETS!r} is not a list")
    listed = {_verified(folder, entry, nested=True) for entry in entries}
    holders = {p.parent for p in listed} - {folder}
    extra = sorted(set().union(*map(_files, holders)) - listed)
    if extra:
        raise CheckpointError(f"{extra[0]} is not listed in {MANIFEST}: an asset is altered")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None


def _rebuild(folder: Path, manifest: dict[str, Any], meta: bool) -> Adapter:
    """The saved architecture with its replacement modules; on the meta device if `meta`."""
    where = folder / MANIFEST
    if not isinstance(manifest.get("adapter"), str) or manifest["adapter"] not in ADAPTERS:
        raise CheckpointError(f"{where} names the model kind {manifest.get('adapter')!r}, "
                              f"which is none of {', '.join(sorted(ADAPTERS))}")
    for key in ("architecture", "modules"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{where}: {key!r} is missing or not a mapping")

    def build() -> Adapter:
        adapter = ADAPTERS[manifest["adapter"]].from_architecture(manifest["architecture"],
                                                                  folder)
        apply_structure(adapter.model, manifest.get("structure", {}))
        specs = manifest["modules"]
        for depth in sorted({n.count(".") for n in specs}):  # parents first: nested ones
            replace_modules(adapter.model, {n: build_module(s) for n, s in specs.items()
                                            if n.count(".") == depth})
        return adapter

    try:
        return meta_base(build) if meta else build()
    except Exception as exc:  # whatever fails, the manifest asked for it
        if isinstance(exc, CheckpointError) or (
                meta and isinstance(exc, RuntimeError | NotImplementedError)):
            raise  # on the meta device, an op may lack an implementation: built in memory
        why = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{folder}: the model {MANIFEST} describes cannot be rebuilt "
                              f"from it and the folder's files ({type(exc).__name__}: {why})"
                              ) from None


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise CheckpointError(f"{path} does not match the manifest: {' '.join(first)}") from None


def _own_keys(model: torch.nn.Module) -> Iterator[tuple[nn.Module, str, list[str]]]:
    """Each module, its state-dict prefix, and the keys of its own parameters and persistent
    buffers."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        yield module, prefix, [prefix + n for n, p in module._parameters.items()
                               if p is not None] + [
            prefix + n for n, b in module._buffers.items()
            if b is not None and n not in module._non_persistent_buffers_set]


def _streamable(model: torch.nn.Module, expected: set[str]) -> bool:
    """Whether module by module loading does what `load_state_dict` does: the state-dict
    keys (`expected`) are exactly the modules' own tensors, and no module has a post-load
    hook or extra state."""
    own = {k for _, _, keys in _own_keys(model) for k in keys}
    return own == expected and not any(
        m._load_state_dict_post_hooks
        or type(m).set_extra_state is not torch.nn.Module.set_extra_state
        for m in model.modules())


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy the weights file into `model`, one module's tensors at a time (what
    `load_state_dict(strict=True)` does, without holding the whole file in memory), once
    `_check_layout` has found the file to hold the model's tensors."""
    expected = set(model.state_dict().keys())
    if not _streamable(model, expected):
        _load_state(model, _read(path), path)
        return
    with TensorFile(path) as weights:  # names, shapes and dtypes: `_check_layout`
        for module, prefix, keys in _own_keys(model):
            state = {k: weights.read(k) for k in keys}
            missing, unexpected, errors = [], [], []
            module._load_from_state_dict(state, prefix, {}, True, missing, unexpected, errors)
            if missing or unexpected or errors:
                why = (errors or [f"keys {missing + unexpected}"])[0].splitlines()[0]
                raise CheckpointError(f"{path} does not match the manifest: {why}")


def _set_buffers(model: torch.nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Put the saved non-persistent buffers into `model` (fresh, aligned copies: the tensors
    read from a file are views at arbitrary offsets into its bytes, and math kernels may take
    another path on unaligned memory, so outputs would no longer be bit-identical; the same
    holds for the weights, which is why they are copied rather than assigned)."""
    for key, tensor in buffers.items():
        owner, _, name = key.rpartition(".")
        model.get_submodule(owner)._buffers[name] = tensor.clone()


def _plain_meta_tensors(adapter: Adapter) -> list[str]:
    """Tensors the adapter or a module keeps as plain attributes (not parameters or buffers)
    that are on the meta device: made at construction, never saved."""
    holders = [("", adapter), *adapter.model.named_modules()]
    return [f"{n}.{k}" if n else k for n, obj in holders
            for k, v in vars(obj).items() if isinstance(v, torch.Tensor) and v.is_meta]


def _check_layout(expected: dict[str, torch.Tensor], found: dict[str, Any], path: Path
                  ) -> None:
    """Refuse a safetensors file whose tensors (`found`: its header's entries) differ from
    `expected` (meta tensors will do) in name, shape or dtype: loading would otherwise cast or
    fail half-way."""
    extra, missing = sorted(set(found) - set(expected))[:3], sorted(set(expected) - set(found))[:3]
    if extra or missing:
        raise CheckpointError(f"{path} does not match the manifest: missing keys {missing}, "
                              f"unexpected keys {extra}")
    for key, tensor in expected.items():
        entry = found[key]
        shape, dtype = [int(d) for d in entry["shape"]], DTYPES[entry["dtype"]]
        if shape != list(tensor.shape) or dtype != tensor.dtype:
            raise CheckpointError(
                f"{path} does not match the manifest: {key} is {str(dtype)[6:]} {shape}, "
                f"the model holds {str(tensor.dtype)[6:]} {list(tensor.shape)}")


def _lean_rebuild(folder: Path, manifest: dict[str, Any], weights: Path,
                  stored: dict[str, Any], buffers: Path) -> Adapter | None:
    """The saved architecture allocated at its saved size (built on the meta device, then
    given uninitialised memory, once both files are found to hold its tensors) with its
    non-persistent buffers from `buffers`; None when the model holds a tensor that neither
    file restores, or cannot be built on the meta device (an op there without a meta
    implementation)."""
    try:
        adapter = _rebuild(folder, manifest, meta=True)
    except (RuntimeError, NotImplementedError):
        return None
    wanted = unsaved_buffers(adapter.model)
    with TensorFile(buffers) as file:
        found = file.entries
    if set(wanted) - set(found) or _plain_meta_tensors(adapter):
        return None
    _check_layout(wanted, found, buffers)  # stray buffers too
    _check_layout(adapter.model.state_dict(), stored, weights)
    saved = _read(buffers)
    adapter.model.to_empty(device="cpu")
    _set_buffers(adapter.model, saved)
    return adapter


def load_checkpoint(folder: Path) -> Adapter:
    """Rebuild the saved model and load its weights with strict checking (no pickle)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = _verified(folder, manifest.get("weights"))
    buffers = _verified(folder, manifest["buffers"]) if "buffers" in manifest else None
    with TensorFile(weights) as file:  # its header, read once: tensor entries and metadata
        stored, metadata = file.entries, file.metadata
    _check_description(manifest, metadata, weights)
    _check_assets(folder, manifest)
    adapter = _lean_rebuild(folder, manifest, weights, stored, buffers) \
        if buffers is not None else None
    if adapter is None:  # a folder from before buffers.safetensors, or a tensor it lacks
        adapter = _rebuild(folder, manifest, meta=False)
        _check_layout(adapter.model.state_dict(), stored, weights)
    _load_weights(adapter.model, weights)
    adapter.model.eval()
    adapter.check_finite()
    adapter.manifest = manifest  # type: ignore[attr-defined]
    return adapter
