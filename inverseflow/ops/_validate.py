"""Argument checks shared by the public functions and the op kernels (DESIGN.md §5)."""

from __future__ import annotations

import torch

from ._precision import LOW_PRECISION, dtype_seen_by_op

ORDERS = ("TL", "TR", "BL", "BR", "quad")
# bfloat16 and float16 are computed in float32 and returned in their dtype (DESIGN §12).
FLOAT_DTYPES = (torch.float32, torch.float64) + LOW_PRECISION


def check_order(order) -> str:
    if not isinstance(order, str):
        raise TypeError(f"order must be a str, one of {', '.join(ORDERS)}; got {type(order).__name__}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
    return order


def check_conv_args(x, weight, order, name: str = "x") -> None:
    """Validates ``(x, weight, order)``; ``name`` is the image argument's name in messages."""
    check_order(order)
    for arg, label in ((x, name), (weight, "weight")):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(arg).__name__}")
        if arg.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{label} must be float32, float64, bfloat16 or float16, got "
                            f"{arg.dtype}")
    # Under torch.autocast the ops' registered rule casts both to float32 first (§12).
    if dtype_seen_by_op(x) != dtype_seen_by_op(weight):
        raise TypeError(f"{name} and weight must have the same dtype (outside torch.autocast); "
                        f"got {x.dtype} and {weight.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W); got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C, C, kh, kw) or (C, C/4, kh, kw) for quad; "
                         f"got shape {tuple(weight.shape)}")
    if x.device != weight.device:
        raise ValueError(f"{name} and weight must be on the same device; got {x.device} and "
                         f"{weight.device}")
    channels = x.shape[1]
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"weight kernel size must be at least 1x1; got shape {tuple(weight.shape)}")
    if order == "quad":
        if channels % 4:
            raise ValueError(f"order='quad' needs the channel count divisible by 4; {name} has "
                             f"{channels} channels")
        expected = (channels, channels // 4)
    else:
        expected = (channels, channels)
    if tuple(weight.shape[:2]) != expected:
        raise ValueError(f"weight must have shape ({expected[0]}, {expected[1]}, kh, kw) for "
                         f"{name} with {channels} channels and order={order!r}; got "
                         f"{tuple(weight.shape)}")
