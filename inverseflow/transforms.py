"""The inverse convolution as a ``torch.distributions.Transform`` (DESIGN.md §9).

A transform in :class:`torch.distributions.TransformedDistribution` maps the base (latent)
sample to the data. :class:`InvConv2dTransform` therefore *samples* with the plain causal
convolution and *scores* (``log_prob``) with its inverse, the Inverse-Flow placement of
Nagar & Varma, "Parallel Backpropagation for Inverse of a Convolution with Application to
Normalizing Flows" (AISTATS 2025). Its ``.inv`` is the FInC Flow / Emerging-convolution
placement (Kallappa et al., 2023; Hoogeboom et al., ICML 2019): a plain convolution on the
density pass and the solve on sampling.

:class:`InvConv2dModule` is the same transform as an ``nn.Module`` that owns its weight,
so that optimizers and ``pyro.module`` see the parameter (the way Pyro's
``TransformModule`` combines the two base classes; Pyro is not imported here).
:class:`InvConv1dTransform` / :class:`InvConv1dModule` (sequences) and
:class:`InvConv3dTransform` / :class:`InvConv3dModule` (volumes) are the same in 1-D and 3-D.

Both are log-det free: the masked center tap is unit lower triangular, so
``log|det J| = 0`` for every weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import constraints
from torch.distributions.transforms import Transform

from .nn import InvConv1d, InvConv2d, InvConv3d
from .nn._validate import positive_int
from .ops import (causal_conv1d, causal_conv2d, causal_conv3d, inv_conv1d, inv_conv2d,
                  inv_conv3d)
from .ops._validate import FLOAT_DTYPES, GROUP_PATTERN, KERNEL_LAYOUT, check_order

EVENT_DIM = 3  # (C, H, W): one image is one event (a sequence (C, W) in 1-D, a volume in 3-D)
_EVENT_LAYOUT = {1: "(..., C, W)", 2: "(..., C, H, W)", 3: "(..., C, D, H, W)"}


def _check_weight(weight, order: str, dims: int = 2) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight must be float32 or float64, got {weight.dtype}")
    kernel, pattern, groups = KERNEL_LAYOUT[dims], GROUP_PATTERN[dims], 2 ** dims
    if weight.dim() != dims + 2:
        raise ValueError(f"weight must be {dims + 2}-D (C, C, {kernel}), or (C, C/{groups}, "
                         f"{kernel}) for order={pattern!r}; got shape {tuple(weight.shape)}")
    out_channels, in_channels = weight.shape[:2]
    if min(weight.shape[2:]) < 1 or out_channels < 1:
        raise ValueError(f"weight must have at least one channel and a {'x'.join('1' * dims)} "
                         f"kernel; got shape {tuple(weight.shape)}")
    expected = out_channels // groups if order == pattern else out_channels
    if (order == pattern and out_channels % groups) or in_channels != expected:
        need = (f"(C, C/{groups}, {kernel}) with C divisible by {groups}" if order == pattern
                else f"(C, C, {kernel})")
        raise ValueError(f"weight must have shape {need} for order={order!r}; got "
                         f"{tuple(weight.shape)}")


class _InvConvTransform(Transform):
    """What the 1-D, 2-D and 3-D transforms share; a subclass sets ``dims``, the event
    constraints and the two ops."""

    dims = 2
    bijective = True
    sign = +1

    def __init__(self, weight: torch.Tensor, order: str, cache_size: int = 0):
        check_order(order, self.dims)
        _check_weight(weight, order, self.dims)
        super().__init__(cache_size=cache_size)
        # Assigned after Transform/Module initialisation so that the Module classes
        # register a Parameter here.
        self.weight = weight
        self.order = order

    def _apply_images(self, op, images: torch.Tensor, name: str) -> torch.Tensor:
        event_dim, layout = self.dims + 1, _EVENT_LAYOUT[self.dims]
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() < event_dim:
            raise ValueError(f"{name} must be {layout} with at least {event_dim} dimensions; "
                             f"got shape {tuple(images.shape)}")
        channels = self.weight.shape[0]
        if images.shape[-event_dim] != channels:
            # The weight is this transform's own: a mismatch is the images' fault.
            raise ValueError(f"{name} must have {channels} channels (the weight's, "
                             f"{tuple(self.weight.shape)}) in dimension -{event_dim} of "
                             f"{layout}; got shape {tuple(images.shape)}")
        # The ops take (N, C, ...): fold every batch dimension into N and unfold afterwards.
        # The batch size is given, not -1, which reshape cannot infer for empty events.
        event_shape = images.shape[-event_dim:]
        flat = images.reshape(math.prod(images.shape[:-event_dim]), *event_shape)
        return op(flat, self.weight, self.order).reshape(images.shape)

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        return self._apply_images(self._conv_op, z, "z")

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_images(self._solve_op, x, "x")

    def log_abs_det_jacobian(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Zeros of the batch shape (``z.shape`` without the event's dimensions): the masked
        centre tap makes ``log|det J| = 0``."""
        return z.new_zeros(z.shape[:-(self.dims + 1)])

    def with_cache(self, cache_size: int = 1):
        """The same transform (sharing the weight) with ``cache_size`` 0 or 1."""
        if self._cache_size == cache_size:
            return self
        # Shares the weight (a module's Parameter included), so gradients still reach it.
        return _TRANSFORMS[self.dims](self.weight, self.order, cache_size=cache_size)

    def __eq__(self, other) -> bool:
        return (type(other) is type(self) and other.weight is self.weight
                and other.order == self.order)

    # Transform defines __eq__, which makes instances unhashable; equality above is by
    # identity of the weight, so its id is a consistent hash (sets and memo dicts of
    # modules, as nn.Module.named_parameters uses, need it).
    def __hash__(self) -> int:
        return hash((id(self.weight), self.order))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(weight={tuple(self.weight.shape)}, "
                f"order={self.order!r})")


class InvConv2dTransform(_InvConvTransform):
    """``x = causal_conv2d(z, weight, order)``; its inverse ``z = inv_conv2d(x, weight, order)``.

    Bijective on images ``(..., C, H, W)`` (any number of batch dimensions), with
    ``log|det J| = 0``. In ``TransformedDistribution(base, [InvConv2dTransform(w)])``
    sampling convolves and ``log_prob`` solves (Inverse-Flow, Nagar & Varma, AISTATS 2025);
    ``InvConv2dTransform(w).inv`` is the FInC/Emerging placement (solve on sampling).

    Args:
        weight: ``(C, C, kh, kw)``, or ``(C, C/4, kh, kw)`` for ``order="quad"``; float32
            or float64. The ops apply the mask, so any values are valid. Gradients flow to it.
        order: ``"TL"``, ``"TR"``, ``"BL"``, ``"BR"`` (the padded corner) or ``"quad"``.
        cache_size: 0 or 1, as for every ``Transform``.

    Shapes: images ``(..., C, H, W)`` in and out (the batch dimensions are folded into
    one for the ops); ``log_abs_det_jacobian`` returns zeros of the batch shape.

    Raises:
        TypeError: ``weight`` not a float32/float64 tensor, or images not a tensor.
        ValueError: a ``weight`` shape that does not fit ``order``, an unknown ``order``,
            or images with fewer than 3 dimensions or the wrong channel count.
    """

    dims = 2
    domain = constraints.independent(constraints.real, EVENT_DIM)
    codomain = constraints.independent(constraints.real, EVENT_DIM)
    _conv_op = staticmethod(causal_conv2d)
    _solve_op = staticmethod(inv_conv2d)

    def __init__(self, weight: torch.Tensor, order: str = "TL", cache_size: int = 0):
        super().__init__(weight, order, cache_size=cache_size)


class InvConv1dTransform(_InvConvTransform):
    """``x = causal_conv1d(z, weight, order)``; its inverse ``z = inv_conv1d(x, weight, order)``:
    :class:`InvConv2dTransform` for sequences.

    Bijective on sequences ``(..., C, W)`` (any number of batch dimensions), with
    ``log|det J| = 0``; sampling convolves and ``log_prob`` solves (the Inverse-Flow
    placement of Nagar & Varma, AISTATS 2025), ``.inv`` is the FInC/Emerging placement.

    Args:
        weight: ``(C, C, kw)``, or ``(C, C/2, kw)`` for ``order="pair"``; float32 or float64.
        order: ``"L"``, ``"R"`` (the padded end) or ``"pair"``.
        cache_size: 0 or 1, as for every ``Transform``.

    Raises ``TypeError``/``ValueError`` as :class:`InvConv2dTransform`, for ``(..., C, W)``.
    """

    dims = 1
    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.independent(constraints.real, 2)
    _conv_op = staticmethod(causal_conv1d)
    _solve_op = staticmethod(inv_conv1d)

    def __init__(self, weight: torch.Tensor, order: str = "L", cache_size: int = 0):
        super().__init__(weight, order, cache_size=cache_size)


class InvConv3dTransform(_InvConvTransform):
    """``x = causal_conv3d(z, weight, order)``; its inverse ``z = inv_conv3d(x, weight, order)``:
    :class:`InvConv2dTransform` for volumes.

    Bijective on volumes ``(..., C, D, H, W)`` (any number of batch dimensions), with
    ``log|det J| = 0``; sampling convolves and ``log_prob`` solves (the Inverse-Flow
    placement of Nagar & Varma, AISTATS 2025), ``.inv`` is the FInC/Emerging placement.

    Args:
        weight: ``(C, C, kd, kh, kw)``, or ``(C, C/8, kd, kh, kw)`` for ``order="oct"``;
            float32 or float64.
        order: one of the corners ``"NTL"`` … ``"FBR"`` or ``"oct"`` (as
            :func:`inverseflow.inv_conv3d`).
        cache_size: 0 or 1, as for every ``Transform``.

    Raises ``TypeError``/``ValueError`` as :class:`InvConv2dTransform`, for
    ``(..., C, D, H, W)``.
    """

    dims = 3
    domain = constraints.independent(constraints.real, 4)
    codomain = constraints.independent(constraints.real, 4)
    _conv_op = staticmethod(causal_conv3d)
    _solve_op = staticmethod(inv_conv3d)

    def __init__(self, weight: torch.Tensor, order: str = "NTL", cache_size: int = 0):
        super().__init__(weight, order, cache_size=cache_size)


_TRANSFORMS = {1: InvConv1dTransform, 2: InvConv2dTransform, 3: InvConv3dTransform}


class _InvConvModule:
    """What the Module forms share: the weight initialised by the layer of the same
    dimension, identity semantics, and nn.Module's repr."""

    _layer: type

    def __init__(self, channels: int, kernel_size, order: str, init_scale: float,
                 cache_size: int):
        channels = positive_int(channels, "channels")
        # The layer validates kernel_size/order with its own messages and owns the
        # initialisation; borrowing it keeps the two initialised the same way.
        weight = self._layer(channels, kernel_size, order, init_scale=init_scale).weight
        super().__init__(nn.Parameter(weight.detach().clone()), order, cache_size=cache_size)

    # The module is its own identity: two modules are never "the same transform", even with
    # equal weights, and nn.Module containers hash modules by identity.
    def __eq__(self, other) -> bool:
        return self is other

    def __hash__(self) -> int:
        return object.__hash__(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The transform ``z -> x`` (kept for code that calls ``.forward`` directly)."""
        return self._call(z)

    __repr__ = nn.Module.__repr__

    def extra_repr(self) -> str:
        return f"order={self.order!r}, weight={tuple(self.weight.shape)}"


class InvConv2dModule(_InvConvModule, InvConv2dTransform, nn.Module):
    """:class:`InvConv2dTransform` as an ``nn.Module`` that owns its weight (the Inverse-Flow
    layer of Nagar & Varma, AISTATS 2025, for ``torch.distributions`` and Pyro).

    The weight is initialised like :class:`inverseflow.nn.InvConv2d` (identity plus small
    noise). Use it in ``torch.distributions`` or ``pyro.distributions.TransformedDistribution``
    and register it with ``pyro.module(name, module)`` or pass ``module.parameters()`` to an
    optimizer. Calling the module applies the transform (``z -> x``, the plain convolution);
    ``.inv`` is the inverse transform, sharing the parameter.

    Args:
        channels: C; divisible by 4 for ``order="quad"``.
        kernel_size: ``k`` or ``(kh, kw)``.
        order: ``"quad"`` (default, as in ``InvConv2d``), ``"TL"``, ``"TR"``, ``"BL"``, ``"BR"``.
        init_scale: scale of the off-center taps' initial noise, as in ``InvConv2d``.

    Raises ``ValueError`` for a non-positive ``channels`` and as :class:`InvConv2d` for the
    other arguments; images are checked as in :class:`InvConv2dTransform`.
    """

    _layer = InvConv2d

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "quad",
                 init_scale: float = 0.1, cache_size: int = 0):
        super().__init__(channels, kernel_size, order, init_scale, cache_size)


class InvConv1dModule(_InvConvModule, InvConv1dTransform, nn.Module):
    """:class:`InvConv1dTransform` as an ``nn.Module`` that owns its weight (the Inverse-Flow
    layer of Nagar & Varma, AISTATS 2025, on sequences), as :class:`InvConv2dModule`.

    Args:
        channels: C; even for ``order="pair"``.
        kernel_size: ``k`` or ``(kw,)``.
        order: ``"pair"`` (default, as in ``InvConv1d``), ``"L"`` or ``"R"``.
        init_scale: scale of the off-centre taps' initial noise, as in ``InvConv1d``.
    """

    _layer = InvConv1d

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "pair",
                 init_scale: float = 0.1, cache_size: int = 0):
        super().__init__(channels, kernel_size, order, init_scale, cache_size)


class InvConv3dModule(_InvConvModule, InvConv3dTransform, nn.Module):
    """:class:`InvConv3dTransform` as an ``nn.Module`` that owns its weight (the Inverse-Flow
    layer of Nagar & Varma, AISTATS 2025, on volumes), as :class:`InvConv2dModule`.

    Args:
        channels: C; divisible by 8 for ``order="oct"``.
        kernel_size: ``k`` or ``(kd, kh, kw)``.
        order: ``"oct"`` (default, as in ``InvConv3d``) or one corner ``"NTL"`` … ``"FBR"``.
        init_scale: scale of the off-centre taps' initial noise, as in ``InvConv3d``.
    """

    _layer = InvConv3d

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "oct",
                 init_scale: float = 0.1, cache_size: int = 0):
        super().__init__(channels, kernel_size, order, init_scale, cache_size)


__all__ = ["InvConv2dTransform", "InvConv2dModule", "InvConv1dTransform", "InvConv1dModule",
           "InvConv3dTransform", "InvConv3dModule"]
