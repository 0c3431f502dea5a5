"""Specializing new layer shapes at run time, with a safe on-disk cache (DESIGN.md §11).

``codegen/specs.toml`` lists the layer shapes that the build specializes; any other shape
runs the generic kernel. :func:`specialize` renders the same templates for one more shape,
compiles them with the build's compiler and flags, caches the module and adds it to the
dispatch::

    import inverseflow
    inverseflow.jit.specialize(3, 16, "TL")          # then inv_conv2d of that shape uses it

With ``INVERSEFLOW_JIT=1`` in the environment, the dispatch does this by itself, in the
background, the first time it meets an unspecialized shape (see :mod:`._auto`).

The cache lives in ``$INVERSEFLOW_CACHE`` (default ``~/.cache/inverseflow``); its key covers
the shape, the kernel headers, templates and rendered sources, the compiler and its
version, and the flags. ``inverseflow jit --list`` and ``inverseflow jit --clear`` manage it.
"""

from __future__ import annotations

from . import _auto, _cache
from ._auto import wait
from ._build import loaded, specialize
from ._errors import CompileError, JitError, JitWarning, ToolchainError

__all__ = ["specialize", "wait", "cached", "clear_cache", "cache_dir", "loaded",
           "JitError", "ToolchainError", "CompileError", "JitWarning", "enable"]


def cached() -> list[dict]:
    """The cache's entries: shape, backend, kernels, compiler, flags, status, folder."""
    return _cache.entries()


def clear_cache() -> int:
    """Removes every cached module; returns how many there were."""
    return _cache.clear()


def cache_dir():
    """The folder holding the run-time modules (``$INVERSEFLOW_CACHE/jit``)."""
    return _cache.jit_dir()


def enable(on: bool = True) -> None:
    """Background specialization of unspecialized shapes, as ``INVERSEFLOW_JIT=1`` does."""
    _auto.enable(on)


if _auto.requested_by_environment():
    _auto.enable(True)
