"""Activation normalization with data-dependent initialization."""

from __future__ import annotations

import torch
from torch import nn

from ._validate import positive_int


class ActNorm(nn.Module):
    """Per-channel affine ``z = (x + bias) * exp(log_scale)`` (Kingma & Dhariwal, "Glow",
    NeurIPS 2018). The first batch it sees sets bias and scale so that each channel has
    zero mean and unit variance; the ``initialized`` buffer keeps that in checkpoints.

    Initialisation is data-dependent, so it happens eagerly: on the first call outside
    ``torch.compile``, or explicitly through :meth:`initialize` (or a model's
    ``initialize``). After it, ``forward`` has no data-dependent branch, and a model
    compiles with ``fullgraph=True``. A Python flag mirrors the buffer (and follows
    ``load_state_dict``) because Dynamo can guard on a Python bool but not branch on a
    tensor.

    Args:
        channels: C, a positive int (``ValueError`` otherwise).

    Shapes: (B, C, H, W) in and out; ``logdet`` (B,) is ``H·W·Σ log_scale``. Raises
    ``RuntimeError`` when first called inside ``torch.compile`` before initialisation.
    """

    def __init__(self, channels: int):
        super().__init__()
        channels = positive_int(channels, "channels")
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.is_initialized = False
        self.register_load_state_dict_post_hook(_sync_initialized_flag)

    @torch.no_grad()
    def initialize(self, x) -> None:
        """Sets bias and scale from the batch ``x`` (N, C, H, W)."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(True)
        self.is_initialized = True

    def forward(self, x):
        """``(z, logdet)``; the first eager call initialises from ``x`` (see the class)."""
        # Statistics, scale and log-det in the parameters' dtype (float32), even when
        # autocast hands this layer a bfloat16/float16 activation (DESIGN §12).
        x = x.to(torch.promote_types(x.dtype, self.bias.dtype))
        if not self.is_initialized:
            if torch.compiler.is_compiling():
                raise RuntimeError(
                    "ActNorm is not initialised, and its data-dependent initialisation cannot "
                    "be compiled: run the model once eagerly (or call model.initialize(batch)) "
                    "before torch.compile")
            if bool(self.initialized):
                self.is_initialized = True
            else:
                self.initialize(x)
        z = (x + self.bias) * torch.exp(self.log_scale)
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return z, logdet.expand(x.shape[0])

    def inverse(self, z):
        """``z · exp(−log_scale) − bias``: latent → data, shape kept."""
        return z * torch.exp(-self.log_scale) - self.bias


def _sync_initialized_flag(module: ActNorm, incompatible_keys) -> None:
    module.is_initialized = bool(module.initialized)
