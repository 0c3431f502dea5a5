"""The torch ops (``torch.ops.inverseflow.*``) and everything only they use: argument
checks, corner geometry, the compiled backends and the one dispatch table."""

from ._backends import get_backend, set_backend
from ._library import (causal_conv1d, causal_conv2d, causal_conv3d, inv_conv1d,
                       inv_conv1d_transposed, inv_conv2d, inv_conv2d_transposed, inv_conv3d,
                       inv_conv3d_transposed)

__all__ = ["inv_conv2d", "causal_conv2d", "inv_conv2d_transposed",
           "inv_conv1d", "causal_conv1d", "inv_conv1d_transposed",
           "inv_conv3d", "causal_conv3d", "inv_conv3d_transposed", "set_backend", "get_backend"]
