"""Checkpoints: atomic writes, and loading that treats the file as data, never as code.

A checkpoint is unpickled with ``weights_only=True``, so a crafted file cannot run code
(``torch.load`` refuses every global outside its allow-list). Its structure is then
checked against what :func:`save_checkpoint`'s callers write, so a foreign or damaged
file fails with one message naming the file and the problem, never a ``KeyError``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"

# Every key a training run writes, and the type its value must have.
_FIELDS = {
    "model": dict,
    "model_config": dict,
    "optimizer": dict,
    "step": int,
    "losses": list,
    "train_seconds": (int, float),
    "initial_test_bpd": (int, float, type(None)),
    "dataset": str,
    "train_config": dict,
}


class CheckpointError(ValueError):
    """A file that is not a sound inverseflow checkpoint."""


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # Name the user's file, not the temporary one it is written through.
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_checkpoint(state: dict, path) -> Path:
    return _atomic(Path(path), lambda handle: torch.save(state, handle))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Loads and checks a checkpoint; raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign, or holding objects other than data
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable inverseflow checkpoint "
                              f"(it was loaded as data only, weights_only=True): {reason}"
                              ) from None
    check_checkpoint(state, path)
    return state


def check_checkpoint(state, path) -> None:
    """Raises :class:`CheckpointError` unless ``state`` has our checkpoint's structure."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an inverseflow checkpoint: it holds a "
                              f"{type(state).__name__}, not a dict")
    missing = [key for key in _FIELDS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not an inverseflow checkpoint: missing "
                              f"{', '.join(repr(k) for k in missing)}")
    for key, kind in _FIELDS.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path} is malformed: {key!r} is a {type(value).__name__}")
    bad_tensors = [k for k, v in state["model"].items()
                   if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad_tensors:
        raise CheckpointError(f"{path} is malformed: the model state holds non-tensor "
                              f"entries {bad_tensors[:3]}")
    config = state["model_config"]
    if not isinstance(config.get("model"), str) or not isinstance(config.get("image_shape"),
                                                                   (list, tuple)):
        raise CheckpointError(f"{path} is malformed: model_config needs a 'model' name and "
                              "an 'image_shape'")
    if state["step"] < 0 or not all(isinstance(x, (int, float)) for x in state["losses"]):
        raise CheckpointError(f"{path} is malformed: a negative step or non-numeric losses")
    if not math.isfinite(state["train_seconds"]):
        raise CheckpointError(f"{path} is malformed: train_seconds is not finite")


def save_json(data: dict, path) -> Path:
    text = json.dumps(data, indent=2).encode()
    return _atomic(Path(path), lambda handle: handle.write(text))
