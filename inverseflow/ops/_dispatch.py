"""The one place that maps (op, device, spec, dtype) to a compiled kernel.

The compiled modules look the call up in their generated registry and fall back to the
generic kernel; this module picks the backend by device and hands over raw pointers. A
specialization is keyed by what its code depends on: kernel sizes, the group's channel
count (channels / groups of the order), dtype and direction (DESIGN.md §17). So a ``BR``
C=12 layer, a ``quad`` C=48 layer and a ``TL`` C=12 layer all run the same instantiation. Every
kernel is 3-D (docs/nd-design.md): 1-D and 2-D data go in with the missing leading axes of
size 1, which is a view, not a copy.
Instantiations specialized at run time (inverseflow.jit) are modules of their own, registered
here by (kernel, group channels); they come first. With INVERSEFLOW_JIT=1, inverseflow.jit also installs a hook
that hears of every shape that ran the generic kernel.
"""

from __future__ import annotations

import torch

from . import _backends
from ._validate import check_conv_args

# Shared with csrc/invconv/common.h (enum Pattern): a corner of a lower dimension is the
# 3-D corner on the near side of the missing axes (L = TL = NTL = 0).
PATTERN_CODE = {"TL": 0, "TR": 1, "BL": 2, "BR": 3, "quad": 4, "pair": 5, "oct": 6,
                "FTL": 7, "FTR": 8, "FBL": 9, "FBR": 10,
                "L": 0, "R": 1, "NTL": 0, "NTR": 1, "NBL": 2, "NBR": 3}
# Channel groups of the group patterns (csrc/invconv/common.h num_groups); a corner has one.
GROUPS = {"quad": 4, "pair": 2, "oct": 8}
DTYPE_CODE = {torch.float32: 0, torch.float64: 1}
# Direction codes (csrc/invconv/common.h): the solve, its transpose, and the causal conv
# y = T x itself (the generated kernel of the sampling pass, DESIGN.md §15).
SOLVE, TRANSPOSED, CONV = 0, 1, 2

# (device type, kd, kh, kw, group channels) -> run-time module (same `solve` interface).
_runtime_modules: dict[tuple, object] = {}
# Called as hook(device_type, kernel, channels, order) after a generic kernel ran, with
# `kernel` the weight's kernel sizes (one per spatial axis); never raises.
_unspecialized_hook = None


def group_channels(channels: int, order: str) -> int:
    """The channel count of one group: what a specialization is keyed on besides the
    kernel (every corner and group pattern with this group size shares it)."""
    return channels // GROUPS.get(order, 1)


def register_runtime_module(device_type: str, kernel3d: tuple[int, int, int],
                            group_size: int, module) -> None:
    """Routes one instantiation (its kernel as (kd, kh, kw) and group channels) on one
    device type to a module built at run time: every corner and group pattern of that group
    size then runs it."""
    _runtime_modules[(device_type, *kernel3d, group_size)] = module


def set_unspecialized_hook(hook) -> None:
    global _unspecialized_hook
    _unspecialized_hook = hook


def solve(y: torch.Tensor, weight: torch.Tensor, order: str, direction: int = SOLVE,
          force_generic: bool = False) -> tuple[torch.Tensor, str]:
    """Runs the solve (or transposed solve) kernel on 1-D, 2-D or 3-D data (rank 3, 4 or
    5); returns ``(x, name of the kernel)``."""
    dims = y.dim() - 2 if isinstance(y, torch.Tensor) and y.dim() in (3, 5) else 2
    check_conv_args(y, weight, order, "y", dims=dims)
    y = y.contiguous()
    weight = weight.contiguous()
    x = torch.empty_like(y, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return x, "none"
    device_type = y.device.type
    if _backends.backend_for(device_type) == "triton":
        from ._triton import run_triton   # never imported on the CPU path
        return run_triton(y, weight, order, direction, dims, force_generic)
    module = _backends.module_for(device_type)
    batch, channels = y.shape[:2]
    depth, height, width = (1,) * (3 - dims) + tuple(y.shape[2:])
    kd, kh, kw = (1,) * (3 - dims) + tuple(weight.shape[2:])
    if not force_generic and _runtime_modules:
        module = _runtime_modules.get(
            (device_type, kd, kh, kw, group_channels(channels, order)), module)
    args = (y.data_ptr(), weight.data_ptr(), x.data_ptr(), batch, channels, depth, height,
            width, kd, kh, kw, PATTERN_CODE[order], DTYPE_CODE[y.dtype], direction,
            torch.get_num_threads())
    if device_type == "cuda":
        with torch.cuda.device(y.device):
            stream = torch.cuda.current_stream(y.device).cuda_stream
            name = module.solve(*args, stream, force_generic)
    else:   # the batch-1 sampling pass calls this per layer: no context manager here
        name = module.solve(*args, 0, force_generic)
    if name == "generic" and not force_generic and _unspecialized_hook is not None:
        _unspecialized_hook(device_type, tuple(weight.shape[2:]), channels, order)
    return x, name
