"""Emerging convolutions, with this package's unit-diagonal masked convolutions."""

from __future__ import annotations

from torch import nn

from ._validate import positive_int
from .invconv import InvConv2d


class EmergingConv2d(nn.Module):
    """Emerging convolution (Hoogeboom, van den Berg & Welling, "Emerging Convolutions
    for Generative Normalizing Flows", ICML 2019): two masked autoregressive k×k
    convolutions of opposite corners composed, ``z = conv_BR(conv_TL(x))``, so that the
    composite sees every neighbour of a pixel. Its inverse is two triangular solves, so
    it is the *sampling* pass that solves (the opposite of Inverse-Flow).

    The two convolutions are :class:`InvConv2d` with the unit-diagonal mask (DESIGN §2),
    so the log-determinant is exactly 0; the per-channel scale that the paper keeps on
    the diagonal lives in the neighbouring ActNorm instead.

    Args:
        channels: C, a positive int.
        kernel_size: ``k`` or ``(kh, kw)`` of both convolutions.
        init_scale: as for :class:`InvConv2d`.

    Shapes: (B, C, H, W) float32 or float64 in and out; ``logdet`` zeros of shape (B,).
    Raises ``ValueError`` for a non-positive ``channels`` or ``kernel_size``.
    """

    def __init__(self, channels: int, kernel_size: int | tuple = 3, init_scale: float = 0.1):
        super().__init__()
        channels = positive_int(channels, "channels")
        self.first = InvConv2d(channels, kernel_size, order="TL", solve_on="sampling",
                               init_scale=init_scale)
        self.second = InvConv2d(channels, kernel_size, order="BR", solve_on="sampling",
                                init_scale=init_scale)

    def forward(self, x):
        """Data → latent by two plain convolutions: ``(z, zeros(B))``."""
        h, _ = self.first(x)
        z, _ = self.second(h)
        return z, x.new_zeros(x.shape[0])

    def inverse(self, z):
        """Latent → data by two triangular solves (BR, then TL)."""
        return self.first.inverse(self.second.inverse(z))


__all__ = ["EmergingConv2d"]
