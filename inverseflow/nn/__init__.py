"""Invertible layers for normalizing flows.

Every layer maps the data side to the latent side with ``forward(x) -> (z, logdet)``
(``logdet`` of shape (B,), the exact ``log|det dz/dx|``) and back with ``inverse(z) -> x``.
Images are (B, C, H, W) float32 or float64 tensors unless a layer says otherwise.
"""

from .actnorm import ActNorm
from .activations import SmoothLeakyReLU, SplineActivation
from .conv1x1 import InvertibleConv1x1
from .convexp import ConvergenceError, ConvExp2d
from .coupling import AffineCoupling
from .emerging import EmergingConv2d
from .invconv import InvConv1d, InvConv2d, InvConv3d
from .preprocess import Dequantize, LogitTransform
from .reshape import Split, Squeeze

__all__ = ["ActNorm", "InvertibleConv1x1", "AffineCoupling", "InvConv2d", "InvConv1d",
           "InvConv3d", "Dequantize",
           "LogitTransform", "Split", "Squeeze", "EmergingConv2d", "ConvExp2d", "ConvergenceError",
           "SmoothLeakyReLU", "SplineActivation"]
