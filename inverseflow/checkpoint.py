"""Atomic checkpoint and JSON writes: a crash mid-write never leaves a torn file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_checkpoint(state: dict, path) -> Path:
    return _atomic(Path(path), lambda handle: torch.save(state, handle))


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable inverseflow checkpoint: {exc}") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ValueError(f"{path} is not an inverseflow checkpoint (missing model state)")
    return state


def save_json(data: dict, path) -> Path:
    text = json.dumps(data, indent=2).encode()
    return _atomic(Path(path), lambda handle: handle.write(text))
