"""Where a benchmark ran: one record that every benchmark's JSON carries as
``environment`` (date, torch, Python, machine, threads, device, GPU, commit)."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import torch


def environment(device: str) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "processor": platform.processor(),
           "threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env
