"""The torch ops ``inverseflow::inv_conv2d`` and ``inverseflow::causal_conv2d``.

Registered once, here, with ``torch.library``: kernels (CPU, CUDA) through
:mod:`inverseflow.ops._dispatch`, fake kernels for ``torch.compile``, a batching rule for
``vmap``, and autograd following DESIGN.md §2: the backward of the inverse is a transposed
solve plus the standard conv weight gradient, so it saves only ``x`` and ``weight``; the
forward-mode tangent is one more solve plus a causal conv with the weight's tangent. All
three ops compute in float32 at the least (DESIGN.md §12, :mod:`._precision`): an autocast
rule on each op, and float32 copies for bfloat16/float16 inputs.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import _dispatch, _geometry, _precision
from ._precision import LOW_PRECISION
from ._validate import check_conv_args


def _empty_output(y: Tensor) -> Tensor:
    return torch.empty_like(y, memory_format=torch.contiguous_format)


_SOLVE_SCHEMA = "(Tensor {arg}, Tensor weight, str order) -> Tensor"
torch.library.define("inverseflow::inv_conv2d", _SOLVE_SCHEMA.format(arg="y"))
torch.library.define("inverseflow::inv_conv2d_transposed", _SOLVE_SCHEMA.format(arg="g"))
_LIB = torch.library.Library("inverseflow", "IMPL")


def _solve_kernel(direction, arg_name):
    def kernel(y, weight, order):
        if y.dtype in LOW_PRECISION:   # DESIGN §12: computed in float32, returned in y's dtype
            check_conv_args(y, weight, order, arg_name)
            return _dispatch.solve(y.float(), weight.float(), order, direction)[0].to(y.dtype)
        return _dispatch.solve(y, weight, order, direction)[0]

    def fake(y, weight, order):
        check_conv_args(y, weight, order, arg_name)
        return _empty_output(y)
    return kernel, fake


for _name, _direction, _arg in (("inv_conv2d", _dispatch.SOLVE, "y"),
                                ("inv_conv2d_transposed", _dispatch.TRANSPOSED, "g")):
    _kernel, _fake = _solve_kernel(_direction, _arg)
    for _device in ("CPU", "CUDA"):
        torch.library.impl(f"inverseflow::{_name}", _device, _kernel, lib=_LIB)
    torch.library.register_fake(f"inverseflow::{_name}", _fake, lib=_LIB)


def _weight_grad(inp: Tensor, grad_out: Tensor, weight: Tensor, order: str) -> Tensor:
    grad = _geometry.conv_weight_grad(inp, grad_out, weight.shape, order)
    return -_geometry.mask_gradient(grad, order)


def _conv_with_weight_tangent(x: Tensor, weight_tangent: Tensor, order: str,
                              adjoint: bool = False) -> Tensor:
    """Ṫx (or Ṫᵀx): the causal conv with the weight's tangent. M's fixed entries (the
    center's unit diagonal) are constants, so the tangent is masked to zero there."""
    tangent_m = _geometry.mask_gradient(weight_tangent, order)
    if adjoint:
        return _geometry.causal_conv_adjoint(x, tangent_m, order)
    return _geometry.causal_conv(x, tangent_m, order)


def _solve_tangent(solve, out, weight, order, rhs_tangent, weight_tangent, adjoint):
    # From T x = y (or Tᵀu = g): ẋ = T⁻¹(ẏ − Ṫx); one more solve and one causal conv.
    rhs = rhs_tangent if rhs_tangent is not None else torch.zeros_like(out)
    if weight_tangent is not None:
        rhs = rhs - _conv_with_weight_tangent(out, weight_tangent, order, adjoint)
    return _solve(solve, rhs, weight, order)


class _InvConv2d(torch.autograd.Function):
    """Autograd of ``x = T(W)⁻¹y`` for every mode: backward (DESIGN.md §2), forward-mode
    jvp, and torch.func transforms (vmap through the ops' batching rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y, weight, order):
        return torch.ops.inverseflow.inv_conv2d(y, weight, order)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, order = inputs
        ctx.order = order
        ctx.save_for_backward(output, weight)
        ctx.save_for_forward(output, weight)

    @staticmethod
    def backward(ctx, grad_x):
        # dL/dy = T⁻ᵀ g and dL/dW = −conv_weight_grad(x, T⁻ᵀ g).
        x, weight = ctx.saved_tensors
        grad_y = _solve(_InvConv2dTransposed, grad_x, weight, ctx.order)
        grad_w = _weight_grad(x, grad_y, weight, ctx.order) if ctx.needs_input_grad[1] else None
        return grad_y, grad_w, None

    @staticmethod
    def jvp(ctx, y_tangent, weight_tangent, _):
        x, weight = ctx.saved_tensors
        return _solve_tangent(_InvConv2d, x, weight, ctx.order, y_tangent, weight_tangent,
                              adjoint=False)


class _InvConv2dTransposed(torch.autograd.Function):
    """Autograd of ``u = T(W)⁻ᵀg``, the adjoint solve (so backward is differentiable in
    every mode too)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, weight, order):
        return torch.ops.inverseflow.inv_conv2d_transposed(g, weight, order)

    setup_context = _InvConv2d.setup_context

    @staticmethod
    def backward(ctx, grad_u):
        # dL/dg = T⁻¹ h and dL/dW = −conv_weight_grad(T⁻¹ h, u).
        u, weight = ctx.saved_tensors
        grad_g = _solve(_InvConv2d, grad_u, weight, ctx.order)
        grad_w = _weight_grad(grad_g, u, weight, ctx.order) if ctx.needs_input_grad[1] else None
        return grad_g, grad_w, None

    @staticmethod
    def jvp(ctx, g_tangent, weight_tangent, _):
        u, weight = ctx.saved_tensors
        return _solve_tangent(_InvConv2dTransposed, u, weight, ctx.order, g_tangent,
                              weight_tangent, adjoint=True)


def _autograd_kernel(op, function, public_name):
    """The ops' Autograd kernel (plain autograd, forward AD and torch.compile's tracing).

    torch.library's ``register_autograd`` builds a Function without a jvp (forward-mode
    tangents came out silently zero), so the ops route through the Functions above.
    Inside ``Function.forward`` both grad modes are off and the call goes below autograd.
    torch.func transforms must meet the Function in Python, before the dispatcher (the
    public functions do that); at this level it can no longer take part in them.
    """
    arg_name = "g" if function is _InvConv2dTransposed else "y"

    def kernel(keyset, a, weight, order):
        if torch._C._are_functorch_transforms_active():
            raise RuntimeError(
                f"torch.ops.inverseflow.{op.__name__.split('.')[0]} was called directly under a "
                f"torch.func transform (grad, jacrev, jacfwd, jvp, vmap, hessian); call "
                f"{public_name} instead, which supports them")
        if a.dtype in LOW_PRECISION:
            # Float32 copies, cast back: autograd records both casts, so the Function runs
            # in float32 and the gradients come back in the inputs' dtype (DESIGN §12).
            check_conv_args(a, weight, order, arg_name)
            return op(a.float(), weight.float(), order).to(a.dtype)
        if _needs_autograd(a, weight):
            return function.apply(a, weight, order)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, a, weight, order)
    return kernel


def _needs_autograd(a: Tensor, weight: Tensor) -> bool:
    """Whether a call must go through the Function: an input records a graph, or forward
    AD is on (a dual level is open, and we are not inside ``Function.forward``)."""
    if torch.is_grad_enabled() and (a.requires_grad or weight.requires_grad):
        return True
    return torch._C._is_fwd_grad_enabled() and _forward_ad._current_level >= 0


def _solve(function, a: Tensor, weight: Tensor, order: str) -> Tensor:
    """The op itself when no derivative is wanted (half the per-call overhead: sampling
    calls it once per layer at batch 1), else the Function; under torch.compile always
    the op, since Dynamo can't trace a Function with a custom jvp."""
    op = (torch.ops.inverseflow.inv_conv2d if function is _InvConv2d
          else torch.ops.inverseflow.inv_conv2d_transposed)
    if torch.compiler.is_compiling():
        return op(a, weight, order)
    if torch._C._are_functorch_transforms_active():
        # The Function meets torch.func here, before the op, so the op's float32 rules
        # (autocast, bfloat16/float16 inputs) are applied here too.
        return _precision.call_in_float32(function.apply, a, weight, order)
    if _needs_autograd(a, weight) and not _precision.needs_float32_copy(a, weight):
        return function.apply(a, weight, order)
    return op(a, weight, order)   # its autocast rule and low-precision path do the casts


def _batching_rule(op):
    """vmap: batch dims of the image fold into N; a batched weight runs one solve each."""
    def rule(info, in_dims, a, weight, order):
        a_dim, weight_dim = in_dims[0], in_dims[1]
        size = info.batch_size
        if weight_dim is None:
            a = a.movedim(a_dim, 0)
            out = op(a.reshape(size * a.shape[1], *a.shape[2:]), weight, order)
            return out.reshape(a.shape), 0
        weight = weight.movedim(weight_dim, 0)
        a = a.movedim(a_dim, 0) if a_dim is not None else a.expand(size, *a.shape)
        return torch.stack([op(a[i], weight[i], order) for i in range(size)]), 0
    return rule


for _name, _function, _public in (
        ("inv_conv2d", _InvConv2d, "inverseflow.inv_conv2d"),
        ("inv_conv2d_transposed", _InvConv2dTransposed,
         "inverseflow.ops.inv_conv2d_transposed")):
    _op = getattr(torch.ops.inverseflow, _name).default
    _LIB.impl(_name, _autograd_kernel(_op, _function, _public), "Autograd", with_keyset=True)
    torch.library.register_vmap(f"inverseflow::{_name}", _batching_rule(_op), lib=_LIB)
    _precision.register_float32_autocast(f"inverseflow::{_name}", _LIB)

# The causal conv is plain conv2d on a masked weight, so it is composite: autograd and
# torch.compile see through it to the native (oneDNN / cuDNN) convolution.
torch.library.define("inverseflow::causal_conv2d", "(Tensor x, Tensor weight, str order) -> Tensor")


@torch.library.impl("inverseflow::causal_conv2d", "CompositeImplicitAutograd")
def _causal_conv2d_impl(x, weight, order):
    check_conv_args(x, weight, order, "x")
    if x.dtype in LOW_PRECISION:   # float32 like the solve it inverts, then back (§12)
        x32, weight32 = x.float(), weight.float()
        return _geometry.causal_conv(x32, _geometry.masked_weight(weight32, order),
                                     order).to(x.dtype)
    return _geometry.causal_conv(x, _geometry.masked_weight(weight, order), order)


# Under autocast the composite would run its conv2d in low precision; this rule (on the
# Autocast key, above the decomposition) runs all of it in float32 instead.
_precision.register_float32_autocast("inverseflow::causal_conv2d", _LIB)


def inv_conv2d(y: Tensor, weight: Tensor, order: str = "TL") -> Tensor:
    """The unique ``x`` with ``causal_conv2d(x, weight, order) == y``.

    The inverse of the masked, corner-padded convolution, computed by the parallel
    wavefront solve (``H + W − 1`` dependent steps) of Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows",
    AISTATS 2025. The map's log-determinant is 0. Differentiable in ``y`` and ``weight``
    in every mode (backward: one transposed solve plus the standard conv weight gradient,
    saving only ``x`` and ``weight``; forward mode; ``torch.func`` transforms and
    ``vmap``); works under ``torch.compile(fullgraph=True)``, static or dynamic shapes.

    Args:
        y: (N, C, H, W) float32 or float64, on CPU or CUDA; non-contiguous is fine.
            bfloat16/float16 are computed in float32 and returned in their dtype; under
            ``torch.autocast`` the result is float32.
        weight: (C, C, kh, kw), or (C, C/4, kh, kw) for ``order="quad"``; same dtype and
            device as ``y``. The op applies the mask M itself (the centre tap becomes unit
            lower triangular), so any values are valid; masked entries get a zero gradient.
        order: ``"TL"``, ``"TR"``, ``"BL"``, ``"BR"`` (the padded corner) or ``"quad"``
            (four channel groups, solved from TL, TR, BL, BR).

    Returns:
        ``x``, shaped and typed like ``y`` (contiguous).

    Raises:
        TypeError: ``y`` or ``weight`` not a tensor, an unsupported dtype, a dtype
            mismatch, or ``order`` not a str.
        ValueError: wrong rank or shape, an unknown ``order``, C not divisible by 4 for
            ``quad``, or ``y`` and ``weight`` on different devices.

    The inverse is an IIR filter: with large off-centre taps ``x`` can grow exponentially
    across the image, and inf/NaN propagate (see ``InvConv2d.stability_bound``).
    """
    check_conv_args(y, weight, order, "y")
    if torch.compiler.is_compiling():   # Dynamo can't tell the Function classes apart
        return torch.ops.inverseflow.inv_conv2d(y, weight, order)
    return _solve(_InvConv2d, y, weight, order)


def inv_conv2d_transposed(g: Tensor, weight: Tensor, order: str = "TL") -> Tensor:
    """``u = T(weight)⁻ᵀ g``: the adjoint of :func:`inv_conv2d` (its backward's solve).

    The same wavefront solve run from the opposite corner with the channel-transposed
    kernel (Nagar & Varma, AISTATS 2025, §3). Arguments, dtypes, errors and derivatives
    are those of :func:`inv_conv2d`, with ``g`` (N, C, H, W) in place of ``y``; returns
    ``u`` shaped like ``g``.
    """
    check_conv_args(g, weight, order, "g")
    if torch.compiler.is_compiling():   # (`function is _InvConv2d` broke fullgraph here)
        return torch.ops.inverseflow.inv_conv2d_transposed(g, weight, order)
    return _solve(_InvConv2dTransposed, g, weight, order)


def causal_conv2d(x: Tensor, weight: Tensor, order: str = "TL") -> Tensor:
    """``conv2d(pad(x), M(weight))``: the invertible, corner-padded masked convolution.

    Pads ``k − 1`` rows and columns on the corner's two sides and convolves with the
    masked weight ``M(weight)``, whose centre tap is unit lower triangular, so the map is
    triangular with unit diagonal in the corner's pixel order: invertible for every
    weight, with log-determinant 0 (:func:`inv_conv2d` is its inverse). It is the
    sampling pass of an Inverse-Flow model (Nagar & Varma, AISTATS 2025). A composite op:
    plain ``conv2d`` (oneDNN/cuDNN) under autograd, ``torch.compile`` and ``torch.export``.

    Args:
        x: (N, C, H, W) float32 or float64 (bfloat16/float16 computed in float32).
        weight: (C, C, kh, kw), or (C, C/4, kh, kw) for ``order="quad"``.
        order: ``"TL"``, ``"TR"``, ``"BL"``, ``"BR"`` or ``"quad"``.

    Returns:
        ``y``, shaped like ``x``. Differentiable in both (masked entries: zero gradient).

    Raises:
        TypeError, ValueError: as :func:`inv_conv2d`, naming ``x``.
    """
    check_conv_args(x, weight, order, "x")
    return torch.ops.inverseflow.causal_conv2d(x, weight, order)
