"""Invertible 1×1 convolution, LU-parametrised."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import _weight_cache
from ._autocast import full_precision, upcast
from ._validate import positive_int


class InvertibleConv1x1(nn.Module):
    """``z = W x`` per pixel with ``W = P L (U + diag(sign · exp(log_s)))`` (Kingma &
    Dhariwal, "Glow", NeurIPS 2018): ``log|det| = H·W·Σ log_s``, at O(C) cost.
    Initialised from a random rotation.

    Args:
        channels: C, a positive int (``ValueError`` otherwise).

    Shapes: (B, C, H, W) in and out; ``logdet`` is (B,). Under autocast it computes in
    float32 so that ``W`` and ``W⁻¹`` stay exact inverses.
    """

    def __init__(self, channels: int):
        super().__init__()
        channels = positive_int(channels, "channels")
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def matrix(self):
        """The C×C matrix ``W = P L (U + diag(sign · exp(log_s)))``."""
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def forward(self, x):
        """``(W x per pixel, logdet)``."""
        x = upcast(x)
        logdet = self.log_s.sum() * x.shape[2] * x.shape[3]
        with full_precision(x):   # W and W⁻¹ must match the log-det exactly (DESIGN §12)
            return F.conv2d(x, self.matrix()[:, :, None, None]), logdet.expand(x.shape[0])

    def inverse(self, z):
        """``W⁻¹ z`` per pixel."""
        z = upcast(z)
        with full_precision(z):
            # Sampling needs no derivative: the inverse is then computed once per version
            # of the parameters (an LU product and an inversion per call before).
            sources = (self.lower, self.upper, self.log_s, self.perm, self.sign_s,
                       self.lower_mask)   # every tensor matrix() reads
            w_inv = _weight_cache.derived(
                "conv1x1_inverse", sources, lambda: torch.linalg.inv(self.matrix())[:, :, None, None])
            return F.conv2d(z, w_inv)
