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
    """

    def forward(self, x_uint8, generator: torch.Generator | None = None):
        if x_uint8.dtype != torch.uint8:
            raise TypeError(f"Dequantize expects uint8 images, got {x_uint8.dtype}")
        noise = torch.rand(x_uint8.shape, generator=generator, device=x_uint8.device)
        return (x_uint8.float() + noise) / 256.0


class LogitTransform(nn.Module):
    """``z = logit(α + (1 − 2α) x)`` for x in [0, 1] (Dinh et al., "Real NVP", ICLR 2017),
    with its log-det counted, so that the model's density is over [0, 1]^D.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x):
        s = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(s) - torch.log1p(-s)
        # d z / d x = (1 − 2α) / (s (1 − s))
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return z, logdet

    def inverse(self, z):
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
