"""Argument checks shared by the public functions and the op kernels (DESIGN.md §5).

One set of rules for 1-D, 2-D and 3-D (docs/nd-design.md): data is (N, C, *spatial) with
``dims`` spatial axes, the weight (C, C, *kernel), or (C, C/2^dims, *kernel) for the group
pattern (``pair``, ``quad``, ``oct``).
"""

from __future__ import annotations

import torch

from ._precision import LOW_PRECISION, dtype_seen_by_op

# The corners of each dimension in group order (bit i of the group number picks the far
# side of axis i, axis 0 the most significant), then the group pattern.
CORNERS_BY_DIMS = {
    1: ("L", "R"),
    2: ("TL", "TR", "BL", "BR"),
    3: ("NTL", "NTR", "NBL", "NBR", "FTL", "FTR", "FBL", "FBR"),
}
GROUP_PATTERN = {1: "pair", 2: "quad", 3: "oct"}
ORDERS_BY_DIMS = {d: corners + (GROUP_PATTERN[d],) for d, corners in CORNERS_BY_DIMS.items()}
ORDERS = ORDERS_BY_DIMS[2]
DATA_LAYOUT = {1: "(N, C, W)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
KERNEL_LAYOUT = {1: "kw", 2: "kh, kw", 3: "kd, kh, kw"}
# bfloat16 and float16 are computed in float32 and returned in their dtype (DESIGN §12).
FLOAT_DTYPES = (torch.float32, torch.float64) + LOW_PRECISION


def num_groups(order: str, dims: int = 2) -> int:
    return 2 ** dims if order == GROUP_PATTERN[dims] else 1


def check_order(order, dims: int = 2) -> str:
    allowed = ORDERS_BY_DIMS[dims]
    if not isinstance(order, str):
        raise TypeError(f"order must be a str, one of {', '.join(allowed)}; got "
                        f"{type(order).__name__}")
    if order not in allowed:
        hint = ""
        other = [d for d, orders in ORDERS_BY_DIMS.items() if order in orders and d != dims]
        if other:
            hint = f" ({order!r} is a {other[0]}-D order)"
        raise ValueError(f"order must be one of {', '.join(allowed)} for {dims}-D data; got "
                         f"{order!r}{hint}")
    return order


def check_conv_args(x, weight, order, name: str = "x", dims: int = 2) -> None:
    """Validates ``(x, weight, order)`` for ``dims`` spatial axes; ``name`` is the data
    argument's name in messages."""
    check_order(order, dims)
    for arg, label in ((x, name), (weight, "weight")):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(arg).__name__}")
        if arg.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{label} must be float32, float64, bfloat16 or float16, got "
                            f"{arg.dtype}")
    # Under torch.autocast the ops' registered rule casts both to float32 first (§12).
    if x.dtype != weight.dtype and dtype_seen_by_op(x) != dtype_seen_by_op(weight):
        raise TypeError(f"{name} and weight must have the same dtype (outside torch.autocast); "
                        f"got {x.dtype} and {weight.dtype}")
    group_pattern, groups = GROUP_PATTERN[dims], 2 ** dims
    if x.dim() != dims + 2:
        raise ValueError(f"{name} must be {dims + 2}-D {DATA_LAYOUT[dims]}; got shape "
                         f"{tuple(x.shape)}")
    if weight.dim() != dims + 2:
        raise ValueError(f"weight must be {dims + 2}-D (C, C, {KERNEL_LAYOUT[dims]}) or "
                         f"(C, C/{groups}, {KERNEL_LAYOUT[dims]}) for {group_pattern}; got "
                         f"shape {tuple(weight.shape)}")
    if x.device != weight.device:
        raise ValueError(f"{name} and weight must be on the same device; got {x.device} and "
                         f"{weight.device}")
    channels = x.shape[1]
    if any(k < 1 for k in weight.shape[2:]):
        raise ValueError(f"weight kernel size must be at least {'x'.join('1' * dims)}; got "
                         f"shape {tuple(weight.shape)}")
    if order == group_pattern:
        if channels % groups:
            raise ValueError(f"order={group_pattern!r} needs the channel count divisible by "
                             f"{groups}; {name} has {channels} channels")
        expected = (channels, channels // groups)
    else:
        expected = (channels, channels)
    if tuple(weight.shape[:2]) != expected:
        raise ValueError(f"weight must have shape ({expected[0]}, {expected[1]}, "
                         f"{KERNEL_LAYOUT[dims]}) for {name} with {channels} channels and "
                         f"order={order!r}; got {tuple(weight.shape)}")
