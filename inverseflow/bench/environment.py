"""Where a benchmark ran: one record that every benchmark's JSON carries as
``environment`` (date, torch, Python, machine, threads, device, GPU, commit).

The commit is the one the compiled kernels were built from, recorded by CMake at build
time (``commit``, and ``commit_dirty`` when tracked files differed from it), or None. It is
not asked of git at run time: next to an installed package that would answer for whatever
repository happens to contain it (a project's ``.venv``), not for this package.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

from ..ops import _backends


def environment(device: str) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "processor": platform.processor(),
           "threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    build = _backends.build_info()
    env["commit"] = build.get("commit")
    env["commit_dirty"] = build.get("commit_dirty")
    return env


def write_json(result: dict, folder: Path, name: str) -> Path:
    """Writes ``result`` as indented JSON to ``folder/name`` (creating ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
