"""The interchangeable parts of the paper's comparison (DESIGN §10): which k×k invertible
convolution a flow uses, and which element-wise activation."""

from __future__ import annotations

from torch import nn

from ..nn import ConvExp2d, EmergingConv2d, InvConv2d, SmoothLeakyReLU, SplineActivation

# inverse: Inverse-Flow (solve in the density pass); finc: FInC Flow (quad groups, solve
# in sampling); emerging: Emerging convolutions (TL then BR, solve in sampling);
# conv-exp: the convolution exponential (no solve; a power series both ways).
CONV_LAYERS = ("inverse", "finc", "emerging", "conv-exp")
ACTIVATIONS = ("smooth-leaky-relu", "spline")
SWITCHABLE = ("inverse", "finc")    # plain InvConv2d: either placement on one set of weights


def check_layer(layer) -> None:
    if layer not in CONV_LAYERS:
        raise ValueError(f"layer must be one of {', '.join(CONV_LAYERS)}, got {layer!r}")


def conv_layer(layer: str, channels: int, kernel_size, order: str, solve_on: str) -> nn.Module:
    """One k×k invertible convolution of kind ``layer``. ``order`` and ``solve_on`` apply
    to ``inverse`` and ``finc`` (the caller fixes FInC's quad/sampling)."""
    check_layer(layer)
    if layer in SWITCHABLE:
        return InvConv2d(channels, kernel_size, order=order, solve_on=solve_on)
    if layer == "emerging":
        return EmergingConv2d(channels, kernel_size)
    return ConvExp2d(channels, kernel_size)


def activation(name: str, shape) -> nn.Module:
    """The paper's element-wise activations: smooth leaky ReLU (α = 0.3) or a per-element
    rational-quadratic spline (5 bins, tail bound 20, as in its code)."""
    if name == "smooth-leaky-relu":
        return SmoothLeakyReLU(0.3)
    if name == "spline":
        return SplineActivation(tuple(shape), bins=5, bound=20.0)
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
