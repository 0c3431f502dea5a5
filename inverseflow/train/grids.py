"""A PNG grid writer (zlib + struct only), for sample images."""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import torch


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(pixels: torch.Tensor) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) tensor."""
    if pixels.dtype != torch.uint8 or pixels.dim() not in (2, 3):
        raise ValueError("pixels must be uint8 (H, W) or (H, W, 3)")
    height, width = pixels.shape[:2]
    color = 2 if pixels.dim() == 3 else 0
    rows = pixels.reshape(height, -1).cpu().numpy()
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def save_grid(images: torch.Tensor, path, ncols: int | None = None, pad: int = 1) -> Path:
    """Writes images (N, C, H, W) in [0, 1] (C = 1 or 3) as one PNG grid, atomically."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = torch.zeros(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, ncols)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = image
    pixels = (grid * 255).round().to(torch.uint8)
    pixels = pixels[0] if c == 1 else pixels.permute(1, 2, 0).contiguous()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_png(pixels))
    os.replace(tmp, path)
    return path
