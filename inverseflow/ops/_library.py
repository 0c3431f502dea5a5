"""The torch ops ``inverseflow::inv_conv2d`` and ``inverseflow::causal_conv2d``.

Registered once, here, with ``torch.library``: kernels (CPU, CUDA) through
:mod:`inverseflow.ops._dispatch`, fake kernels for ``torch.compile``, and autograd following
DESIGN.md §2: the backward of the inverse is a transposed solve plus the standard conv
weight gradient, so it saves only ``x`` and ``weight``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch, _geometry
from ._validate import check_conv_args


def _empty_output(y: Tensor) -> Tensor:
    return torch.empty_like(y, memory_format=torch.contiguous_format)


@torch.library.custom_op("inverseflow::inv_conv2d", mutates_args=(), device_types=("cpu", "cuda"))
def _inv_conv2d_op(y: Tensor, weight: Tensor, order: str) -> Tensor:
    return _dispatch.solve(y, weight, order, _dispatch.SOLVE)[0]


@torch.library.custom_op("inverseflow::inv_conv2d_transposed", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _inv_conv2d_transposed_op(g: Tensor, weight: Tensor, order: str) -> Tensor:
    """Solves T(W)^T u = g, with T(W) the causal conv: the adjoint of the inverse."""
    return _dispatch.solve(g, weight, order, _dispatch.TRANSPOSED)[0]


@_inv_conv2d_op.register_fake
def _(y, weight, order):
    check_conv_args(y, weight, order, "y")
    return _empty_output(y)


@_inv_conv2d_transposed_op.register_fake
def _(g, weight, order):
    check_conv_args(g, weight, order, "g")
    return _empty_output(g)


def _save_output_and_weight(ctx, inputs, output):
    _, weight, order = inputs
    ctx.order = order
    ctx.save_for_backward(output, weight)


def _weight_grad(inp: Tensor, grad_out: Tensor, weight: Tensor, order: str) -> Tensor:
    grad = _geometry.conv_weight_grad(inp, grad_out, weight.shape, order)
    return -_geometry.mask_gradient(grad, order)


def _inv_conv2d_backward(ctx, grad_x):
    # x = T⁻¹y: dL/dy = T⁻ᵀ g and dL/dW = −conv_weight_grad(x, T⁻ᵀ g).
    x, weight = ctx.saved_tensors
    grad_y = torch.ops.inverseflow.inv_conv2d_transposed(grad_x, weight, ctx.order)
    grad_w = _weight_grad(x, grad_y, weight, ctx.order) if ctx.needs_input_grad[1] else None
    return grad_y, grad_w, None


def _inv_conv2d_transposed_backward(ctx, grad_u):
    # u = T⁻ᵀg: dL/dg = T⁻¹ h and dL/dW = −conv_weight_grad(T⁻¹ h, u).
    u, weight = ctx.saved_tensors
    grad_g = torch.ops.inverseflow.inv_conv2d(grad_u, weight, ctx.order)
    grad_w = _weight_grad(grad_g, u, weight, ctx.order) if ctx.needs_input_grad[1] else None
    return grad_g, grad_w, None


_inv_conv2d_op.register_autograd(_inv_conv2d_backward, setup_context=_save_output_and_weight)
_inv_conv2d_transposed_op.register_autograd(_inv_conv2d_transposed_backward,
                                            setup_context=_save_output_and_weight)

# The causal conv is plain conv2d on a masked weight, so it is composite: autograd and
# torch.compile see through it to the native (oneDNN / cuDNN) convolution.
torch.library.define("inverseflow::causal_conv2d", "(Tensor x, Tensor weight, str order) -> Tensor")


@torch.library.impl("inverseflow::causal_conv2d", "CompositeImplicitAutograd")
def _causal_conv2d_impl(x, weight, order):
    check_conv_args(x, weight, order, "x")
    return _geometry.causal_conv(x, _geometry.masked_weight(weight, order), order)


def inv_conv2d(y: Tensor, weight: Tensor, order: str = "TL") -> Tensor:
    """The unique ``x`` with ``causal_conv2d(x, weight, order) == y``.

    ``y`` is (N, C, H, W); ``weight`` is (C, C, kh, kw), or (C, C/4, kh, kw) for
    ``order="quad"``. Differentiable in ``y`` and ``weight``. The log-determinant of the
    map is 0. Nagar & Varma, "Parallel Backpropagation for Inverse of a Convolution with
    Application to Normalizing Flows", AISTATS 2025.
    """
    check_conv_args(y, weight, order, "y")
    return torch.ops.inverseflow.inv_conv2d(y, weight, order)


def causal_conv2d(x: Tensor, weight: Tensor, order: str = "TL") -> Tensor:
    """``conv2d(pad(x), M(weight))``: the invertible, corner-padded masked convolution."""
    check_conv_args(x, weight, order, "x")
    return torch.ops.inverseflow.causal_conv2d(x, weight, order)
