"""The one place that maps (op, device, spec, dtype) to a compiled kernel.

The compiled modules look the spec up in their generated registry and fall back to the
generic kernel; this module picks the backend by device and hands over raw pointers.
"""

from __future__ import annotations

import torch

from . import _backends
from ._validate import check_conv_args

PATTERN_CODE = {"TL": 0, "TR": 1, "BL": 2, "BR": 3, "quad": 4}
DTYPE_CODE = {torch.float32: 0, torch.float64: 1}
SOLVE, TRANSPOSED = 0, 1


def solve(y: torch.Tensor, weight: torch.Tensor, order: str, direction: int = SOLVE,
          force_generic: bool = False) -> tuple[torch.Tensor, str]:
    """Runs the solve (or transposed solve) kernel; returns ``(x, name of the kernel)``."""
    check_conv_args(y, weight, order, "y")
    y = y.contiguous()
    weight = weight.contiguous()
    x = torch.empty_like(y, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return x, "none"
    module = _backends.module_for(y.device.type)
    batch, channels, height, width = y.shape
    kh, kw = weight.shape[2], weight.shape[3]
    stream = 0
    if y.device.type == "cuda":
        stream = torch.cuda.current_stream(y.device).cuda_stream
    with torch.cuda.device(y.device) if y.device.type == "cuda" else _no_context():
        name = module.solve(y.data_ptr(), weight.data_ptr(), x.data_ptr(), batch, channels,
                            height, width, kh, kw, PATTERN_CODE[order], DTYPE_CODE[y.dtype],
                            direction, torch.get_num_threads(), stream, force_generic)
    return x, name


class _no_context:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
