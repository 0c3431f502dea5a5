"""Guards of the training loop: finiteness before a step or a checkpoint is kept,
a graceful Ctrl-C, and the inverse convolution's growth statistic."""

from __future__ import annotations

import signal
import threading
import warnings

import torch

from ..nn.invconv import GROWTH_WARNING_THRESHOLD, InvConv2d


class InverseGrowthWarning(RuntimeWarning):
    """A k×k inverse convolution amplified its input a lot: its filter is near instability."""


def all_finite(tensors) -> bool:
    """True when every floating tensor in ``tensors`` holds only finite values (one sync)."""
    floats = [t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not floats:
        return True
    # max|t| (the inf-norm) per tensor is inf or NaN exactly when t has a non-finite
    # entry, with no copy of t; a 2-norm could overflow on large finite values.
    peaks = torch._foreach_norm(floats, ord=float("inf"))
    return bool(torch.isfinite(torch.stack([p.to(torch.float64) for p in peaks])).all())


def nonfinite_names(named_tensors) -> list[str]:
    """Names of the tensors with a non-finite entry (for the error message; slow path)."""
    return [name for name, t in named_tensors
            if t is not None and t.is_floating_point() and not torch.isfinite(t).all()]


class InterruptRequest:
    """Turns the first Ctrl-C (SIGINT) into a request the loop honours between steps, so
    the checkpoint it then writes holds a whole step; a second Ctrl-C interrupts at once.
    Outside the main thread (where signals cannot be handled) it does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def restore(self) -> None:
        """Gives Ctrl-C its previous handler back (idempotent)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __exit__(self, *exc):
        self.restore()
        return False


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after a checkpoint was written at ``step``. A
    KeyboardInterrupt, so that code which does not know it still stops as on Ctrl-C."""

    def __init__(self, step: int, checkpoint):
        super().__init__(f"interrupted at step {step}; rerun with --resume")
        self.step, self.checkpoint = step, checkpoint


class GrowthMonitor:
    """Turns on the growth statistic of every InvConv2d in ``model`` and reports it.

    ``peak()`` is the largest max|x| / max|y| of any solve since the last call (or None
    when the model has no k×k inverse); a value past ``threshold`` warns once per run.
    """

    def __init__(self, model: torch.nn.Module, threshold: float | None = None):
        self.layers = [m for m in model.modules() if isinstance(m, InvConv2d)]
        self.threshold = GROWTH_WARNING_THRESHOLD if threshold is None else threshold
        self.max_seen: float | None = None
        self.warned = False
        for layer in self.layers:
            layer.record_growth = True

    def peak(self, step: int) -> float | None:
        values = [layer.last_growth for layer in self.layers if layer.last_growth is not None]
        for layer in self.layers:
            layer.last_growth = None
        if not values:
            return None
        value = float(torch.stack(values).max())
        self.max_seen = value if self.max_seen is None else max(self.max_seen, value)
        if not self.warned and not value <= self.threshold:   # NaN warns too
            self.warned = True
            warnings.warn(
                f"the k×k inverse convolution amplified its input {value:.3g}x (max|x|/max|y|) "
                f"at step {step}, past {self.threshold:.0e}: its filter is near instability "
                f"(see docs/guides/limits.md, Stability); lower --lr or --grad-clip",
                InverseGrowthWarning, stacklevel=2)
        return value

    def close(self) -> None:
        for layer in self.layers:
            layer.record_growth = False
            layer.last_growth = None
