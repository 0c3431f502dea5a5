"""Process-wide settings of how the ops run, in the manner of ``torch.backends``.

``inverseflow.backends.benchmark`` (default ``False``; ``INVERSEFLOW_BENCHMARK=1`` sets the
default, ``inverseflow train --benchmark`` sets it for a run) is the counterpart of
``torch.backends.cudnn.benchmark``. Several ops have forms that are equal in exact
arithmetic but round differently (DESIGN §16): the generated causal-conv kernel or a padded
``conv2d``, the weight gradient's chunked, grouped or block-diagonal forms.

- Off (the default), a fixed rule picks the form from what is known without a clock (op,
  order, dimension, shapes, dtype, device, the CPU's instruction set): the same command
  gives the same bits in every process, and a resumed run replays the killed one exactly.
- On, each form is timed once per shape (interleaved rounds, medians, a minimum time per
  form) and the fastest is kept for the process, as cuDNN does. Results may then differ
  from run to run in the last bits; training records the choices in its checkpoints so a
  resume continues exactly as the killed process would have.

Under ``torch.use_deterministic_algorithms(True)`` benchmark mode is off, with a one-time
warning that says so.
"""

from __future__ import annotations

import os
import sys
import types
import warnings

import torch

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not understood: use 1 (on) or 0 (off)")


class _Settings(types.ModuleType):
    """The module's class, so that assigning a setting is checked like an argument."""

    @property
    def benchmark(self) -> bool:
        """Whether equal forms are chosen by timing (True) or by the fixed rule (False)."""
        return _setting()

    @benchmark.setter
    def benchmark(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"inverseflow.backends.benchmark must be True or False, got "
                            f"{type(value).__name__} {value!r}")
        self._benchmark = value


# None until first read: then INVERSEFLOW_BENCHMARK's value (read on first use, so that a
# bad value is a clear error from the call that meets it, not from `import inverseflow`).
_benchmark: bool | None = None
_warned_deterministic = False


def _setting() -> bool:
    module = sys.modules[__name__]
    if module._benchmark is None:
        module._benchmark = _env_flag("INVERSEFLOW_BENCHMARK")
    return module._benchmark


def benchmark_active() -> bool:
    """Whether choices between equal forms are timed now: the setting, unless
    ``torch.use_deterministic_algorithms(True)`` is in force (then a one-time warning)."""
    global _warned_deterministic
    if not _setting():
        return False
    if torch.are_deterministic_algorithms_enabled():
        if not _warned_deterministic:
            _warned_deterministic = True
            warnings.warn("inverseflow.backends.benchmark is on, but "
                          "torch.use_deterministic_algorithms(True) is in force: equal forms "
                          "are chosen by the fixed rule, not by timing", UserWarning,
                          stacklevel=3)
        return False
    return True


def mode() -> str:
    """``"benchmark"`` or ``"deterministic"``: what :func:`benchmark_active` says now."""
    return "benchmark" if benchmark_active() else "deterministic"


sys.modules[__name__].__class__ = _Settings
