"""The masked invertible convolution (1-D, 2-D, 3-D), in either placement."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import causal_conv1d, causal_conv2d, causal_conv3d, inv_conv1d, inv_conv2d, inv_conv3d
from ..ops import _geometry
from ..ops._validate import GROUP_PATTERN, ORDERS, check_order
from ._validate import kernel_size_nd, non_negative_number, positive_int

PLACEMENTS = ("density", "sampling")

# max|x| / max|y| of a solve above this is reported: a stable filter with the usual small
# off-centre taps stays within a few times 1; 1e4 means the IIR recursion is amplifying.
GROWTH_WARNING_THRESHOLD = 1e4


def inverse_growth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The growth statistic of a solve ``x = inv_conv2d(y, ...)``: ``max|x| / max|y|`` (a
    0-d tensor, no host sync; inf or NaN when the solve overflowed)."""
    with torch.no_grad():
        return x.abs().amax() / y.abs().amax().clamp_min(torch.finfo(y.dtype).tiny)


class _InvConv(nn.Module):
    """What the 1-D, 2-D and 3-D layers share; a subclass sets the dimension and the ops."""

    dims: int   # and the ops, as static methods _solve_op and _conv_op

    def __init__(self, channels, kernel_size, order: str, solve_on: str, init_scale: float):
        super().__init__()
        channels = positive_int(channels, "channels")
        kernel = kernel_size_nd(kernel_size, self.dims)
        check_order(order, self.dims)
        init_scale = non_negative_number(init_scale, "init_scale")
        groups = 2 ** self.dims if order == GROUP_PATTERN[self.dims] else 1
        if channels % groups:
            raise ValueError(f"order={order!r} needs channels divisible by {groups}, got "
                             f"{channels}")
        self.order = order
        self.set_solve_on(solve_on)
        # Identity plus small noise: the mask makes the center's diagonal 1, and every
        # other tap starts near 0, so the layer starts near the identity.
        self.weight = nn.Parameter(init_scale / math.prod(kernel) ** 0.5
                                   * torch.randn(channels, channels // groups, *kernel))
        self.record_growth = False
        self.last_growth: torch.Tensor | None = None

    def set_solve_on(self, solve_on: str) -> None:
        """Switches the placement, ``"density"`` or ``"sampling"`` (same parameters);
        ``ValueError`` for anything else."""
        if solve_on not in PLACEMENTS:
            raise ValueError(f"solve_on must be one of {PLACEMENTS}, got {solve_on!r}")
        self.solve_on = solve_on

    def forward(self, x):
        """Data → latent: ``(z, logdet)``, ``z`` like ``x``, ``logdet`` zeros (B,). With
        ``solve_on="density"`` this is the inverse convolution (:func:`inverseflow.inv_conv2d`
        in 2-D, ``inv_conv1d`` / ``inv_conv3d`` in 1-D / 3-D)."""
        if self.solve_on == "density":
            return self._solve(x), x.new_zeros(x.shape[0])
        return self._conv_op(x, self.weight, self.order), x.new_zeros(x.shape[0])

    def inverse(self, z):
        """Latent → data: ``x`` like ``z``. With ``solve_on="density"`` this is the plain
        causal convolution (:func:`inverseflow.causal_conv2d` in 2-D)."""
        if self.solve_on == "density":
            return self._conv_op(z, self.weight, self.order)
        return self._solve(z)

    def _solve(self, y):
        x = self._solve_op(y, self.weight, self.order)
        if self.record_growth and x.numel():
            growth = inverse_growth(x, y)
            self.last_growth = growth if self.last_growth is None else torch.maximum(
                self.last_growth, growth)
        return x

    def stability_bound(self) -> float:
        """ρ = Σ_t ‖L⁻¹ W_t‖_∞ over the off-center taps (per channel group, the largest);
        ρ < 1 is sufficient for a bounded inverse (see the class docstring)."""
        return stability_bound(self.weight, self.order)

    def extra_repr(self) -> str:
        return f"order={self.order!r}, solve_on={self.solve_on!r}, weight={tuple(self.weight.shape)}"


class InvConv2d(_InvConv):
    """Invertible k×k convolution with a unit-lower-triangular center (log-det 0).

    ``solve_on="density"`` is the Inverse-Flow placement of Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows"
    (AISTATS 2025): the density pass (data → latent) applies the *inverse* of the
    convolution and sampling applies the plain convolution. ``"sampling"`` is the
    FInC Flow (Kallappa et al., 2023) / Emerging convolutions (Hoogeboom et al., ICML
    2019) placement, the other way round. Both use the same parameters, so
    :meth:`set_solve_on` switches a trained layer between them (a different function of
    the data, with the same exact log-det).

    Stability: the inverse is an IIR filter. With ``L`` the masked center matrix and
    ``W_t`` the off-center taps, ``ρ = Σ_t ‖L⁻¹ W_t‖_∞ < 1`` guarantees
    ``max|x| ≤ ‖L⁻¹‖_∞ max|y| / (1 − ρ)`` at any image size (:meth:`stability_bound`
    returns ρ); past it the solve can grow exponentially across the image. With
    ``record_growth = True`` each solve stores ``last_growth``, the largest
    ``max|x| / max|y|`` since it was last cleared (two reductions per solve), which the
    training loop logs and warns on.

    Args:
        channels: C, the input and output channel count (divisible by 4 for ``quad``).
        kernel_size: ``k`` or ``(kh, kw)``; rectangular and 1×1 kernels are valid.
        order: ``"quad"`` (default: four channel groups, one per corner), ``"TL"``,
            ``"TR"``, ``"BL"`` or ``"BR"``.
        solve_on: ``"density"`` (Inverse-Flow) or ``"sampling"`` (FInC/Emerging).
        init_scale: scale of the off-centre taps' initial noise (identity plus noise).

    Shapes: ``forward(x)`` and ``inverse(z)`` take (B, C, H, W) float32 or float64 (any H,
    W) and keep the shape; ``weight`` is (C, C, kh, kw), or (C, C/4, kh, kw) for ``quad``.

    Raises:
        ValueError: a non-positive ``channels`` or ``kernel_size``, an unknown ``order`` or
            ``solve_on``, a negative ``init_scale``, or ``quad`` with C not divisible by 4;
            the ops' ``ValueError``/``TypeError`` for images of the wrong shape or dtype.
    """

    dims = 2
    _solve_op = staticmethod(inv_conv2d)
    _conv_op = staticmethod(causal_conv2d)

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "quad",
                 solve_on: str = "density", init_scale: float = 0.1):
        super().__init__(channels, kernel_size, order, solve_on, init_scale)


class InvConv1d(_InvConv):
    """Invertible 1-D convolution along a sequence, with a unit-lower-triangular centre
    (log-det 0): :class:`InvConv2d` in one dimension (docs/nd-design.md).

    ``solve_on="density"`` is the Inverse-Flow placement of Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows"
    (AISTATS 2025): the density pass applies :func:`inverseflow.inv_conv1d` and sampling
    the plain :func:`inverseflow.causal_conv1d`; ``"sampling"`` is the other way round (the
    FInC / Emerging placement). The stability bound, ``record_growth`` and ``last_growth``
    are those of :class:`InvConv2d`: the solve is a causal IIR filter along W.

    Args:
        channels: C (even for ``pair``).
        kernel_size: ``k`` or ``(kw,)``; 1 is a unit-lower-triangular channel mix.
        order: ``"pair"`` (default: two channel groups, solved from the left and the right
            end), ``"L"`` or ``"R"``.
        solve_on: ``"density"`` (Inverse-Flow) or ``"sampling"`` (FInC/Emerging).
        init_scale: scale of the off-centre taps' initial noise (identity plus noise).

    Shapes: ``forward(x)`` and ``inverse(z)`` take (B, C, W) float32 or float64 and keep the
    shape; ``weight`` is (C, C, kw), or (C, C/2, kw) for ``pair``.

    Raises:
        ValueError: a non-positive ``channels`` or ``kernel_size``, an unknown ``order`` or
            ``solve_on``, a negative ``init_scale``, or ``pair`` with an odd C; the ops'
            ``ValueError``/``TypeError`` for data of the wrong shape or dtype.
    """

    dims = 1
    _solve_op = staticmethod(inv_conv1d)
    _conv_op = staticmethod(causal_conv1d)

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "pair",
                 solve_on: str = "density", init_scale: float = 0.1):
        super().__init__(channels, kernel_size, order, solve_on, init_scale)


class InvConv3d(_InvConv):
    """Invertible 3-D convolution of volumes, with a unit-lower-triangular centre (log-det
    0): :class:`InvConv2d` in three dimensions (docs/nd-design.md).

    ``solve_on="density"`` is the Inverse-Flow placement of Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows"
    (AISTATS 2025): the density pass applies :func:`inverseflow.inv_conv3d` (a wavefront
    over D + H + W − 2 planes) and sampling the plain :func:`inverseflow.causal_conv3d`;
    ``"sampling"`` is the other way round (the FInC / Emerging placement). The stability
    bound, ``record_growth`` and ``last_growth`` are those of :class:`InvConv2d`.

    Args:
        channels: C (divisible by 8 for ``oct``).
        kernel_size: ``k`` or ``(kd, kh, kw)``; sizes of 1 are valid.
        order: ``"oct"`` (default: eight channel groups, one per corner, as ``quad`` in
            2-D), or one corner ``"NTL"``, ``"NTR"``, ``"NBL"``, ``"NBR"``, ``"FTL"``,
            ``"FTR"``, ``"FBL"``, ``"FBR"`` (depth near/far, top/bottom, left/right).
        solve_on: ``"density"`` (Inverse-Flow) or ``"sampling"`` (FInC/Emerging).
        init_scale: scale of the off-centre taps' initial noise (identity plus noise).

    Shapes: ``forward(x)`` and ``inverse(z)`` take (B, C, D, H, W) float32 or float64 and
    keep the shape; ``weight`` is (C, C, kd, kh, kw), or (C, C/8, kd, kh, kw) for ``oct``.

    Raises:
        ValueError: a non-positive ``channels`` or ``kernel_size``, an unknown ``order`` or
            ``solve_on``, a negative ``init_scale``, or ``oct`` with C not divisible by 8;
            the ops' ``ValueError``/``TypeError`` for data of the wrong shape or dtype.
    """

    dims = 3
    _solve_op = staticmethod(inv_conv3d)
    _conv_op = staticmethod(causal_conv3d)

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "oct",
                 solve_on: str = "density", init_scale: float = 0.1):
        super().__init__(channels, kernel_size, order, solve_on, init_scale)


def stability_bound(weight: torch.Tensor, order: str) -> float:
    """ρ = Σ_t ‖L⁻¹ W_t‖_∞ of the inverse convolution (any dimension: the weight's rank
    minus 2) over the off-center taps (per channel group, the largest); ρ < 1 guarantees
    ``max|x| ≤ ‖L⁻¹‖_∞ max|y| / (1 − ρ)`` at any size. Shared by the layers and by
    :mod:`inverseflow.deblur`."""
    return _geometry.stability_bound(weight, order)


__all__ = ["InvConv2d", "InvConv1d", "InvConv3d", "PLACEMENTS", "ORDERS", "stability_bound",
           "inverse_growth", "GROWTH_WARNING_THRESHOLD"]
