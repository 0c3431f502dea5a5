"""Uniform dequantisation and the logit preprocessing step."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Dequantize(nn.Module):
    """uint8 → [0, 1): ``(x + u) / 256`` with ``u ~ U[0, 1)`` (Theis et al., ICLR 2016).

    With this, the density of the dequantised image bounds the discrete likelihood, and
    bits/dim = (−log p(x) + D·log 256) / (D·log 2).

    ``forward(x_uint8, generator=None)`` takes uint8 images of any shape (``TypeError`` for
    another dtype) and returns float32 of the same shape.
    """

    def forward(self, x_uint8, generator: torch.Generator | None = None):
        """``(x + u) / 256`` in float32, ``u`` drawn from ``generator`` when given."""
        if x_uint8.dtype != torch.uint8:
            raise TypeError(f"Dequantize expects uint8 images, got {x_uint8.dtype}")
        noise = torch.rand(x_uint8.shape, generator=generator, device=x_uint8.device)
        return (x_uint8.float() + noise) / 256.0


class LogitTransform(nn.Module):
    """``z = logit(α + (1 − 2α) x)`` for x in [0, 1] (Dinh et al., "Real NVP", ICLR 2017),
    with its log-det counted, so that the model's density is over [0, 1]^D.

    Args:
        alpha: the margin kept from 0 and 1, in [0, 0.5) (``ValueError`` otherwise).

    Shapes: (B, ...) float in and out; ``logdet`` is (B,).
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x):
        """``(z, logdet)`` for ``x`` in [0, 1]; ``logdet`` (B,) sums log dz/dx."""
        s = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(s) - torch.log1p(-s)
        # d z / d x = (1 − 2α) / (s (1 − s))
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return z, logdet

    def inverse(self, z):
        """``(sigmoid(z) − α) / (1 − 2α)``: back to [0, 1]."""
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
