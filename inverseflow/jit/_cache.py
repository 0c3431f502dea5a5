"""The on-disk cache of run-time modules: one folder per key, published atomically.

Layout under ``$INVERSEFLOW_CACHE`` (default ``$XDG_CACHE_HOME/inverseflow``, else
``~/.cache/inverseflow``)::

    jit/<stem>_<backend>_<key>/   manifest.json, the module, its rendered sources, build.log
    jit/.locks/<entry>.lock       one compile per key at a time (DDP ranks, threads)
    jit/.tmp/                     compiles in progress, renamed into place when complete
    jit/.logs/                    logs of failed compiles

The cache is private to its user: folders are created 0700 (less where the umask says so)
and every folder and file is used only when :mod:`._trust` allows it. An entry is written
in ``.tmp`` and renamed into place only once its manifest (written last) names the
module's SHA-256, so a reader sees a complete entry or none. An entry whose manifest is
missing, unreadable or incomplete, or whose module does not match the recorded hash (a
truncated or overwritten file: the hash is for accidents, the trust rules are for other
users), is corrupt: it is moved aside and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path

import filelock

from . import _trust

CACHE_ENV = "INVERSEFLOW_CACHE"
# 2: entries are instantiations (kernel, group channels), not layer shapes (DESIGN.md §17).
FORMAT = 2                # bump when the layout or the module's interface changes
LOCK_TIMEOUT_S = 1800     # a compile takes seconds to a minute; waiting longer means a hang
MANIFEST = "manifest.json"


BACKENDS = ("cpu", "cuda")
# The manifest fields that readers use, with their types: an entry lacking one is corrupt.
MANIFEST_FIELDS = {"key": str, "stem": str, "backend": str, "module": str, "library": str,
                   "library_sha256": str, "kernel": str, "group_channels": int, "serves": str,
                   "kernels": list, "specializations": list, "compile_seconds": (int, float),
                   "created": str, "compiler_version": str}


def cache_root() -> Path:
    """``$INVERSEFLOW_CACHE``, else ``$XDG_CACHE_HOME/inverseflow`` (an absolute one, as the
    XDG specification says), else ``~/.cache/inverseflow``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "inverseflow"


def jit_dir() -> Path:
    return cache_root() / "jit"


def _private_dir(path: Path) -> Path:
    """``path``, created 0700 when missing (the umask may narrow that, nothing widens it),
    and checked either way: a folder planted before us is refused, never adopted."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    _trust.check(path)
    return path


def trusted_jit_dir() -> Path:
    """The ``jit/`` folder, created when missing; UntrustedCacheError unless the root and
    ``jit/`` are the user's own and no one else can write them."""
    root = cache_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(root)
    return _private_dir(root / "jit")


def existing_jit_dir() -> Path | None:
    """The ``jit/`` folder without creating anything: None when there is none;
    UntrustedCacheError when the root or ``jit/`` may not be trusted."""
    root = cache_root()
    _trust.check(root)
    if not root.exists():
        return None
    _trust.check(root / "jit")
    return root / "jit" if (root / "jit").exists() else None


def _service_dir(name: str) -> Path:
    return _private_dir(trusted_jit_dir() / name)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_key(payload: dict) -> str:
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())


def _manifest_problem(manifest, entry: Path) -> str | None:
    """What is wrong with a manifest's fields, or None: it must be one of ours for ``entry``."""
    if not isinstance(manifest, dict):
        return f"the manifest is a {type(manifest).__name__}, not an object"
    if manifest.get("format") != FORMAT:
        return f"cache format {manifest.get('format')!r}, expected {FORMAT}"
    for field, kind in MANIFEST_FIELDS.items():
        if field not in manifest:
            return f"the manifest lacks {field!r}"
        if not isinstance(manifest[field], kind) or isinstance(manifest[field], bool):
            return f"the manifest's {field!r} is a {type(manifest[field]).__name__}"
    if manifest["backend"] not in BACKENDS:
        return f"the manifest names an unknown backend {manifest['backend']!r}"
    if manifest["module"] != entry.name:
        return f"the manifest names the module {manifest['module']!r}, not {entry.name!r}"
    library = manifest["library"]
    if Path(library).name != library or library in ("", ".", ".."):
        return f"the manifest's library {manifest['library']!r} is not a file name"
    if not all(isinstance(k, str) for k in manifest["kernels"]) or not all(
            isinstance(s, dict) and all(isinstance(s.get(f), str)
                                        for f in ("name", "dtype", "direction"))
            for s in manifest["specializations"]):
        return "the manifest's kernels or specializations are malformed"
    return None


def read_manifest(entry: Path) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` when ``entry`` holds a valid manifest of ours, ``(None, None)``
    when there is no entry, ``(None, reason)`` otherwise. UntrustedCacheError when the
    entry or its manifest is not the user's own or others can write it."""
    if not os.path.lexists(entry):
        return None, None
    _trust.check(entry, entry=entry)
    _trust.check(entry / MANIFEST, folder=False, entry=entry)
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"it has no {MANIFEST}"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest ({type(exc).__name__}: {exc})"
    problem = _manifest_problem(manifest, entry)
    return (None, problem) if problem else (manifest, None)


def inspect(entry: Path, key: str | None = None) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` for a sound entry, ``(None, None)`` when there is none, and
    ``(None, reason)`` for a corrupt one; UntrustedCacheError for one someone else could
    have written (see :func:`read_manifest`)."""
    manifest, problem = read_manifest(entry)
    if manifest is None:
        return None, problem
    if key is not None and manifest["key"] != key:
        return None, "its manifest names another key"
    library = entry / manifest["library"]
    _trust.check(library, folder=False, entry=entry)
    if not library.is_file():
        return None, f"the module {library.name} is missing"
    if sha256_file(library) != manifest["library_sha256"]:
        return None, f"the module {library.name} does not match its recorded SHA-256"
    return manifest, None


def lock(entry_name: str, timeout: float = LOCK_TIMEOUT_S) -> filelock.FileLock:
    return filelock.FileLock(str(_service_dir(".locks") / f"{entry_name}.lock"),
                             timeout=timeout)


def new_workspace(entry_name: str) -> Path:
    """A private (0700) folder to compile in, on the same file system as the entries."""
    return Path(tempfile.mkdtemp(prefix=f"{entry_name}.", dir=_service_dir(".tmp")))


def _no_write_but_owner(path: Path) -> None:
    """Narrows a file the compiler or we wrote under a loose umask (e.g. 0777 under umask
    0): the trust check refuses a module or manifest that the group or others could write."""
    path.chmod(stat.S_IMODE(os.lstat(path).st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def write_manifest(folder: Path, manifest: dict) -> None:
    library = folder / manifest["library"]
    _no_write_but_owner(library)
    manifest = dict(manifest, format=FORMAT, library_sha256=sha256_file(library))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _no_write_but_owner(folder / MANIFEST)


def publish(workspace: Path, entry: Path) -> None:
    """Renames a complete workspace into place; a sound entry already there wins."""
    try:
        os.rename(workspace, entry)
    except OSError:
        if inspect(entry)[0] is None:
            raise
        shutil.rmtree(workspace, ignore_errors=True)


def discard(entry: Path) -> bool:
    """Removes an entry without ever exposing half of it: move it aside, then delete.
    False when there was none (e.g. another process removed it first)."""
    trash = _service_dir(".tmp") / f"{entry.name}.discarded.{uuid.uuid4().hex}"
    try:
        os.rename(entry, trash)
    except FileNotFoundError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def save_failure_log(entry_name: str, text: str) -> Path:
    path = _service_dir(".logs") / f"{entry_name}.log"
    path.write_text(text)
    return path


def _candidates(root: Path):
    """The names in ``jit/`` that could be entries: folders and links, not the service
    folders; with the ``lstat`` mode (None for one that vanished while listing)."""
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            yield path


def entries() -> list[dict]:
    """Every entry in the cache with its manifest fields, its folder and its state
    (``ok``, ``corrupt: ...`` or ``untrusted: ...``); UntrustedCacheError when the cache's
    root or ``jit/`` folder may not be trusted."""
    root = existing_jit_dir()
    found = []
    for folder in _candidates(root) if root else []:
        try:
            manifest, problem = inspect(folder)
        except _trust.UntrustedCacheError as exc:
            manifest, problem = None, f"untrusted: {exc}"
        else:
            if manifest is None and problem is None:   # removed while listing
                continue
            problem = problem and f"corrupt: {problem}"
        row = dict(manifest or {}, path=str(folder), status=problem or "ok")
        row.setdefault("stem", folder.name)
        found.append(row)
    return found


@dataclasses.dataclass
class Cleared:
    """What :func:`clear` did: the entries removed, and what it left, with the reason."""

    removed: int = 0
    left: list[str] = dataclasses.field(default_factory=list)


def _clear_entry(folder: Path) -> tuple[bool, str | None]:
    """Removes one entry of ours under its lock: ``(removed, why it stays)``; neither when
    another process removed it first."""
    reason = _trust.problem(folder)
    if reason:
        return False, f"{reason}; not an entry of ours"
    try:
        manifest, problem = read_manifest(folder)
    except _trust.UntrustedCacheError:
        return False, "its manifest may be written by someone else; not an entry of ours"
    if manifest is None:
        return False, problem and f"{problem}; not an entry of ours"
    try:
        with lock(folder.name, timeout=0):
            return discard(folder), None
    except filelock.Timeout:
        return False, "a compile holds its lock (run --clear again when it is done)"


def clear() -> Cleared:
    """Removes the entries of ours (a valid manifest, the user's own, nothing followed
    through a symbolic link), each under its lock; other folders stay and are reported.
    UntrustedCacheError when the cache's root or ``jit/`` folder may not be trusted."""
    result = Cleared()
    root = existing_jit_dir()
    if root is None:
        return result
    for folder in _candidates(root):
        removed, why = _clear_entry(folder)
        result.removed += removed
        if why:
            result.left.append(f"{folder}: {why}")
    for name in (".logs", ".tmp"):
        reason = _trust.problem(root / name)
        if reason:
            result.left.append(f"{root / name}: {reason}")
    if (root / ".logs").is_dir() and not _trust.problem(root / ".logs"):
        shutil.rmtree(root / ".logs", ignore_errors=True)
    if (root / ".tmp").is_dir() and not _trust.problem(root / ".tmp"):
        # Workspaces of compiles still running elsewhere stay; those of dead processes go.
        stale_before = time.time() - LOCK_TIMEOUT_S
        for workspace in (root / ".tmp").iterdir():
            try:
                info = os.lstat(workspace)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode) and info.st_mtime < stale_before:
                shutil.rmtree(workspace, ignore_errors=True)
    return result
