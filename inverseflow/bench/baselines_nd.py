"""Slow reference inverses in any dimension (1-D, 2-D, 3-D; pure PyTorch), for the 3-D
scaling benchmark, differentiable like :func:`inverseflow.bench.scaling`'s 2-D ones:

- :func:`sequential_inv_conv`: one position at a time in raster order from the corner
  (n dependent steps for n positions), forward and backward; the backward's ``T⁻ᵀ g`` is
  the same raster solve from the opposite corner on the channel-reversed, tap-flipped
  weight (docs/nd-design.md, rule 10);
- :func:`dense_inv_conv`: the dense (C·n)×(C·n) matrix solved by LU, differentiated by
  autograd, O(n³).

They use only the corner geometry and the causal convolution, never the compiled solve.
"""

from __future__ import annotations

import itertools

import torch

from ..ops import _geometry
from ..ops._validate import CORNERS_BY_DIMS, check_conv_args

_FLIP = {"N": "F", "F": "N", "T": "B", "B": "T", "L": "R", "R": "L"}


def opposite(corner: str) -> str:
    """The corner with every letter flipped (``NTL`` ↔ ``FBR``, ``L`` ↔ ``R``)."""
    return "".join(_FLIP[letter] for letter in corner)


def _raster_sweep(y: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """The solve from the near corner (every axis near): x padded by k_i − 1 zeros before
    each axis, filled one position at a time."""
    kernel = wm.shape[2:]
    lower = wm[(slice(None), slice(None)) + tuple(k - 1 for k in kernel)]
    taps = wm.clone()
    taps[(slice(None), slice(None)) + tuple(k - 1 for k in kernel)] = 0
    taps = taps.reshape(wm.shape[0], -1)
    x = y.new_zeros(*y.shape[:2], *(n + k - 1 for n, k in zip(y.shape[2:], kernel)))
    for p in itertools.product(*(range(n) for n in y.shape[2:])):
        window = x[(slice(None), slice(None)) + tuple(slice(i, i + k) for i, k in zip(p, kernel))]
        r = y[(slice(None), slice(None)) + p] - window.reshape(y.shape[0], -1) @ taps.T
        x[(slice(None), slice(None)) + tuple(i + k - 1 for i, k in zip(p, kernel))] = (
            torch.linalg.solve_triangular(lower, r.T, upper=False, unitriangular=True).T)
    return x[(slice(None), slice(None)) + tuple(slice(k - 1, None) for k in kernel)]


@torch.no_grad()
def sequential_solve(y: torch.Tensor, weight: torch.Tensor, order: str) -> torch.Tensor:
    """``x = T⁻¹ y`` position by position, per channel group: each group's far axes are
    flipped so that its corner becomes the near one."""
    dims = weight.dim() - 2
    check_conv_args(y, weight, order, "y", dims=dims)
    wm = _geometry.masked_weight(weight, order)
    out = torch.empty_like(y)
    for corner, part in _geometry.groups(order, y.shape[1], dims):
        axes = [2 + i for i, far in enumerate(_geometry.far_sides(corner)) if far]
        w = wm[part] if order not in CORNERS_BY_DIMS[dims] else wm
        flip = (lambda t: t.flip(axes)) if axes else (lambda t: t)  # noqa: E731
        out[:, part] = flip(_raster_sweep(flip(y[:, part]), flip(w)))
    return out


class _SequentialInverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, order):
        x = sequential_solve(y, weight, order)
        ctx.save_for_backward(x, weight)
        ctx.order = order
        return x

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        order = ctx.order
        wm = _geometry.masked_weight(weight, order)
        adjoint = wm.flip(list(range(wm.dim()))).transpose(0, 1)  # channels reversed, taps flipped
        g_y = sequential_solve(grad.flip(1), adjoint, opposite(order)).flip(1)
        g_w = -_geometry.conv_weight_grad(x, g_y, weight.shape, order)
        return g_y, _geometry.mask_gradient(g_w, order), None


def sequential_inv_conv(y: torch.Tensor, weight: torch.Tensor, order: str) -> torch.Tensor:
    """Differentiable position-by-position inverse (single corners only)."""
    dims = weight.dim() - 2
    if order not in CORNERS_BY_DIMS.get(dims, ()):
        raise ValueError(f"order must be one of {CORNERS_BY_DIMS.get(dims)} for the "
                         f"sequential baseline of a {dims}-D weight, got {order!r}")
    return _SequentialInverse.apply(y, weight, order)


def dense_matrix(weight: torch.Tensor, order: str, shape) -> torch.Tensor:
    """The (C·n)×(C·n) matrix of the causal convolution on signals of ``shape`` (C, *spatial),
    built column by column from the identity (differentiable in ``weight``)."""
    n = 1
    for size in shape:
        n *= size
    basis = torch.eye(n, dtype=weight.dtype, device=weight.device).reshape(n, *shape)
    wm = _geometry.masked_weight(weight, order)
    return _geometry.causal_conv(basis, wm, order).reshape(n, n).T


def dense_inv_conv(y: torch.Tensor, weight: torch.Tensor, order: str) -> torch.Tensor:
    """Differentiable dense inverse: LU of the matrix, autograd's O(n³) backward."""
    matrix = dense_matrix(weight, order, tuple(y.shape[1:]))
    return torch.linalg.solve(matrix, y.reshape(y.shape[0], -1).T).T.reshape(y.shape)
