"""The one place that maps (op, device, spec, dtype) to a compiled kernel.

The compiled modules look the spec up in their generated registry and fall back to the
generic kernel; this module picks the backend by device and hands over raw pointers.
Layer shapes specialized at run time (inverseflow.jit) are modules of their own, registered
here by shape; they come first. With INVERSEFLOW_JIT=1, inverseflow.jit also installs a hook
that hears of every shape that ran the generic kernel.
"""

from __future__ import annotations

import torch

from . import _backends
from ._validate import check_conv_args

PATTERN_CODE = {"TL": 0, "TR": 1, "BL": 2, "BR": 3, "quad": 4}
DTYPE_CODE = {torch.float32: 0, torch.float64: 1}
SOLVE, TRANSPOSED = 0, 1

# (device type, kh, kw, channels, pattern code) -> run-time module (same `solve` interface).
_runtime_modules: dict[tuple, object] = {}
# Called as hook(device_type, kh, kw, channels, order) after a generic kernel ran; never raises.
_unspecialized_hook = None


def register_runtime_module(device_type: str, kh: int, kw: int, channels: int,
                            pattern_code: int, module) -> None:
    """Routes one layer shape on one device type to a module built at run time."""
    _runtime_modules[(device_type, kh, kw, channels, pattern_code)] = module


def set_unspecialized_hook(hook) -> None:
    global _unspecialized_hook
    _unspecialized_hook = hook


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
    if not force_generic:
        module = _runtime_modules.get(
            (y.device.type, kh, kw, channels, PATTERN_CODE[order]), module)
    stream = 0
    if y.device.type == "cuda":
        stream = torch.cuda.current_stream(y.device).cuda_stream
    with torch.cuda.device(y.device) if y.device.type == "cuda" else _no_context():
        name = module.solve(y.data_ptr(), weight.data_ptr(), x.data_ptr(), batch, channels,
                            height, width, kh, kw, PATTERN_CODE[order], DTYPE_CODE[y.dtype],
                            direction, torch.get_num_threads(), stream, force_generic)
    if name == "generic" and not force_generic and _unspecialized_hook is not None:
        _unspecialized_hook(y.device.type, kh, kw, channels, order)
    return x, name


class _no_context:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
