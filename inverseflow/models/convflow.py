"""The paper's CNN backbone: invertible convolutions and element-wise activations only."""

from __future__ import annotations

from torch import nn

from ..nn import ActNorm, Dequantize, LogitTransform, Squeeze
from .base import ImageFlow, check_image_shape
from .inputs import check_latents
from .layers import ACTIVATIONS, SWITCHABLE, check_layer, conv_layer
from .layers import activation as make_activation

# The placement each layer kind has when not told otherwise.
NATURAL_SOLVE_ON = {"inverse": "density", "finc": "sampling", "emerging": "sampling",
                    "conv-exp": None}
# Successive single-corner layers turn through the four corners, so that the stack
# sees every direction (as the four-layer stack of the paper's Figure 4 does).
ORDER_CYCLE = ("TL", "TR", "BL", "BR")


class ConvFlow(ImageFlow):
    """The CNN flow of the Inverse-Flow paper's ``*_cnn_mnist`` experiments (Nagar &
    Varma, AISTATS 2025, after the CNN of Self-Normalizing Flows, Keller et al., ICML
    2021): dequantize → logit → ``blocks`` × [``steps`` × (k×k invertible conv →
    element-wise activation)], a squeeze between blocks, a standard normal at the end;
    no couplings, no activation after the last conv.

    - ``layer``: ``"inverse"`` (Inverse-Flow: solve in the density pass), ``"finc"``
      (FInC Flow: quad groups where the channels divide by 4, solve on sampling),
      ``"emerging"`` or ``"conv-exp"`` (DESIGN §10).
    - Single-corner layers (``inverse``, and ``finc`` on a block whose channels do not
      divide by 4, such as MNIST's first) turn through TL, TR, BL, BR from one layer to
      the next.
    - ``actnorm=True`` puts an ActNorm before every conv. The paper's convolutions learn
      their diagonal; ours have a unit diagonal (log-det 0), so the per-channel scale
      lives in ActNorm instead (as DESIGN §10 says of Emerging).
    - ``solve_on`` switches ``inverse``/``finc`` layers between placements; None takes
      the layer's own.

    The interface is :class:`InverseFlow`'s: ``encode``/``decode``/``log_prob``/``sample``
    and the bits/dim helpers the training loop uses.

    Args:
        image_shape: (C, H, W); H and W divisible by ``2**(blocks − 1)``.
        blocks, steps: positive ints (the paper: 3 blocks of 16 layers).
        kernel_size: k of the convolutions (the paper: 2).
        layer: ``"inverse"``, ``"finc"``, ``"emerging"`` or ``"conv-exp"``.
        activation: ``"smooth-leaky-relu"`` or ``"spline"``.

    Raises ``ValueError`` for a bad size, an unknown layer or activation, or a
    ``solve_on`` that the layer cannot take.
    """

    def __init__(self, image_shape, blocks: int, steps: int, kernel_size: int = 2,
                 layer: str = "inverse", activation: str = "smooth-leaky-relu",
                 actnorm: bool = True, solve_on: str | None = None, logit_alpha: float = 0.05):
        super().__init__()
        c, h, w = check_image_shape(image_shape)
        for name, value in (("blocks", blocks), ("steps", steps), ("kernel_size", kernel_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_layer(layer)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {activation!r}")
        natural = NATURAL_SOLVE_ON[layer]
        solve_on = natural if solve_on is None else solve_on
        if layer not in SWITCHABLE and solve_on != natural:
            raise ValueError(f"a {layer!r} layer has one placement ({natural}); got "
                             f"solve_on={solve_on!r}")
        if h % 2 ** (blocks - 1) or w % 2 ** (blocks - 1):
            raise ValueError(f"image_shape {tuple(image_shape)}: height and width must be "
                             f"divisible by 2**(blocks - 1) = {2 ** (blocks - 1)}")
        self.image_shape = (c, h, w)
        self.switchable_placement = layer in SWITCHABLE
        self.config = dict(model="convflow", image_shape=list(self.image_shape), blocks=blocks,
                           steps=steps, kernel_size=kernel_size, layer=layer,
                           activation=activation, actnorm=actnorm, solve_on=solve_on,
                           logit_alpha=logit_alpha)
        self.dequantize = Dequantize()
        self.logit = LogitTransform(logit_alpha)
        self.layers = nn.ModuleList()
        count = 0
        for block in range(blocks):
            if block:
                self.layers.append(Squeeze())
                c, h, w = 4 * c, h // 2, w // 2
            for _ in range(steps):
                if actnorm:
                    self.layers.append(ActNorm(c))
                order = "quad" if layer == "finc" and c % 4 == 0 else ORDER_CYCLE[count % 4]
                self.layers.append(conv_layer(layer, c, kernel_size, order, solve_on))
                count += 1
                if count < blocks * steps:
                    self.layers.append(make_activation(activation, (c, h, w)))
        self.latent_shape = (c, h, w)

    def set_solve_on(self, solve_on: str) -> None:
        """Switches every ``inverse``/``finc`` conv between the two placements."""
        if not self.switchable_placement:
            raise ValueError(f"a {self.config['layer']!r} layer has one fixed placement; "
                             "only 'inverse' and 'finc' layers switch solve_on")
        for module in self.layers:
            if hasattr(module, "set_solve_on"):
                module.set_solve_on(solve_on)
        self.config["solve_on"] = solve_on

    def _encode(self, x):
        h, logdet = self.logit(x)
        for layer in self.layers:
            h, ld = layer(h)
            logdet = logdet + ld
        return h.flatten(1), logdet

    def decode(self, z):
        """Latent (B, D) → images (B, C, H, W) in [0, 1] (the sampling pass)."""
        check_latents(z, self.dim, self.dtype)
        h = z.reshape(z.shape[0], *self.latent_shape)
        for layer in reversed(self.layers):
            h = layer.inverse(h)
        return self.logit.inverse(h)
