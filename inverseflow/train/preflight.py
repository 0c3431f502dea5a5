"""Checks that run before any work: the device and the output paths. A run that would
die at its first checkpoint (a file where the run folder should be, a read-only folder)
fails at start-up instead, with a message that names the user's path, never a
temporary file's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def check_device(device: str, flag: str = "--device") -> torch.device:
    """The torch device for ``device`` ('cpu' or 'cuda[:N]'), if this machine has it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} must be 'cpu' or 'cuda', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag} must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device} was asked for, but torch sees no CUDA device "
                             "(a CPU-only torch, or no GPU/driver); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return dev


def prepare_run_folder(out, flag: str = "--out") -> Path:
    """Creates the run folder ``out`` if needed and proves that files can be written in it."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    _make_folder(path, flag)
    _check_writable(path, flag)
    return path


def missing_folders(out) -> list[Path]:
    """The folders that creating ``out`` would make, deepest first."""
    path = Path(out).absolute()
    return [folder for folder in (path, *path.parents) if not folder.exists()]


def remove_empty_folders(folders) -> None:
    """Removes ``folders`` (deepest first) while they are empty: what a run that failed
    before writing anything created."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:   # not empty, or gone: keep it and everything above
            return


def check_tensorboard(out, flag: str = "--tensorboard") -> None:
    """For a run that logs to OUT/tensorboard: that path can be a folder, and the
    tensorboard package is installed; checked before any data or model is loaded."""
    from .tensorboard_log import check_available

    path = Path(out) / "tensorboard"
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"{flag} writes to the folder {path}, but {folder} is a file; "
                                 "move it or choose another --out")
            break
    check_available()


def prepare_output_file(out, flag: str = "--out") -> Path:
    """For an output file: its folder is created if missing; it must not be a folder."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name such as {path / 's.png'}")
    what = f"the folder {path.parent} of {flag} {path}"
    _make_folder(path.parent, flag, what)
    _check_writable(path.parent, flag, what)
    return path


def _make_folder(folder: Path, flag: str, what: str | None = None) -> None:
    what = what or f"{flag} {folder}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot create {what}: a file is in the way of a folder on that "
                         "path") from None
    except OSError as exc:
        raise ValueError(f"cannot create {what}: {exc.strerror or exc}") from None


def _check_writable(folder: Path, flag: str, what: str | None = None) -> None:
    what = what or f"{flag} {folder}"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write files in {what}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write files in {what}: permission denied")
