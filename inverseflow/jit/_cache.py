"""The on-disk cache of run-time modules: one folder per key, published atomically.

Layout under ``$INVERSEFLOW_CACHE`` (default ``~/.cache/inverseflow``)::

    jit/<stem>_<backend>_<key>/   manifest.json, the module, its rendered sources, build.log
    jit/.locks/<entry>.lock       one compile per key at a time (DDP ranks, threads)
    jit/.tmp/                     compiles in progress, renamed into place when complete
    jit/.logs/                    logs of failed compiles

An entry is written in ``.tmp`` and renamed into place only once its manifest (written
last) names the module's SHA-256, so a reader sees a complete entry or none. An entry
whose manifest is missing or unreadable, or whose module does not match the recorded
hash (a truncated or overwritten file), is corrupt: it is moved aside and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import filelock

CACHE_ENV = "INVERSEFLOW_CACHE"
FORMAT = 1                # bump when the layout or the module's interface changes
LOCK_TIMEOUT_S = 1800     # a compile takes seconds to a minute; waiting longer means a hang
MANIFEST = "manifest.json"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "inverseflow")


def jit_dir() -> Path:
    return cache_root() / "jit"


def _service_dir(name: str) -> Path:
    path = jit_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def inspect(entry: Path, key: str | None = None) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` for a sound entry, ``(None, None)`` when there is none, and
    ``(None, reason)`` for a corrupt one."""
    if not entry.exists():
        return None, None
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        library = entry / manifest["library"]
        recorded = manifest["library_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable manifest ({type(exc).__name__}: {exc})"
    if manifest.get("format") != FORMAT:
        return None, f"cache format {manifest.get('format')}, expected {FORMAT}"
    if key is not None and manifest.get("key") != key:
        return None, "its manifest names another key"
    if not library.is_file():
        return None, f"the module {library.name} is missing"
    if sha256_file(library) != recorded:
        return None, f"the module {library.name} does not match its recorded SHA-256"
    return manifest, None


def lock(entry_name: str) -> filelock.FileLock:
    return filelock.FileLock(str(_service_dir(".locks") / f"{entry_name}.lock"),
                             timeout=LOCK_TIMEOUT_S)


def new_workspace(entry_name: str) -> Path:
    """A private folder to compile in, on the same file system as the entries."""
    workspace = Path(tempfile.mkdtemp(prefix=f"{entry_name}.", dir=_service_dir(".tmp")))
    workspace.chmod(0o755)  # mkdtemp's 0700 would hide the entries of a shared cache
    return workspace


def write_manifest(folder: Path, manifest: dict) -> None:
    manifest = dict(manifest, format=FORMAT,
                    library_sha256=sha256_file(folder / manifest["library"]))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def publish(workspace: Path, entry: Path) -> None:
    """Renames a complete workspace into place; a sound entry already there wins."""
    try:
        os.rename(workspace, entry)
    except OSError:
        if inspect(entry)[0] is None:
            raise
        shutil.rmtree(workspace, ignore_errors=True)


def discard(entry: Path) -> None:
    """Removes an entry without ever exposing half of it: move it aside, then delete."""
    if not entry.exists():
        return
    trash = _service_dir(".tmp") / f"{entry.name}.discarded.{uuid.uuid4().hex}"
    os.rename(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_failure_log(entry_name: str, text: str) -> Path:
    path = _service_dir(".logs") / f"{entry_name}.log"
    path.write_text(text)
    return path


def entries() -> list[dict]:
    """Every entry in the cache with its manifest fields, its folder and its state."""
    root = jit_dir()
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        manifest, problem = inspect(folder)
        row = dict(manifest or {}, path=str(folder),
                   status="ok" if manifest else f"corrupt: {problem}")
        row.setdefault("stem", folder.name)
        found.append(row)
    return found


def clear() -> int:
    """Empties the cache; returns the number of entries removed."""
    root = jit_dir()
    if not root.is_dir():
        return 0
    count = sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in list(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            discard(folder)
    shutil.rmtree(root / ".logs", ignore_errors=True)
    # Workspaces of compiles still running elsewhere stay; those of dead processes go.
    stale_before = time.time() - LOCK_TIMEOUT_S
    for workspace in (root / ".tmp").iterdir() if (root / ".tmp").is_dir() else []:
        if workspace.stat().st_mtime < stale_before:
            shutil.rmtree(workspace, ignore_errors=True)
    return count
