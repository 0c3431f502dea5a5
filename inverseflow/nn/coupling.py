"""Affine coupling layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._autocast import upcast
from ._validate import positive_int


class AffineCoupling(nn.Module):
    """Real NVP affine coupling (Dinh et al., ICLR 2017) in Glow's form (Kingma &
    Dhariwal, NeurIPS 2018): the first half of the channels conditions a shift and a
    ``sigmoid(· + 2)`` scale of the second half. The network's last conv starts at zero,
    so the layer starts as the identity.

    Args:
        channels: C, at least 2 (one half conditions the other).
        width: hidden channels of the conditioning network, a positive int.

    Shapes: (B, C, H, W) in and out; ``logdet`` (B,) is Σ log sigmoid of the raw scale.
    Raises ``ValueError`` for a bad ``channels`` or ``width``.
    """

    def __init__(self, channels: int, width: int):
        super().__init__()
        channels = positive_int(channels, "channels", minimum=2)   # one half conditions the other
        width = positive_int(width, "width")
        self.split = channels // 2
        out = channels - self.split
        self.net = nn.Sequential(
            nn.Conv2d(self.split, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 1), nn.ReLU(),
            nn.Conv2d(width, 2 * out, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_scale(self, x_a):
        # Under autocast the network runs in bfloat16/float16; the shift, the scale and
        # the log-det use its output in the flow's dtype (DESIGN §12).
        h = self.net(x_a).to(x_a.dtype)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, raw + 2.0

    def forward(self, x):
        """``(z, logdet)``: the second half shifted and scaled, the first kept."""
        x = upcast(x)
        x_a, x_b = x[:, :self.split], x[:, self.split:]
        shift, raw = self._shift_scale(x_a)
        z_b = (x_b + shift) * torch.sigmoid(raw)
        logdet = F.logsigmoid(raw).flatten(1).sum(1)
        return torch.cat([x_a, z_b], dim=1), logdet

    def inverse(self, z):
        """The exact inverse (the first half is unchanged, so the network reruns on it)."""
        z = upcast(z)
        z_a, z_b = z[:, :self.split], z[:, self.split:]
        shift, raw = self._shift_scale(z_a)
        return torch.cat([z_a, z_b / torch.sigmoid(raw) - shift], dim=1)
