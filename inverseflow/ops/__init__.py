"""The torch ops (``torch.ops.inverseflow.*``) and everything only they use: argument
checks, corner geometry, the compiled backends and the one dispatch table."""

from ._library import causal_conv2d, inv_conv2d, inv_conv2d_transposed

__all__ = ["inv_conv2d", "causal_conv2d", "inv_conv2d_transposed"]
