"""Mixed precision of the ops (DESIGN.md §12): they compute in float32 at the least.

The solve is a recurrence over H+W−1 wavefront steps, so its rounding grows with the image,
and the density and sampling passes of a flow are exact inverses only at one precision.
So, like ``torch.linalg.solve``, the ops belong with autocast's full-precision ops: under
``torch.autocast`` (CPU or CUDA, bfloat16 or float16) their floating inputs other than
float64 are cast to float32 and the result is float32. Called directly with bfloat16 or
float16 tensors, they compute in float32 and return the input's dtype; the casts are
differentiable, so gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)
AUTOCAST_DEVICES = ("cpu", "cuda")


def register_float32_autocast(qualname: str, lib) -> None:
    """Registers the op's autocast rule (float32) on the op itself, so that eager calls,
    ``torch.compile`` and ``torch.export`` all see it."""
    for device_type in AUTOCAST_DEVICES:
        torch.library.register_autocast(qualname, device_type, torch.float32, lib=lib)


def _autocast_casts(t: torch.Tensor) -> bool:
    """Whether autocast would cast ``t`` to float32 for the ops (the rule of
    ``torch.library.register_autocast``: floating, not float64, on the autocast device)."""
    device_type = t.device.type
    return (device_type in AUTOCAST_DEVICES and t.is_floating_point()
            and t.dtype is not torch.float64 and torch.is_autocast_enabled(device_type))


def dtype_seen_by_op(t: torch.Tensor) -> torch.dtype:
    """The dtype an op's kernel gets for ``t``: float32 where autocast casts it."""
    return torch.float32 if _autocast_casts(t) else t.dtype


def needs_float32_copy(a: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether an op call must go through a float32 copy (a low-precision input, cast
    back, or cast by autocast), i.e. cannot take the full-precision fast path."""
    return a.dtype in LOW_PRECISION or weight.dtype in LOW_PRECISION


def call_in_float32(fn, a: torch.Tensor, weight: torch.Tensor, order: str):
    """``fn(a, weight, order)`` under the ops' precision rules, done in Python for the
    paths that must meet an autograd Function before the dispatcher (torch.func): under
    autocast as the registered rule casts (result float32); else bfloat16/float16 inputs
    (of one dtype, already checked) run in float32 and the result is cast back."""
    if _autocast_casts(a) or _autocast_casts(weight):
        cast = [t.float() if _autocast_casts(t) else t for t in (a, weight)]
        return fn(cast[0], cast[1], order)
    if a.dtype in LOW_PRECISION:
        return fn(a.float(), weight.float(), order).to(a.dtype)
    return fn(a, weight, order)
