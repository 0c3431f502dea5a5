"""Which parts of a flow run in float32 under ``torch.autocast`` (DESIGN.md §12).

Only the coupling networks (free-form conditioners, where the arithmetic is) run in the
autocast dtype; their outputs come back to the flow's dtype before they scale or shift
anything. Every invertible map, its log-determinant, the learned prior and the preprocessing
stay in float32: a flow's density and sampling passes are exact inverses only at one
precision, and a log-determinant summed in bfloat16 (8 bits) is off by whole nats.
"""

from __future__ import annotations

import contextlib

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")


def full_precision(x: torch.Tensor):
    """A context in which autocast leaves ``x``'s device alone (a no-op outside autocast)."""
    device_type = x.device.type
    if device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 where autocast handed a layer a bfloat16/float16 activation (a no-op
    outside autocast, so a model kept in one low dtype on purpose stays in it)."""
    device_type = x.device.type
    if (x.dtype in (torch.bfloat16, torch.float16) and device_type in _AUTOCAST_DEVICES
            and torch.is_autocast_enabled(device_type)):
        return x.float()
    return x
