"""inverseflow: fast inverse convolutions for normalizing flows.

Implements Nagar & Varma, "Parallel Backpropagation for Inverse of a Convolution with
Application to Normalizing Flows" (AISTATS 2025).
"""

from . import backends  # noqa: F401 - inverseflow.backends.benchmark (DESIGN §16)
from .ops import causal_conv1d, causal_conv2d, causal_conv3d, inv_conv1d, inv_conv2d, inv_conv3d
from . import jit  # noqa: E402,F401 - installs the INVERSEFLOW_JIT=1 hook

__all__ = ["inv_conv2d", "causal_conv2d", "inv_conv1d", "causal_conv1d", "inv_conv3d",
           "causal_conv3d"]
__version__ = "0.1.0"
