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

Both are log-det free: the masked center tap is unit lower triangular, so
``log|det J| = 0`` for every weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import constraints
from torch.distributions.transforms import Transform

from .nn import InvConv2d
from .nn._validate import positive_int
from .ops import causal_conv2d, inv_conv2d
from .ops._validate import FLOAT_DTYPES, check_order

EVENT_DIM = 3  # (C, H, W): one image is one event


def _check_weight(weight, order: str) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight must be float32 or float64, got {weight.dtype}")
    if weight.dim() != 4:
        raise ValueError("weight must be 4-D (C, C, kh, kw), or (C, C/4, kh, kw) for "
                         f"order='quad'; got shape {tuple(weight.shape)}")
    out_channels, in_channels, kh, kw = weight.shape
    if kh < 1 or kw < 1 or out_channels < 1:
        raise ValueError(f"weight must have at least one channel and a 1x1 kernel; got shape "
                         f"{tuple(weight.shape)}")
    expected = out_channels // 4 if order == "quad" else out_channels
    if (order == "quad" and out_channels % 4) or in_channels != expected:
        need = "(C, C/4, kh, kw) with C divisible by 4" if order == "quad" else "(C, C, kh, kw)"
        raise ValueError(f"weight must have shape {need} for order={order!r}; got "
                         f"{tuple(weight.shape)}")


class InvConv2dTransform(Transform):
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

    bijective = True
    domain = constraints.independent(constraints.real, EVENT_DIM)
    codomain = constraints.independent(constraints.real, EVENT_DIM)
    sign = +1

    def __init__(self, weight: torch.Tensor, order: str = "TL", cache_size: int = 0):
        check_order(order)
        _check_weight(weight, order)
        super().__init__(cache_size=cache_size)
        # Assigned after Transform/Module initialisation so that InvConv2dModule registers
        # a Parameter here.
        self.weight = weight
        self.order = order

    def _apply_images(self, op, images: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() < EVENT_DIM:
            raise ValueError(f"{name} must be (..., C, H, W) with at least 3 dimensions; got "
                             f"shape {tuple(images.shape)}")
        channels = self.weight.shape[0]
        if images.shape[-EVENT_DIM] != channels:
            # The weight is this transform's own: a mismatch is the images' fault.
            raise ValueError(f"{name} must have {channels} channels (the weight's, "
                             f"{tuple(self.weight.shape)}) in dimension -3 of (..., C, H, W); "
                             f"got shape {tuple(images.shape)}")
        # The ops take NCHW: fold every batch dimension into N and unfold afterwards. The
        # batch size is given, not -1, which reshape cannot infer for empty images (H = 0).
        event_shape = images.shape[-EVENT_DIM:]
        flat = images.reshape(math.prod(images.shape[:-EVENT_DIM]), *event_shape)
        return op(flat, self.weight, self.order).reshape(images.shape)

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        return self._apply_images(causal_conv2d, z, "z")

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_images(inv_conv2d, x, "x")

    def log_abs_det_jacobian(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Zeros of shape ``z.shape[:-3]``: the masked centre tap makes ``log|det J| = 0``."""
        return z.new_zeros(z.shape[:-EVENT_DIM])

    def with_cache(self, cache_size: int = 1) -> "InvConv2dTransform":
        """The same transform (sharing the weight) with ``cache_size`` 0 or 1."""
        if self._cache_size == cache_size:
            return self
        # Shares the weight (a module's Parameter included), so gradients still reach it.
        return InvConv2dTransform(self.weight, self.order, cache_size=cache_size)

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


class InvConv2dModule(InvConv2dTransform, nn.Module):
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

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "quad",
                 init_scale: float = 0.1, cache_size: int = 0):
        channels = positive_int(channels, "channels")
        # The layer validates kernel_size/order with its own messages and owns the
        # initialisation; borrowing it keeps the two initialised the same way.
        weight = InvConv2d(channels, kernel_size, order, init_scale=init_scale).weight
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


__all__ = ["InvConv2dTransform", "InvConv2dModule"]
