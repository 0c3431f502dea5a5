"""``INVERSEFLOW_JIT=1``: specialize each new layer shape in the background.

The dispatch calls :func:`on_unspecialized` after a generic kernel ran. The first time a
shape shows up, one line is logged and a thread specializes it; calls keep running the
generic kernel until the module is registered. Compiles of one backend run one at a time
(a model with ten new shapes must not start ten compilers at once). A failure is one
warning, never an exception into the caller's loop; after a missing toolchain, no further
shape of that backend is tried, and after a cache someone else could write (an
``UntrustedCacheError``), no further shape at all.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings

from ..ops import _dispatch
from . import _build
from ._errors import JitWarning, ToolchainError
from ._trust import UntrustedCacheError

ENV = "INVERSEFLOW_JIT"
COMPILES_PER_BACKEND = 1   # each compile is a multi-threaded cc1plus or nvcc of its own

_requested: set[tuple] = set()
_threads: list[threading.Thread] = []
_guard = threading.Lock()
_gave_up: set[str] = set()   # backends without a toolchain: nothing more to try there
_cache_refused = threading.Event()   # the cache may be written by others: nothing at all
_slots: dict[str, threading.BoundedSemaphore] = {}   # per backend: compiles at a time


def requested_by_environment() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _announce(message: str) -> None:
    """Logs on inverseflow.jit; to stderr when the application has configured no logging."""
    logger = _build.log
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logger.info(message)


def _first_refusal() -> bool:
    """True for the first compile to find the cache untrusted: that one warns."""
    with _guard:
        first = not _cache_refused.is_set()
        _cache_refused.set()
    return first


def _specialize_quietly(slot, device_type, kernel, channels, order) -> None:
    with slot:
        if device_type in _gave_up or _cache_refused.is_set():   # found while it queued
            return
        try:
            _build.specialize(kernel, channels, order, device_type)
        except Exception as exc:  # noqa: BLE001 - nothing may reach the training loop
            if isinstance(exc, UntrustedCacheError):
                if not _first_refusal():   # another backend's compile said it already
                    return
            elif isinstance(exc, ToolchainError):
                _gave_up.add(device_type)
            warnings.warn(f"inverseflow.jit: could not specialize kernel {_name(kernel)}, "
                          f"{channels} channels, {order} on {device_type}: {exc}. The generic "
                          "kernel goes on.", JitWarning, stacklevel=1)


def _name(kernel: tuple) -> str:
    return "x".join(str(k) for k in kernel)


def on_unspecialized(device_type: str, kernel: tuple, channels: int, order: str) -> None:
    """The dispatch hook: starts one background specialization per new shape (``kernel``:
    the weight's kernel sizes, one per spatial axis)."""
    kernel = tuple(kernel)
    shape = (device_type, kernel, channels, order)
    # Shapes of one group size share an instantiation (a BR C=12 layer and a quad C=48 one):
    # one compile serves them all.
    instantiation = (device_type, kernel, _dispatch.group_channels(channels, order))
    if instantiation in _requested or device_type in _gave_up or _cache_refused.is_set():
        return
    try:
        with _guard:
            if instantiation in _requested:
                return
            _requested.add(instantiation)
            _announce(f"specializing kernel {_name(kernel)}, {channels} channels, {order} on "
                      f"{device_type} in the background; the generic kernel runs until it "
                      "is ready")
            slot = _slots.setdefault(device_type,
                                     threading.BoundedSemaphore(COMPILES_PER_BACKEND))
            thread = threading.Thread(target=_specialize_quietly, args=(slot, *shape),
                                      daemon=True,
                                      name=f"inverseflow.jit {_name(kernel)} c{channels} "
                                           f"{order}")
            _threads.append(thread)
            thread.start()
    except Exception as exc:  # noqa: BLE001 - e.g. no thread can be started
        warnings.warn(f"inverseflow.jit: could not start a background compile: {exc}",
                      JitWarning, stacklevel=1)


def _after_fork_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) has none of the parent's threads: fresh
    locks; shapes the parent already asked for stay asked for (the child runs them generic)."""
    global _guard, _threads, _slots
    _guard = threading.Lock()
    _threads = []
    _slots = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def enable(on: bool = True) -> None:
    """Turns background specialization on or off for this process."""
    _dispatch.set_unspecialized_hook(on_unspecialized if on else None)


def wait(timeout: float | None = None) -> bool:
    """Waits for the background compiles started so far; True when all have finished."""
    with _guard:
        pending = list(_threads)
    for thread in pending:
        thread.join(timeout)
    return not any(t.is_alive() for t in pending)
