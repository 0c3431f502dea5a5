"""Sample grids: tiling in torch, PNG encoding by Pillow."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image

# The smallest side of a written grid, in pixels: enough to see a digit's strokes.
MIN_SIDE = 256
MAX_SIDE = 4096


def make_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 1) -> torch.Tensor:
    """Tiles images (N, C, H, W) in [0, 1] (C = 1 or 3) into one uint8 (C, H', W') image,
    row-major, with ``pad`` black pixels around and between them."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, 1 or 3, H, W) tensor, got {shape}")
    if ncols is not None and ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad!r}")
    n, c, h, w = images.shape
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    grid = torch.zeros(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = image
    return (grid * 255).round().to(torch.uint8)


def save_grid(images: torch.Tensor, path, ncols: int | None = None, pad: int = 1,
              min_side: int = MIN_SIDE) -> Path:
    """Writes images (N, C, H, W) in [0, 1] (C = 1 or 3) as one PNG grid, atomically. A
    grid smaller than ``min_side`` pixels on a side is enlarged by the smallest whole factor
    that reaches it, nearest neighbour (each pixel a square block), so that small images
    (8×8 digits: a 73×73 grid) can be seen; ``min_side=1`` writes one pixel per pixel."""
    if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1:
        raise ValueError(f"min_side must be a positive integer, got {min_side!r}")
    grid = make_grid(images, ncols, pad)
    pixels = grid[0] if grid.shape[0] == 1 else grid.permute(1, 2, 0)
    picture = Image.fromarray(pixels.contiguous().numpy())
    # A whole factor keeps every pixel square; MAX_SIDE keeps a long, thin grid bounded.
    factor = max(1, min(math.ceil(min_side / min(picture.size)),
                        MAX_SIDE // max(picture.size)))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor),
                                 Image.Resampling.NEAREST)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        picture.save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # Name the user's file, not the temporary one it is written through.
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
    return path
