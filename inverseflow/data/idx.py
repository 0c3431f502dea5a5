"""A strict reader for IDX files of unsigned bytes (LeCun et al., the MNIST file format,
http://yann.lecun.com/exdb/mnist/), plain or gzip-compressed.

Layout: a 4-byte magic number ``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned
byte), then ``ndim`` big-endian uint32 sizes, then exactly ``prod(sizes)`` bytes.
Image files have magic ``0x00000803``: (N, rows, cols).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
_UBYTE = 0x08


def _read_payload(f, limit: int) -> bytearray:
    """Reads until EOF, but at most ``limit`` bytes (never allocating what a bad header claims)."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = f.read(min(1 << 22, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Reads an unsigned-byte IDX file into a writable uint8 array; ``ndim`` if given is required.

    Raises ``ValueError`` naming the file on a bad magic number, a short header, or a
    payload that is shorter or longer than the sizes in the header say."""
    path = Path(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) != 4:
                raise ValueError(f"{path}: not an IDX file (shorter than the 4-byte magic number)")
            zero, dtype, nd = struct.unpack(">HBB", head)
            if zero != 0 or dtype != _UBYTE or nd == 0 or (ndim is not None and nd != ndim):
                want = f"0x{0x800 + ndim:08x}" if ndim is not None else "0x000008NN"
                raise ValueError(
                    f"{path}: bad IDX magic number 0x{struct.unpack('>I', head)[0]:08x}, expected {want} "
                    "(unsigned bytes" + (f", {ndim} dims)" if ndim is not None else ")")
                )
            dims_raw = f.read(4 * nd)
            if len(dims_raw) != 4 * nd:
                raise ValueError(f"{path}: IDX header truncated (expected {nd} dimension sizes)")
            dims = struct.unpack(f">{nd}I", dims_raw)
            size = math.prod(dims)
            payload = _read_payload(f, size + 1)
            if len(payload) != size:
                what = "truncated" if len(payload) < size else "longer than the header says"
                raise ValueError(
                    f"{path}: IDX payload {what}: header sizes {dims} = {size} bytes, "
                    f"found {len(payload) if len(payload) < size else 'more'}"
                )
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupted gzip stream ({type(e).__name__}: {e})") from e
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)  # writable: backed by a bytearray


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """An IDX image file (magic 0x00000803) -> uint8 array (N, rows, cols)."""
    return read_idx(path, ndim=3)
