"""Specializing new layer shapes at run time, with a safe on-disk cache (DESIGN.md §11).

``codegen/specs.toml`` lists the layer shapes that the build specializes; a shape whose
(kernel, group channels) no listed layer shares runs the generic kernel. :func:`specialize`
renders the same templates for one more shape's instantiation (keyed, like the build's, by
kernel sizes and group channels, so it serves every corner and group pattern of that group
size), compiles them with the build's compiler and flags, caches the module and adds it to
the dispatch::

    import inverseflow
    inverseflow.jit.specialize(3, 16, "TL")          # then inv_conv2d of that shape uses it

With ``INVERSEFLOW_JIT=1`` in the environment, the dispatch does this by itself, in the
background, the first time it meets an unspecialized shape (see :mod:`._auto`).

The cache lives in ``$INVERSEFLOW_CACHE`` (default ``$XDG_CACHE_HOME/inverseflow``, else
``~/.cache/inverseflow``); its key covers the shape, the kernel headers, templates and
rendered sources, the compiler and its version, and the flags. It is private to its user:
a cache folder, entry or module that another user owns or could write is never loaded
(:mod:`._trust`). ``inverseflow jit --list`` and ``inverseflow jit --clear`` manage it.
"""

from __future__ import annotations

from . import _auto, _cache
from ._auto import wait
from ._cache import CACHE_ENV, Cleared
from ._build import loaded, specialize
from ._errors import CompileError, JitError, JitWarning, ToolchainError
from ._trust import UntrustedCacheError

__all__ = ["specialize", "wait", "cached", "cache_lines", "cached_specializations", "clear_cache", "cache_dir", "loaded",
           "JitError", "ToolchainError", "CompileError", "UntrustedCacheError", "JitWarning",
           "enable", "CACHE_ENV", "Cleared"]


def cached() -> list[dict]:
    """The cache's entries: shape, backend, kernels, compiler, flags, status (``ok``,
    ``corrupt: ...``, ``untrusted: ...``), folder. UntrustedCacheError when the cache's
    root or ``jit/`` folder may be written by someone else."""
    return _cache.entries()


def cache_lines(entries: list[dict] | None = None) -> list[str]:
    """One line per cached specialization, for ``inverseflow jit --list`` and ``info``."""
    if entries is None:
        try:
            entries = cached()
        except UntrustedCacheError as exc:
            return [str(exc)]
    if not entries:
        return [f"no run-time specializations cached in {cache_dir()}"]
    lines = [f"{len(entries)} run-time specialization(s) cached in {cache_dir()}:"]
    for e in entries:
        if e["status"] != "ok":
            lines.append(f"    {e['stem']}: {e['status']}")
            continue
        lines.append(f"    {e['stem']} [{e['backend']}] {len(e['kernels'])} kernels, "
                     f"{e['compiler_version']}, compiled in {e['compile_seconds']} s on "
                     f"{e['created']}")
    return lines


def cached_specializations() -> dict[str, list[dict]]:
    """The sound cache entries' kernels per backend, in the form ``inverseflow info`` lists
    the built ones (name, kernel, group channels, the layer shapes served, dtype, direction),
    with source "jit"."""
    out: dict[str, list[dict]] = {}
    try:
        entries = cached()
    except UntrustedCacheError:
        return out   # nothing of it would be loaded
    for entry in entries:
        if entry["status"] != "ok":
            continue
        out.setdefault(entry["backend"], []).extend(
            {"name": s["name"], "kernel": entry["kernel"],
             "group_channels": entry["group_channels"], "serves": entry["serves"],
             "dtype": s["dtype"], "direction": s["direction"],
             "source": "jit"}
            for s in entry["specializations"])
    return out


def clear_cache() -> Cleared:
    """Removes the cached modules: only entries with a valid manifest of ours, each under
    its lock, never following a symbolic link. Returns ``Cleared(removed, left)``: how
    many were removed and, for anything else in the folder, why it stays.
    UntrustedCacheError (nothing is touched) when the cache's root or ``jit/`` folder may
    be written by someone else or is a symbolic link."""
    return _cache.clear()


def cache_dir():
    """The folder holding the run-time modules (``$INVERSEFLOW_CACHE/jit``)."""
    return _cache.jit_dir()


def enable(on: bool = True) -> None:
    """Background specialization of unspecialized shapes, as ``INVERSEFLOW_JIT=1`` does."""
    _auto.enable(on)


if _auto.requested_by_environment():
    _auto.enable(True)
