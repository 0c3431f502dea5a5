"""Squeeze and split: the multi-scale architecture of Real NVP."""

from __future__ import annotations

import torch
from torch import nn

from ._autocast import full_precision, upcast
from ._validate import positive_int


class Squeeze(nn.Module):
    """Space-to-depth by 2 (Dinh et al., "Real NVP", ICLR 2017): (C, H, W) → (4C, H/2, W/2).

    ``forward(x)`` takes (B, C, H, W) with even H and W (``ValueError`` otherwise) and
    returns ``(z, zeros(B))``; ``inverse(z)`` undoes it (C divisible by 4). Any dtype.
    """

    def forward(self, x):
        """(B, C, H, W) → ``((B, 4C, H/2, W/2), zeros(B))``."""
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z):
        """(B, 4C, H, W) → (B, C, 2H, 2W)."""
        b, c, h, w = z.shape
        z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c // 4, 2 * h, 2 * w)


class Split(nn.Module):
    """Factors out half the channels with a learned conditional Gaussian prior (Dinh et
    al., "Real NVP", ICLR 2017; Glow's ``split2d``, Kingma & Dhariwal, NeurIPS 2018),
    folded in as an affine standardisation:
    ``z_out = (x_b − μ(x_a)) · exp(−log σ(x_a))``, so the factored-out latent is standard
    normal under the model and the log-det carries ``−Σ log σ``. The prior's conv starts
    at zero (μ = 0, σ = 1).

    Args:
        channels: C, at least 2; ``C // 2`` are kept, the rest factored out.

    Shapes: ``forward(x)`` (B, C, H, W) → ``(x_a, z_b, logdet)`` with ``x_a`` (B, C//2, H, W),
    ``z_b`` (B, C − C//2, H, W), ``logdet`` (B,); ``inverse(x_a, z_b)`` → (B, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        channels = positive_int(channels, "channels", minimum=2)   # keeps half, factors out half
        self.keep = channels // 2
        out = channels - self.keep
        self.prior = nn.Conv2d(self.keep, 2 * out, 3, padding=1)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    def forward(self, x):
        """Returns (kept half, standardised factored-out half, logdet)."""
        x = upcast(x)
        x_a, x_b = x[:, :self.keep], x[:, self.keep:]
        with full_precision(x):   # the prior stays float32 under autocast (DESIGN §12)
            h = self.prior(x_a)
        mean, log_std = h[:, 0::2], h[:, 1::2]
        z_b = (x_b - mean) * torch.exp(-log_std)
        return x_a, z_b, -log_std.flatten(1).sum(1)

    def inverse(self, x_a, z_b):
        """Rebuilds ``x`` from the kept half and the standardised factored-out half."""
        x_a, z_b = upcast(x_a), upcast(z_b)
        with full_precision(x_a):
            h = self.prior(x_a)
        mean, log_std = h[:, 0::2], h[:, 1::2]
        return torch.cat([x_a, z_b * torch.exp(log_std) + mean], dim=1)
