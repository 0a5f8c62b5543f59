"""Dense bit packing of unsigned integer codes into bytes (any width from 1 to 8 bits)."""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_numel(n: int, bits: int) -> int:
    """Number of bytes that hold `n` codes of `bits` bits each."""
    return (n * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (values < 2**bits) into a flat uint8 tensor, little-endian bit order."""
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    if bits == 4 and flat.numel() % 2 == 0:
        pairs = flat.view(-1, 2)
        return pairs[:, 0] | (pairs[:, 1] << 4)
    bit_planes = (flat.unsqueeze(1) >> _SHIFTS[:bits]) & 1  # [n, bits]
    stream = bit_planes.reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    return (stream.view(-1, 8) << _SHIFTS).sum(dim=1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `numel` codes as a flat uint8 tensor."""
    if bits == 8:
        return packed[:numel]
    if bits == 4 and numel % 2 == 0:
        return torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:numel]
    stream = ((packed.unsqueeze(1) >> _SHIFTS) & 1).reshape(-1)[: numel * bits]
    return (stream.view(numel, bits) << _SHIFTS[:bits]).sum(dim=1, dtype=torch.uint8)


def gather_codes(packed: torch.Tensor, bits: int, index: torch.Tensor) -> torch.Tensor:
    """The codes at positions `index` (any shape) of a `pack_codes` stream, as uint8, without
    unpacking the rest of it."""
    if bits == 8:
        return packed[index]
    code = torch.zeros(index.shape, dtype=torch.int64, device=packed.device)
    start = index.long() * bits
    for t in range(bits):
        pos = start + t
        code |= ((packed[pos >> 3].long() >> (pos & 7)) & 1) << t
    return code.to(torch.uint8)


def packed_row_bytes(cols: int, bits: int) -> int:
    """Bytes one packed row of `cols` codes takes (rows are padded to whole bytes of 8 codes)."""
    return cols if bits == 8 else (cols + (-cols) % 8) * bits // 8


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a [rows, cols] code matrix row by row, so that rows can be gathered while packed."""
    rows, cols = codes.shape
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    pad = (-cols) % 8
    if pad:
        codes = torch.cat([codes, codes.new_zeros(rows, pad)], dim=1)
    return pack_codes(codes, bits).view(rows, -1)


def unpack_rows(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_rows` for any subset of packed rows."""
    if bits == 8:
        return packed
    rows = packed.shape[0]
    padded = cols + (-cols) % 8
    return unpack_codes(packed.reshape(-1), bits, rows * padded).view(rows, padded)[:, :cols]
