"""The torch ops ``inverseflow::inv_conv{1,2,3}d``, their transposed solves and
``inverseflow::causal_conv{1,2,3}d``.

Registered once, here, with ``torch.library``, by one factory for every dimension
(:func:`_define_ops`): kernels (CPU, CUDA) through :mod:`inverseflow.ops._dispatch`, fake
kernels for ``torch.compile``, a batching rule for ``vmap``, and autograd following
DESIGN.md §2 (docs/nd-design.md for 1-D and 3-D): the backward of the inverse is a
transposed solve plus the standard conv weight gradient, so it saves only ``x`` and
``weight``; the forward-mode tangent is one more solve plus a causal conv with the weight's
tangent. All ops compute in float32 at the least (DESIGN.md §12, :mod:`._precision`): an
autocast rule on each op, and float32 copies for bfloat16/float16 inputs. Every dimension
uses the one geometry of :mod:`._geometry`.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import _dispatch, _geometry, _precision, _weight_cache
from ._precision import LOW_PRECISION
from ._validate import check_conv_args


def _empty_output(y: Tensor) -> Tensor:
    return torch.empty_like(y, memory_format=torch.contiguous_format)


_SOLVE_SCHEMA = "(Tensor {arg}, Tensor weight, str order) -> Tensor"
_LIB = torch.library.Library("inverseflow", "IMPL")


def _solve_kernel(direction, arg_name, dims):
    def kernel(y, weight, order):
        if y.dim() != dims + 2:
            # _dispatch.solve reads the dimension from y: data of another rank must not run
            # another dimension's solve under this op's name.
            check_conv_args(y, weight, order, arg_name, dims)
        if y.dtype in LOW_PRECISION:   # DESIGN §12: computed in float32, returned in y's dtype
            check_conv_args(y, weight, order, arg_name, dims)
            return _dispatch.solve(y.float(), weight.float(), order, direction)[0].to(y.dtype)
        return _dispatch.solve(y, weight, order, direction)[0]

    def fake(y, weight, order):
        check_conv_args(y, weight, order, arg_name, dims)
        return _empty_output(y)
    return kernel, fake


def _weight_grad(geometry, inp: Tensor, grad_out: Tensor, weight: Tensor, order: str) -> Tensor:
    grad = geometry.conv_weight_grad(inp, grad_out, weight.shape, order)
    return -geometry.mask_gradient(grad, order)


def _conv_with_weight_tangent(geometry, x: Tensor, weight_tangent: Tensor, order: str,
                              adjoint: bool = False) -> Tensor:
    """Ṫx (or Ṫᵀx): the causal conv with the weight's tangent. M's fixed entries (the
    center's unit diagonal) are constants, so the tangent is masked to zero there."""
    tangent_m = geometry.mask_gradient(weight_tangent, order)
    if adjoint:
        return geometry.causal_conv_adjoint(x, tangent_m, order)
    return geometry.causal_conv(x, tangent_m, order)


def _solve_tangent(solve, out, weight, order, rhs_tangent, weight_tangent, adjoint):
    # From T x = y (or Tᵀu = g): ẋ = T⁻¹(ẏ − Ṫx); one more solve and one causal conv.
    rhs = rhs_tangent if rhs_tangent is not None else torch.zeros_like(out)
    if weight_tangent is not None:
        rhs = rhs - _conv_with_weight_tangent(solve.geometry, out, weight_tangent, order, adjoint)
    return _solve(solve, rhs, weight, order)


def _define_ops(dims: int, geometry) -> tuple[type, type]:
    """Defines and registers ``inv_conv{dims}d``, ``inv_conv{dims}d_transposed`` and
    ``causal_conv{dims}d`` in the ``inverseflow`` namespace; returns the autograd Functions
    of the solve and of the transposed solve (each knows its op, data argument's name,
    dimension and geometry)."""
    solve_name, transposed_name = f"inv_conv{dims}d", f"inv_conv{dims}d_transposed"
    torch.library.define(f"inverseflow::{solve_name}", _SOLVE_SCHEMA.format(arg="y"))
    torch.library.define(f"inverseflow::{transposed_name}", _SOLVE_SCHEMA.format(arg="g"))
    for name, direction, arg in ((solve_name, _dispatch.SOLVE, "y"),
                                 (transposed_name, _dispatch.TRANSPOSED, "g")):
        kernel, fake = _solve_kernel(direction, arg, dims)
        for device in ("CPU", "CUDA"):
            torch.library.impl(f"inverseflow::{name}", device, kernel, lib=_LIB)
        torch.library.register_fake(f"inverseflow::{name}", fake, lib=_LIB)
    solve_op = getattr(torch.ops.inverseflow, solve_name)
    transposed_op = getattr(torch.ops.inverseflow, transposed_name)

    class InvConv(torch.autograd.Function):
        """Autograd of ``x = T(W)⁻¹y`` for every mode: backward (DESIGN.md §2), forward-mode
        jvp, and torch.func transforms (vmap through the ops' batching rule)."""

        generate_vmap_rule = True

        @staticmethod
        def forward(y, weight, order):
            return solve_op(y, weight, order)

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
            grad_y = _solve(InvConvTransposed, grad_x, weight, ctx.order)
            grad_w = (_weight_grad(geometry, x, grad_y, weight, ctx.order)
                      if ctx.needs_input_grad[1] else None)
            return grad_y, grad_w, None

        @staticmethod
        def jvp(ctx, y_tangent, weight_tangent, _):
            x, weight = ctx.saved_tensors
            return _solve_tangent(InvConv, x, weight, ctx.order, y_tangent, weight_tangent,
                                  adjoint=False)

    class InvConvTransposed(torch.autograd.Function):
        """Autograd of ``u = T(W)⁻ᵀg``, the adjoint solve (so backward is differentiable in
        every mode too)."""

        generate_vmap_rule = True

        @staticmethod
        def forward(g, weight, order):
            return transposed_op(g, weight, order)

        setup_context = InvConv.setup_context

        @staticmethod
        def backward(ctx, grad_u):
            # dL/dg = T⁻¹ h and dL/dW = −conv_weight_grad(T⁻¹ h, u).
            u, weight = ctx.saved_tensors
            grad_g = _solve(InvConv, grad_u, weight, ctx.order)
            grad_w = (_weight_grad(geometry, grad_g, u, weight, ctx.order)
                      if ctx.needs_input_grad[1] else None)
            return grad_g, grad_w, None

        @staticmethod
        def jvp(ctx, g_tangent, weight_tangent, _):
            u, weight = ctx.saved_tensors
            return _solve_tangent(InvConvTransposed, u, weight, ctx.order, g_tangent,
                                  weight_tangent, adjoint=True)

    for function, op_name, op, arg, public in (
            (InvConv, solve_name, solve_op, "y", f"inverseflow.{solve_name}"),
            (InvConvTransposed, transposed_name, transposed_op, "g",
             f"inverseflow.ops.{transposed_name}")):
        function.__name__ = function.__qualname__ = (
            f"_InvConv{dims}d" + ("Transposed" if arg == "g" else ""))
        function.op, function.arg_name, function.dims, function.geometry = op, arg, dims, geometry
        _LIB.impl(op_name, _autograd_kernel(op.default, function, public), "Autograd",
                  with_keyset=True)
        torch.library.register_vmap(f"inverseflow::{op_name}", _batching_rule(op.default),
                                    lib=_LIB)
        _precision.register_float32_autocast(f"inverseflow::{op_name}", _LIB)

    # The causal conv is plain convNd on a masked weight, so it is composite: autograd and
    # torch.compile see through it to the native (oneDNN / cuDNN) convolution.
    conv_name = f"inverseflow::causal_conv{dims}d"
    torch.library.define(conv_name, "(Tensor x, Tensor weight, str order) -> Tensor")
    _CAUSAL_CONV_BODY[dims] = _causal_conv_impl(dims, geometry)
    torch.library.impl(conv_name, "CompositeImplicitAutograd", _CAUSAL_CONV_BODY[dims],
                       lib=_LIB)
    # Under autocast the composite would run its conv in low precision; this rule (on the
    # Autocast key, above the decomposition) runs all of it in float32 instead.
    _precision.register_float32_autocast(conv_name, _LIB)
    return InvConv, InvConvTransposed


def _causal_conv_impl(dims: int, geometry):
    """The composite op's body (``CompositeImplicitAutograd``): the causal convolution as
    torch code that autograd, ``torch.compile`` and ``torch.export`` see through."""
    def impl(x, weight, order):
        check_conv_args(x, weight, order, "x", dims)
        if x.dtype in LOW_PRECISION:   # float32 like the solve it inverts, then back (§12)
            x32, weight32 = x.float(), weight.float()
            return geometry.causal_conv(x32, geometry.masked_weight(weight32, order), order,
                                        unit_center=True).to(x.dtype)
        return geometry.causal_conv(x, geometry.masked_weight(weight, order), order,
                                    unit_center=True)
    return impl


_CAUSAL_CONV_BODY: dict = {}   # dims -> the composite causal conv's body


def _causal_conv(dims: int, x: Tensor, weight: Tensor, order: str) -> Tensor:
    """The public causal conv. A composite op's body is what the dispatcher would run for a
    plain eager call anyway, so such a call (sampling, evaluation: no gradient, no autocast,
    no tracing, no torch.func, plain tensors) runs the body directly: the dispatcher's
    Python round trip was most of a batch-1 call (76 µs against conv2d's 6 µs, issue 18).
    Everything else goes through the op, where autocast and tracing meet it."""
    if (isinstance(x, Tensor) and isinstance(weight, Tensor)
            and _weight_cache.plain_eager(x, weight)
            and x.device.type in _precision.AUTOCAST_DEVICES   # cpu, cuda: the kernels'
            and not torch.is_autocast_enabled(x.device.type)
            and not torch._C._is_torch_function_mode_enabled()):
        return _CAUSAL_CONV_BODY[dims](x, weight, order)   # it checks the arguments
    check_conv_args(x, weight, order, "x", dims)
    return getattr(torch.ops.inverseflow, f"causal_conv{dims}d")(x, weight, order)


def _autograd_kernel(op, function, public_name):
    """The ops' Autograd kernel (plain autograd, forward AD and torch.compile's tracing).

    torch.library's ``register_autograd`` builds a Function without a jvp (forward-mode
    tangents came out silently zero), so the ops route through the Functions above.
    Inside ``Function.forward`` both grad modes are off and the call goes below autograd.
    torch.func transforms must meet the Function in Python, before the dispatcher (the
    public functions do that); at this level it can no longer take part in them.
    """
    arg_name, dims = function.arg_name, function.dims

    def kernel(keyset, a, weight, order):
        if torch._C._are_functorch_transforms_active():
            raise RuntimeError(
                f"torch.ops.inverseflow.{op.__name__.split('.')[0]} was called directly under a "
                f"torch.func transform (grad, jacrev, jacfwd, jvp, vmap, hessian); call "
                f"{public_name} instead, which supports them")
        if a.dtype in LOW_PRECISION:
            # Float32 copies, cast back: autograd records both casts, so the Function runs
            # in float32 and the gradients come back in the inputs' dtype (DESIGN §12).
            check_conv_args(a, weight, order, arg_name, dims)
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
    op = function.op
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
    """vmap: batch dims of the data fold into N; a batched weight runs one solve each."""
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


_InvConv2d, _InvConv2dTransposed = _define_ops(2, _geometry)
_InvConv1d, _InvConv1dTransposed = _define_ops(1, _geometry)
_InvConv3d, _InvConv3dTransposed = _define_ops(3, _geometry)


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
    return _causal_conv(2, x, weight, order)


def inv_conv1d(y: Tensor, weight: Tensor, order: str = "L") -> Tensor:
    """The unique ``x`` with ``causal_conv1d(x, weight, order) == y``: the 1-D inverse
    convolution (docs/nd-design.md).

    The inverse of the masked, end-padded 1-D convolution (a causal filter along W), solved
    along the sequence (``W`` dependent steps; the parallelism is across the batch and the
    channels), as :func:`inv_conv2d` is for images (Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows",
    AISTATS 2025). The map's log-determinant is 0. Differentiable in ``y`` and ``weight``
    in every mode (backward: one transposed solve plus the standard ``conv1d`` weight
    gradient); works under ``torch.compile(fullgraph=True)`` and ``vmap``.

    Args:
        y: (N, C, W) float32 or float64, on CPU or CUDA; non-contiguous is fine.
            bfloat16/float16 are computed in float32 and returned in their dtype; under
            ``torch.autocast`` the result is float32.
        weight: (C, C, kw), or (C, C/2, kw) for ``order="pair"``; same dtype and device as
            ``y``. The op applies the mask M itself (the centre tap becomes unit lower
            triangular), so any values are valid; masked entries get a zero gradient.
        order: ``"L"`` (pad on the left: each position reads the ones before it), ``"R"``
            (pad on the right) or ``"pair"`` (two channel groups, solved from L and R).

    Returns:
        ``x``, shaped and typed like ``y`` (contiguous).

    Raises:
        TypeError: ``y`` or ``weight`` not a tensor, an unsupported dtype, a dtype
            mismatch, or ``order`` not a str.
        ValueError: wrong rank or shape, an unknown ``order`` (a 2-D or 3-D order
            included), C not divisible by 2 for ``pair``, or different devices.

    Like every causal inverse, ``x`` can grow exponentially along the sequence when the
    off-centre taps are large (see ``InvConv1d.stability_bound``); inf/NaN propagate.
    """
    check_conv_args(y, weight, order, "y", dims=1)
    if torch.compiler.is_compiling():
        return torch.ops.inverseflow.inv_conv1d(y, weight, order)
    return _solve(_InvConv1d, y, weight, order)


def inv_conv1d_transposed(g: Tensor, weight: Tensor, order: str = "L") -> Tensor:
    """``u = T(weight)⁻ᵀ g``: the adjoint of :func:`inv_conv1d` (its backward's solve).

    The same solve run from the opposite end with the channel-transposed kernel (Nagar &
    Varma, AISTATS 2025, §3). Arguments, dtypes, errors and derivatives are those of
    :func:`inv_conv1d`, with ``g`` (N, C, W) in place of ``y``; returns ``u`` shaped like
    ``g``.
    """
    check_conv_args(g, weight, order, "g", dims=1)
    if torch.compiler.is_compiling():
        return torch.ops.inverseflow.inv_conv1d_transposed(g, weight, order)
    return _solve(_InvConv1dTransposed, g, weight, order)


def causal_conv1d(x: Tensor, weight: Tensor, order: str = "L") -> Tensor:
    """``conv1d(pad(x), M(weight))``: the invertible, end-padded masked 1-D convolution.

    Pads ``kw − 1`` zeros on the order's side and convolves with the masked weight, whose
    centre tap is unit lower triangular, so the map is triangular with unit diagonal:
    invertible for every weight, log-determinant 0 (:func:`inv_conv1d` is its inverse;
    Nagar & Varma, AISTATS 2025, in one dimension). A composite op: plain ``conv1d`` under
    autograd, ``torch.compile`` and ``torch.export``.

    Args:
        x: (N, C, W) float32 or float64 (bfloat16/float16 computed in float32).
        weight: (C, C, kw), or (C, C/2, kw) for ``order="pair"``.
        order: ``"L"``, ``"R"`` or ``"pair"``.

    Returns:
        ``y``, shaped like ``x``. Differentiable in both (masked entries: zero gradient).

    Raises:
        TypeError, ValueError: as :func:`inv_conv1d`, naming ``x``.
    """
    return _causal_conv(1, x, weight, order)


def inv_conv3d(y: Tensor, weight: Tensor, order: str = "NTL") -> Tensor:
    """The unique ``x`` with ``causal_conv3d(x, weight, order) == y``: the 3-D inverse
    convolution (docs/nd-design.md).

    The inverse of the masked, corner-padded 3-D convolution, computed by the wavefront
    solve over the planes ``d + h + w = const`` (``D + H + W − 2`` dependent steps for
    ``D·H·W`` voxels) of Nagar & Varma, "Parallel Backpropagation for Inverse of a
    Convolution with Application to Normalizing Flows", AISTATS 2025, carried to volumes.
    The map's log-determinant is 0. Differentiable in ``y`` and ``weight`` in every mode
    (backward: one transposed solve plus the standard ``conv3d`` weight gradient); works
    under ``torch.compile(fullgraph=True)`` and ``vmap``.

    Args:
        y: (N, C, D, H, W) float32 or float64, on CPU or CUDA; non-contiguous is fine.
            bfloat16/float16 are computed in float32 and returned in their dtype; under
            ``torch.autocast`` the result is float32.
        weight: (C, C, kd, kh, kw), or (C, C/8, kd, kh, kw) for ``order="oct"``; same
            dtype and device as ``y``. The op applies the mask M itself, so any values are
            valid; masked entries get a zero gradient.
        order: the padded corner, one letter per axis (depth ``N``ear/``F``ar, height
            ``T``op/``B``ottom, width ``L``eft/``R``ight): ``"NTL"``, ``"NTR"``, ``"NBL"``,
            ``"NBR"``, ``"FTL"``, ``"FTR"``, ``"FBL"``, ``"FBR"``; or ``"oct"`` (eight
            channel groups, group g solved from the g-th corner in that list).

    Returns:
        ``x``, shaped and typed like ``y`` (contiguous).

    Raises:
        TypeError: ``y`` or ``weight`` not a tensor, an unsupported dtype, a dtype
            mismatch, or ``order`` not a str.
        ValueError: wrong rank or shape, an unknown ``order`` (a 1-D or 2-D order
            included), C not divisible by 8 for ``oct``, or different devices.

    Like every causal inverse, ``x`` can grow exponentially across the volume when the
    off-centre taps are large (see ``InvConv3d.stability_bound``); inf/NaN propagate.
    """
    check_conv_args(y, weight, order, "y", dims=3)
    if torch.compiler.is_compiling():
        return torch.ops.inverseflow.inv_conv3d(y, weight, order)
    return _solve(_InvConv3d, y, weight, order)


def inv_conv3d_transposed(g: Tensor, weight: Tensor, order: str = "NTL") -> Tensor:
    """``u = T(weight)⁻ᵀ g``: the adjoint of :func:`inv_conv3d` (its backward's solve).

    The same wavefront solve run from the opposite corner with the channel-transposed
    kernel (Nagar & Varma, AISTATS 2025, §3). Arguments, dtypes, errors and derivatives
    are those of :func:`inv_conv3d`, with ``g`` (N, C, D, H, W) in place of ``y``; returns
    ``u`` shaped like ``g``.
    """
    check_conv_args(g, weight, order, "g", dims=3)
    if torch.compiler.is_compiling():
        return torch.ops.inverseflow.inv_conv3d_transposed(g, weight, order)
    return _solve(_InvConv3dTransposed, g, weight, order)


def causal_conv3d(x: Tensor, weight: Tensor, order: str = "NTL") -> Tensor:
    """``conv3d(pad(x), M(weight))``: the invertible, corner-padded masked 3-D convolution.

    Pads ``k − 1`` zeros on the corner's side of each axis and convolves with the masked
    weight, whose centre tap is unit lower triangular, so the map is triangular with unit
    diagonal in the corner's voxel order: invertible for every weight, log-determinant 0
    (:func:`inv_conv3d` is its inverse; Nagar & Varma, AISTATS 2025, in three dimensions).
    A composite op: plain ``conv3d`` under autograd, ``torch.compile`` and ``torch.export``.

    Args:
        x: (N, C, D, H, W) float32 or float64 (bfloat16/float16 computed in float32).
        weight: (C, C, kd, kh, kw), or (C, C/8, kd, kh, kw) for ``order="oct"``.
        order: one of the eight corners (``"NTL"`` … ``"FBR"``) or ``"oct"``.

    Returns:
        ``y``, shaped like ``x``. Differentiable in both (masked entries: zero gradient).

    Raises:
        TypeError, ValueError: as :func:`inv_conv3d`, naming ``x``.
    """
    return _causal_conv(3, x, weight, order)
