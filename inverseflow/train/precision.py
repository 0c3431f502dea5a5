"""``--precision``: mixed-precision training (DESIGN.md §12).

Under bf16 or fp16 the training forward pass runs under ``torch.autocast``. The models
keep every invertible layer, log-determinant, the prior and bits/dim in float32 (the
inverse convolutions by their ops' autocast rule, the rest in :mod:`inverseflow.nn`), so
only the coupling networks compute in the low precision. fp16 scales the loss with
``torch.amp.GradScaler`` (its narrow exponent range underflows small gradients), which is
for CUDA; bf16 has float32's range and needs no scaler. Evaluation and sampling run in
float32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Checkpoints written before --precision existed trained in float32.
DEFAULT_PRECISION = "fp32"


def check_precision(precision, device_type: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device_type != "cuda":
        raise ValueError(f"--precision fp16 needs --device cuda (got --device {device_type}): "
                         "float16 training scales its loss with torch.amp.GradScaler, which is "
                         "for GPUs; on a CPU use --precision bf16 (or fp32)")


class MixedPrecision:
    """The autocast context of a training forward pass, and fp16's loss scaler.

    With the scaler off (fp32, bf16) ``backward`` and ``step`` are the plain calls.
    """

    def __init__(self, precision: str, device_type: str):
        self.precision, self.device_type = precision, device_type
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def scales_loss(self) -> bool:
        """Whether non-finite gradients are the scaler's business (it skips that step and
        lowers the scale) rather than a divergence."""
        return self.scaler.is_enabled()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer) -> None:
        """Brings the gradients back to their true size (before clipping)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scales_loss else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scales_loss and state:
            self.scaler.load_state_dict(state)
