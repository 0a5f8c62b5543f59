"""A safetensors file read one tensor at a time, with plain reads (no memory map).

`safetensors.torch.load_file` maps the whole file and returns views into it; copying those into
a model touches every page of the file, so loading peaks at the model plus the file. Reading
tensor by tensor through `safe_open` maps it too, and the touched pages stay resident: random
CLIP ViT-B/32 with half its MLP neurons (422 MB) peaked at 848 MB to load and run either way,
and at 476 MB with the plain reads here. Reading tensor by tensor keeps that second copy to
one tensor. The format is an 8-byte little-endian
header length, a JSON header (name → dtype, shape, byte offsets in the data that follows) and
the raw little-endian data; nothing in it is executed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class TensorFile:
    """The tensors of a safetensors file, by name, each read when asked for."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._file: BinaryIO = self.path.open("rb")
        except OSError as exc:
            raise self._bad(exc.strerror or str(exc)) from None
        try:
            self.entries, self._data_start = self._header()
        except Exception:
            self._file.close()
            raise

    def _bad(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path} cannot be read: {why}")

    def _header(self) -> tuple[dict[str, dict[str, Any]], int]:
        size = self.path.stat().st_size
        n = int.from_bytes(self._file.read(8), "little")
        if size < 8 or n > size - 8:
            raise self._bad("header length beyond the end of the file")
        try:
            header = json.loads(self._file.read(n))
        except (ValueError, RecursionError):  # not JSON or UTF-8, too deep, huge numbers
            raise self._bad("the header is not JSON that can be read") from None
        if not isinstance(header, dict):
            raise self._bad("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(v, str) for v in metadata.values()):
            raise self._bad("its metadata is not a mapping of strings")
        self.metadata: dict[str, str] = metadata
        for name, entry in header.items():
            self._check(name, entry, size - 8 - n)
        at = 0  # the tensors tile the data in order, as safetensors writes and checks them
        for begin, end in sorted(tuple(e["data_offsets"]) for e in header.values()):
            if begin != at:
                raise self._bad("its tensors overlap or leave gaps in the data")
            at = end
        if at != size - 8 - n:
            raise self._bad("bytes follow the last tensor")
        return header, 8 + n

    def _check(self, name: str, entry: Any, data_bytes: int) -> None:
        try:
            dtype, shape, (begin, end) = DTYPES[entry["dtype"]], entry["shape"], \
                entry["data_offsets"]
            numbers = [*shape, begin, end]
            numel = math.prod(shape)
        except (KeyError, TypeError, ValueError):
            raise self._bad(f"tensor {name!r} has a malformed entry") from None
        if not all(type(v) is int and v >= 0 for v in numbers):
            raise self._bad(f"tensor {name!r} has a size or offset that is not a whole number "
                            "≥ 0")
        if not 0 <= begin <= end <= data_bytes or end - begin != numel * dtype.itemsize:
            raise self._bad(f"tensor {name!r} lies outside the data or has the wrong size")

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        dtype, shape = DTYPES[entry["dtype"]], [int(d) for d in entry["shape"]]
        data = torch.empty(end - begin, dtype=torch.uint8)
        self._file.seek(self._data_start + begin)
        if end > begin and self._file.readinto(data.numpy()) != end - begin:
            raise self._bad(f"tensor {name!r} is cut short")
        return data.view(dtype).reshape(shape)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
