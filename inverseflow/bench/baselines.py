"""Slow reference solvers that the benchmarks compare against (pure PyTorch).

- :func:`sequential_solve`: one pixel at a time in raster order (H·W dependent steps),
  batched over samples: what a direct implementation of the triangular solve does.
- :func:`diagonal_solve`: one anti-diagonal at a time (H+W−1 steps), each step a few
  separate kernel launches, synchronised by the stream: the structure of the paper's
  released code, which launches per diagonal.
- :func:`dense_solve`: builds the (CHW)×(CHW) matrix of the convolution and solves it
  by Gaussian elimination (LU), O((CHW)³): the naive approach the paper improves on.
"""

from __future__ import annotations

import torch

from ..ops import _geometry, causal_conv2d
from ..ops._validate import check_conv_args


def _groups_top_left(y, weight, order):
    """Per channel group: (slice, y in top-left form, masked weight flipped to match)."""
    kh, kw = weight.shape[2], weight.shape[3]
    wm = _geometry.masked_weight(weight, order)
    for corner, part in _geometry.groups(order, y.shape[1]):
        dims = [d for d, flip in ((2, corner in ("BL", "BR")), (3, corner in ("TR", "BR"))) if flip]
        w = wm[part] if order == "quad" else wm
        yield part, dims, (y[:, part].flip(dims) if dims else y[:, part]), (
            w.flip(dims) if dims else w), kh, kw


def _unflip(x, dims):
    return x.flip(dims) if dims else x


def _solve_top_left(y, weight, order, sweep) -> torch.Tensor:
    """Runs ``sweep(yt, x, lower, taps, kh, kw)`` per group in top-left form; ``sweep``
    fills the padded ``x`` whose zero border stands for the image's outside."""
    check_conv_args(y, weight, order, "y")
    out = torch.empty_like(y)
    for part, dims, yt, w, kh, kw in _groups_top_left(y, weight, order):
        b, c, h, wd = yt.shape
        taps = w.clone()
        taps[:, :, kh - 1, kw - 1] = 0
        x = y.new_zeros(b, c, h + kh - 1, wd + kw - 1)
        sweep(yt, x, w[:, :, kh - 1, kw - 1], taps, kh, kw)
        out[:, part] = _unflip(x[:, :, kh - 1:, kw - 1:], dims)
    return out


def _raster_sweep(yt, x, lower, taps, kh, kw):
    for i in range(yt.shape[2]):
        for j in range(yt.shape[3]):
            window = x[:, :, i:i + kh, j:j + kw]
            r = yt[:, :, i, j] - torch.einsum("bcij,dcij->bd", window, taps)
            x[:, :, i + kh - 1, j + kw - 1] = torch.linalg.solve_triangular(
                lower, r.T, upper=False, unitriangular=True).T


def _diagonal_sweep(yt, x, lower, taps, kh, kw):
    b, c, h, wd = yt.shape
    for d in range(h + wd - 1):
        rows = torch.arange(max(0, d - wd + 1), min(d, h - 1) + 1, device=yt.device)
        cols = d - rows
        # Every tap's neighbours of every pixel on the diagonal, gathered at once.
        ii = rows[:, None, None] + torch.arange(kh, device=yt.device)[None, :, None]
        jj = cols[:, None, None] + torch.arange(kw, device=yt.device)[None, None, :]
        window = x[:, :, ii, jj]                       # (b, c, n, kh, kw)
        r = yt[:, :, rows, cols] - torch.einsum("bcnij,dcij->bdn", window, taps)
        solved = torch.linalg.solve_triangular(lower, r.permute(1, 0, 2).reshape(c, -1),
                                               upper=False, unitriangular=True)
        x[:, :, rows + kh - 1, cols + kw - 1] = solved.reshape(c, b, -1).permute(1, 0, 2)


@torch.no_grad()
def sequential_solve(y: torch.Tensor, weight: torch.Tensor, order: str = "TL") -> torch.Tensor:
    return _solve_top_left(y, weight, order, _raster_sweep)


@torch.no_grad()
def diagonal_solve(y: torch.Tensor, weight: torch.Tensor, order: str = "TL") -> torch.Tensor:
    return _solve_top_left(y, weight, order, _diagonal_sweep)


def dense_matrix(weight: torch.Tensor, order: str, shape) -> torch.Tensor:
    """The (CHW)×(CHW) matrix T of the causal convolution on images of ``shape`` (C, H, W)."""
    n = shape[0] * shape[1] * shape[2]
    basis = torch.eye(n, dtype=weight.dtype, device=weight.device).reshape(n, *shape)
    return causal_conv2d(basis, weight, order).reshape(n, n).T


@torch.no_grad()
def dense_solve(y: torch.Tensor, weight: torch.Tensor, order: str = "TL",
                matrix: torch.Tensor | None = None) -> torch.Tensor:
    check_conv_args(y, weight, order, "y")
    matrix = dense_matrix(weight, order, tuple(y.shape[1:])) if matrix is None else matrix
    return torch.linalg.solve(matrix, y.reshape(y.shape[0], -1).T).T.reshape(y.shape)
