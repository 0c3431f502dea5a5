"""Whom the JIT cache trusts: the current user's folders and files that no one else can write.

A cached module is native code that the process loads and runs. The SHA-256 in an entry's
manifest only catches accidents (a truncated or overwritten module): whoever can write an
entry can rewrite its manifest too, and the cache key is computed from public inputs. So,
as pip does for its cache, the cache root, its ``jit/`` folder, each entry and the entry's
manifest and module are used only when they belong to the current user and are not
writable by the group or others. Each is checked with ``lstat``: a symbolic link is never
followed, it is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._errors import JitError

FOLDER_FIX = ("run `chmod go-w {path}` if only you have written to it, or set "
              "INVERSEFLOW_CACHE (or XDG_CACHE_HOME) to a folder of your own")
OWNER_FIX = "set INVERSEFLOW_CACHE (or XDG_CACHE_HOME) to a folder of your own"
ENTRY_FIX = "remove the entry (`rm -r {path}`); it is compiled again when next needed"


class UntrustedCacheError(JitError):
    """A cache folder or file that someone else could have written: it is not used."""


def problem(path: Path, folder: bool = True) -> str | None:
    """Why ``path`` may not be trusted, or None when it may (or does not exist)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if folder and not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if not folder and not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})"
    writers = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
               if info.st_mode & bit]
    if writers:
        return (f"is writable by {' and '.join(writers)} "
                f"(mode {stat.S_IMODE(info.st_mode):04o})")
    return None


def check(path: Path, folder: bool = True, entry: Path | None = None) -> None:
    """Raises UntrustedCacheError naming ``path``, the reason and the fix; ``entry`` is the
    cache entry ``path`` belongs to (the fix is then to remove that entry)."""
    reason = problem(path, folder)
    if reason is None:
        return
    if entry is not None:
        fix = ENTRY_FIX.format(path=entry)
    elif reason.startswith("is writable"):
        fix = FOLDER_FIX.format(path=path)
    else:
        fix = OWNER_FIX
    what = "this JIT cache entry" if entry is not None else "the JIT cache"
    raise UntrustedCacheError(f"{what} is not used: {path} {reason}, so someone else could "
                              f"make this process load their code; {fix}")
