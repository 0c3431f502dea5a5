"""The k×k masked invertible convolution, in either placement."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import causal_conv2d, inv_conv2d
from ..ops._validate import ORDERS, check_order

PLACEMENTS = ("density", "sampling")


class InvConv2d(nn.Module):
    """Invertible k×k convolution with a unit-lower-triangular center (log-det 0).

    ``solve_on="density"`` is the Inverse-Flow placement of Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows"
    (AISTATS 2025): the density pass (data → latent) applies the *inverse* of the
    convolution and sampling applies the plain convolution. ``"sampling"`` is the
    FInC Flow (Kallappa et al., 2023) / Emerging convolutions (Hoogeboom et al., ICML
    2019) placement, the other way round. Both use the same parameters, so
    :meth:`set_solve_on` switches a trained layer between them (a different function of
    the data, with the same exact log-det).
    """

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "quad",
                 solve_on: str = "density", init_scale: float = 0.1):
        super().__init__()
        check_order(order)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kh < 1 or kw < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}")
        if order == "quad" and channels % 4:
            raise ValueError(f"order='quad' needs channels divisible by 4, got {channels}")
        cg = channels // 4 if order == "quad" else channels
        self.order = order
        self.set_solve_on(solve_on)
        # Identity plus small noise: the mask makes the center's diagonal 1, and every
        # other tap starts near 0, so the layer starts near the identity.
        self.weight = nn.Parameter(init_scale / (kh * kw) ** 0.5 * torch.randn(channels, cg, kh, kw))

    def set_solve_on(self, solve_on: str) -> None:
        if solve_on not in PLACEMENTS:
            raise ValueError(f"solve_on must be one of {PLACEMENTS}, got {solve_on!r}")
        self.solve_on = solve_on

    def forward(self, x):
        op = inv_conv2d if self.solve_on == "density" else causal_conv2d
        return op(x, self.weight, self.order), x.new_zeros(x.shape[0])

    def inverse(self, z):
        op = causal_conv2d if self.solve_on == "density" else inv_conv2d
        return op(z, self.weight, self.order)

    def extra_repr(self) -> str:
        return f"order={self.order!r}, solve_on={self.solve_on!r}, weight={tuple(self.weight.shape)}"


__all__ = ["InvConv2d", "PLACEMENTS", "ORDERS"]
