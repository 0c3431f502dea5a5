"""The multi-scale flow: logit → L × (squeeze, K × step, split) → standardised latent."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import ActNorm, AffineCoupling, Dequantize, InvConv2d, InvertibleConv1x1
from ..nn import LogitTransform, Split, Squeeze
from .base import ImageFlow, check_image_shape
from .inputs import check_latents
from .layers import SWITCHABLE, activation, check_layer, conv_layer

STEP_LAYOUTS = ("glow", "paper")


class FlowStep(nn.Module):
    """ActNorm → k×k layer (unless ``kernel_size`` or ``layer`` is None) → mixer → coupling.

    ``step_layout="glow"``: the mixer is Glow's invertible 1×1 conv. ``"paper"``: a
    per-element spline activation and no 1×1, the step of the paper's code
    (``if_glow_mnist``); ``shape`` (C, H, W) sizes the spline.
    """

    def __init__(self, channels, kernel_size, coupling_width, solve_on, order,
                 layer="inverse", step_layout="glow", shape=None):
        super().__init__()
        layers = [ActNorm(channels)]
        if kernel_size is not None and layer is not None:
            layers.append(conv_layer(layer, channels, kernel_size, order, solve_on))
        layers.append(InvertibleConv1x1(channels) if step_layout == "glow"
                      else activation("spline", shape))
        layers.append(AffineCoupling(channels, coupling_width))
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z):
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


class InverseFlow(ImageFlow):
    """Inverse-Flow: a Glow-style multi-scale flow whose steps include a k×k invertible
    convolution applied by its *inverse* in the density pass (Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows",
    AISTATS 2025), so that sampling needs only convolutions.

    ``encode(x)`` takes images in [0, 1] (dequantised) and returns ``(z, logdet)`` with
    ``z`` of shape (B, D), standard normal under the model, and ``logdet = log|det dz/dx|``.
    ``solve_on="sampling"`` gives the FInC/Emerging placement on the same parameters.

    ``layer`` picks the k×k layer (DESIGN §10): ``"inverse"`` (this paper; ``order`` and
    ``solve_on`` apply), ``"finc"`` (quad, solve on sampling), ``"emerging"``,
    ``"conv-exp"``, or None for none (Glow). ``step_layout`` is ``"glow"`` (ActNorm →
    k×k → 1×1 → coupling, the default) or ``"paper"`` (ActNorm → k×k → spline →
    coupling, the step of the paper's released code).

    Args:
        image_shape: (C, H, W); H and W divisible by ``2**levels``.
        levels: L, the number of scales (squeeze, K steps, split).
        steps: K, flow steps per level.
        kernel_size: k of the k×k layer, or None for no k×k layer.
        coupling_width: hidden width of the couplings' networks.
        solve_on: ``"density"`` (Inverse-Flow) or ``"sampling"`` (FInC/Emerging).
        order: corner order of the k×k layer, ``"quad"`` by default.
        logit_alpha: the logit preprocessing's margin, in [0, 0.5).
        layer, step_layout: as above.

    Raises:
        ValueError: a non-positive ``levels``/``steps``/``coupling_width``, an image size
            not divisible by ``2**levels``, or an unknown ``layer``/``step_layout``/
            ``order``/``solve_on``.
    """

    def __init__(self, image_shape, levels: int, steps: int, kernel_size: int | None = 3,
                 coupling_width: int = 512, solve_on: str = "density", order: str = "quad",
                 logit_alpha: float = 0.05, layer: str | None = "inverse",
                 step_layout: str = "glow"):
        super().__init__()
        channels, height, width = check_image_shape(image_shape)
        if layer is not None:
            check_layer(layer)
        if step_layout not in STEP_LAYOUTS:
            raise ValueError(f"step_layout must be one of {', '.join(STEP_LAYOUTS)}, "
                             f"got {step_layout!r}")
        if kernel_size is None or layer is None:
            kernel_size, layer = None, None
        elif layer == "finc":
            order, solve_on = "quad", "sampling"
        # Only a plain InvConv2d can switch placement; the others have one fixed pass.
        self.switchable_placement = layer in SWITCHABLE
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be a positive int, got {levels!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if height % 2**levels or width % 2**levels:
            raise ValueError(f"image_shape {tuple(image_shape)}: height and width must be "
                             f"divisible by 2**levels = {2**levels}")
        if not isinstance(coupling_width, int) or coupling_width < 1:
            raise ValueError(f"coupling_width must be a positive int, got {coupling_width!r}")
        self.image_shape = (channels, height, width)
        self.config = dict(model="inverseflow", image_shape=list(self.image_shape),
                           levels=levels, steps=steps,
                           kernel_size=kernel_size, coupling_width=coupling_width,
                           solve_on=solve_on, order=order, logit_alpha=logit_alpha,
                           layer=layer, step_layout=step_layout)
        self.dequantize = Dequantize()
        self.logit = LogitTransform(logit_alpha)
        self.squeeze = Squeeze()
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        self.latent_shapes = []
        c, h, w = channels, height, width
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList(
                FlowStep(c, kernel_size, coupling_width, solve_on, order, layer, step_layout,
                         (c, h, w)) for _ in range(steps)))
            if level < levels - 1:
                self.splits.append(Split(c))
                self.latent_shapes.append((c - c // 2, h, w))
                c = c // 2
        self.latent_shapes.append((c, h, w))
        # The top latent's learned prior, folded in as a standardisation like Split's.
        self.top_mean = nn.Parameter(torch.zeros(1, c, h, w))
        self.top_log_std = nn.Parameter(torch.zeros(1, c, h, w))

    def set_solve_on(self, solve_on: str) -> None:
        """Switches every k×k layer between the two placements (same parameters)."""
        if self.config["layer"] is not None and not self.switchable_placement:
            raise ValueError(f"a {self.config['layer']!r} layer has one fixed placement; "
                             "only 'inverse' and 'finc' layers switch solve_on")
        for module in self.modules():
            if isinstance(module, InvConv2d):
                module.set_solve_on(solve_on)
        self.config["solve_on"] = solve_on

    def _encode(self, x):
        h, logdet = self.logit(x)
        latents = []
        for index, steps in enumerate(self.levels):
            h, _ = self.squeeze(h)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
            if index < len(self.splits):
                h, z_out, ld = self.splits[index](h)
                latents.append(z_out.flatten(1))
                logdet = logdet + ld
        latents.append(((h - self.top_mean) * torch.exp(-self.top_log_std)).flatten(1))
        logdet = logdet - self.top_log_std.sum()
        return torch.cat(latents, dim=1), logdet

    def decode(self, z):
        """Latent (B, D) → images (B, C, H, W) in [0, 1]; with ``solve_on="density"`` only
        plain convolutions (the fast sampling pass)."""
        check_latents(z, self.dim, self.dtype)
        sizes = [math.prod(s) for s in self.latent_shapes]
        pieces = [p.reshape(z.shape[0], *s) for p, s in zip(z.split(sizes, dim=1),
                                                            self.latent_shapes)]
        h = pieces[-1] * torch.exp(self.top_log_std) + self.top_mean
        for index in reversed(range(len(self.levels))):
            if index < len(self.splits):
                h = self.splits[index].inverse(h, pieces[index])
            for step in reversed(self.levels[index]):
                h = step.inverse(h)
            h = self.squeeze.inverse(h)
        return self.logit.inverse(h)


class Glow(InverseFlow):
    """The Glow baseline (Kingma & Dhariwal, NeurIPS 2018): the same multi-scale flow
    with invertible 1×1 convolutions only (no k×k layer).

    Takes :class:`InverseFlow`'s arguments except the k×k layer's (``kernel_size``,
    ``solve_on``, ``order``, ``layer``), which raise ``ValueError`` if given.
    """

    # Options of the k×k layer, which Glow does not have: giving one is a mistake.
    KXK_OPTIONS = ("kernel_size", "solve_on", "order", "layer")

    def __init__(self, image_shape, levels: int, steps: int, coupling_width: int = 512,
                 logit_alpha: float = 0.05, **options):
        given = {k: options[k] for k in self.KXK_OPTIONS if options.get(k) is not None}
        if given:
            raise ValueError("Glow has no k×k invertible convolution, so it takes no "
                             + ", ".join(f"{k}={v!r}" for k, v in given.items())
                             + "; drop them, or use model='inverseflow'")
        options = {k: v for k, v in options.items() if k not in self.KXK_OPTIONS}
        super().__init__(image_shape, levels, steps, kernel_size=None,
                         coupling_width=coupling_width, logit_alpha=logit_alpha, **options)
        self.config.update(model="glow", solve_on=None, order=None)
