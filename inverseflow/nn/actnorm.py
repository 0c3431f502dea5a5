"""Activation normalization with data-dependent initialization."""

from __future__ import annotations

import torch
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine ``z = (x + bias) * exp(log_scale)`` (Kingma & Dhariwal, "Glow",
    NeurIPS 2018). The first batch it sees sets bias and scale so that each channel has
    zero mean and unit variance; the ``initialized`` buffer keeps that in checkpoints.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(True)

    def forward(self, x):
        if not self.initialized:
            self._initialize(x)
        z = (x + self.bias) * torch.exp(self.log_scale)
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return z, logdet.expand(x.shape[0])

    def inverse(self, z):
        return z * torch.exp(-self.log_scale) - self.bias
