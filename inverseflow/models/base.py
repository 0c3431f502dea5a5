"""What every image flow here offers the training loop, the benchmarks and users: the
density and sampling passes on top of a model's own ``_encode`` and ``decode``."""

from __future__ import annotations

import math

import torch
from torch import nn

from .inputs import check_images, check_temperature, positive_count

LOG_2PI = math.log(2 * math.pi)


def bits_per_dim(log_prob, dim: int):
    """bits/dim of 8-bit data from the log-density of its dequantised version in [0,1]^D:
    ``(−log_prob + D·log 256) / (D·log 2)`` (Theis et al., ICLR 2016). ``log_prob`` is a
    tensor (B,) or a number; ``dim`` is D = C·H·W."""
    return (-log_prob + dim * math.log(256)) / (dim * math.log(2))


def check_image_shape(image_shape) -> tuple[int, int, int]:
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3
            or not all(isinstance(v, int) and v > 0 for v in image_shape)):
        raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
    return tuple(image_shape)


class ImageFlow(nn.Module):
    """A flow on (C, H, W) images in [0, 1] with a standard normal latent of size D: the
    multi-scale image flows of Real NVP (Dinh et al., ICLR 2017) and Glow (Kingma &
    Dhariwal, NeurIPS 2018), the base of the Inverse-Flow models (Nagar & Varma, AISTATS
    2025).

    Subclasses set ``image_shape``, ``dequantize`` and ``logit`` and implement
    ``_encode(x) -> (z, logdet)`` (inputs already checked) and ``decode(z)``.
    ``encode(x)`` returns ``(z, logdet)`` with ``logdet = log|det dz/dx|``.

    Images are float tensors (B, C, H, W) in the model's dtype (float32 unless the model
    was converted); latents are (B, D) with D = C·H·W. Inputs of the wrong shape, dtype
    or range raise ``ValueError``/``TypeError`` naming the argument.
    """

    image_shape: tuple[int, int, int]

    @property
    def dim(self) -> int:
        """D = C·H·W, the latent size."""
        return math.prod(self.image_shape)

    @property
    def device(self) -> torch.device:
        """The parameters' device."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype, which inputs must have."""
        return next(self.parameters()).dtype

    def _encode(self, x):
        raise NotImplementedError

    def decode(self, z):
        """Latent (B, D) → images (B, C, H, W) in [0, 1]: the sampling pass."""
        raise NotImplementedError

    def forward(self, x_uint8, generator: torch.Generator | None = None):
        """Per-image bits/dim of uint8 images: the training objective (so that
        DistributedDataParallel, which hooks ``forward``, sees it)."""
        return self.bits_per_dim(x_uint8, generator)

    @torch.no_grad()
    def initialize(self, x_uint8, generator: torch.Generator | None = None) -> None:
        """ActNorm's data-dependent initialisation from one batch of uint8 images. The
        first eager forward does it too; call it before ``torch.compile(model,
        fullgraph=True)``, whose graph has no data-dependent branch."""
        self.bits_per_dim(x_uint8, generator)

    def encode(self, x):
        """Images (B, C, H, W) → ``(z, logdet)``: z (B, D), ``logdet = log|det dz/dx|`` (B,).
        ``x`` must lie in the logit's open domain (slightly wider than [0, 1])."""
        check_images(x, self.image_shape, self.dtype, logit_alpha=self.logit.alpha)
        return self._encode(x)

    def log_prob(self, x):
        """Log-density (B,) of images in [0, 1] (``ValueError`` outside): the density pass."""
        # One range check (the density's [0, 1]), not a second one inside encode.
        check_images(x, self.image_shape, self.dtype)
        z, logdet = self._encode(x)
        return -0.5 * (z.pow(2).sum(1) + z.shape[1] * LOG_2PI) + logdet

    def bits_per_dim(self, x_uint8, generator: torch.Generator | None = None):
        """Per-image bits/dim of uint8 images under uniform dequantisation."""
        # A CPU generator draws on the CPU: the noise is then the same on every device.
        x = self.dequantize(x_uint8.cpu() if generator is not None else x_uint8, generator)
        return self.bits_per_dim_dequantized(x.to(self.device))

    def bits_per_dim_dequantized(self, x):
        """Per-image bits/dim of images already dequantised into [0, 1]."""
        return bits_per_dim(self.log_prob(x.to(self.dtype)), self.dim)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None):
        """``n`` images (n, C, H, W) in [0, 1] from latents ``temperature · N(0, I)``.

        ``n`` is any integer-like count ≥ 1 and ``temperature`` a finite positive number
        (``ValueError``/``TypeError`` otherwise); ``generator`` makes it reproducible."""
        n = positive_count(n, "n")
        temperature = check_temperature(temperature, dtype=self.dtype)
        z = torch.randn(n, self.dim, generator=generator, device=self.device) * temperature
        return self.decode(z.to(self.dtype)).clamp(0, 1)
