"""Checkpoints: atomic writes, and loading that treats the file as data, never as code.

A checkpoint is unpickled with ``weights_only=True``, so a crafted file cannot run code
(``torch.load`` refuses every global outside its allow-list). Before that, the zip archive's
directory is read without unpacking anything: ``torch.save`` stores every record
uncompressed, so a compressed record, or records declaring more bytes than the file has,
are refused (``torch.load`` would allocate the declared size first). After it, the
unpickled structure is walked with a budget (lists nested from shared references expand
to billions of values from a few hundred bytes), its types and sizes are checked against
what :func:`save_checkpoint`'s callers write, and the model's tensors must be finite. A
foreign, damaged or hostile file fails with one message naming the file and the problem,
never a ``KeyError``, a hang or a traceback; messages quote at most a few values.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import torch

from .guards import all_finite, nonfinite_names
from .quoting import clip, quote

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
    pickle_bytes = check_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign, or holding objects other than data
        text = str(exc).strip()
        reason = clip(text.splitlines()[0], 300) if text else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable inverseflow checkpoint "
                              f"(it was loaded as data only, weights_only=True): {reason}"
                              ) from None
    check_checkpoint(state, path, max_values=2 * pickle_bytes + 10_000)
    return state


def check_archive(path) -> int:
    """Checks the zip directory of a ``torch.save`` file without unpacking a record, and
    returns the size of its pickle in bytes. ``torch.save`` stores records uncompressed, so
    their declared sizes add up to less than the file's; a compressed record (which could
    unpack to gigabytes) or a declared size beyond the file is refused."""
    path = Path(path)
    file_bytes = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except Exception as exc:   # zipfile raises BadZipFile, but also ValueError, EOFError...
        raise CheckpointError(f"{path} is not an inverseflow checkpoint: not the zip archive "
                              f"torch.save writes ({type(exc).__name__}: {clip(exc, 120)})") from None
    declared = 0
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path} is not a checkpoint torch.save wrote: its record "
                f"{quote(record.filename, 80)} is compressed (zip method "
                f"{record.compress_type}), which torch.save never does, and would unpack to "
                f"{record.file_size} bytes from {record.compress_size}; refused unread")
        declared += record.file_size
        if record.file_size != record.compress_size or declared > file_bytes:
            raise CheckpointError(
                f"{path} is malformed: its zip records declare more bytes ({declared} so far, "
                f"record {quote(record.filename, 80)}) than the file has ({file_bytes}); "
                "refused unread")
    pickles = [r.file_size for r in records if r.filename.rpartition("/")[2] == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{path} is not an inverseflow checkpoint: a torch.save archive "
                              f"has one data.pkl record, this has {len(pickles)}")
    return pickles[0]


# The walk of the unpickled structure: how deep containers may nest, and the largest
# ints and strings (ours are step counts, sizes and file paths).
_MAX_DEPTH = 12
_MAX_INT_BITS = 63
# The largest integer a checkpoint holds: every count that a run records (steps, batch
# size, ...) is bounded by it where it is read, so that no run writes a file it refuses.
MAX_INT = 2**_MAX_INT_BITS - 1
_MAX_STRING = 4096


def _check_values(state, path, max_values: int) -> None:
    """Walks every container of ``state`` without recursion, counting each value every time
    it is reached, so that a structure of shared references is refused after
    ``max_values`` steps instead of being expanded."""
    stack, seen = [(state, 0)], 1
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
                raise CheckpointError(f"{path} is malformed: it holds a "
                                      f"{value.bit_length()}-bit integer")
            if isinstance(value, str) and len(value) > _MAX_STRING:
                raise CheckpointError(f"{path} is malformed: it holds a string of "
                                      f"{len(value)} characters")
            continue
        if depth >= _MAX_DEPTH:
            raise CheckpointError(f"{path} is malformed: its containers nest more than "
                                  f"{_MAX_DEPTH} deep (a training run's state nests 4 deep)")
        seen += len(children)
        if seen > max_values:
            raise CheckpointError(
                f"{path} is malformed: its structure reaches more than {max_values} values, "
                "more than its pickle could hold without containers shared many times over "
                "(which expand exponentially); torch.save of a training run writes none")
        stack.extend((child, depth + 1) for child in children)


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _check_config(config: dict, name: str, path, nested: tuple = ()) -> None:
    """A configuration maps short names to numbers, strings, None, short lists of them,
    or (for the keys in ``nested``) such a configuration."""
    if len(config) > 100:
        raise CheckpointError(f"{path} is malformed: {name} has {len(config)} entries")
    for key, value in config.items():
        if not isinstance(key, str) or len(key) > 100:
            raise CheckpointError(f"{path} is malformed: {name} has a key that is not a short "
                                  f"name but a {type(key).__name__}")
        if key in nested and isinstance(value, dict):
            _check_config(value, f"{name}[{key!r}]", path)
        elif not (_is_scalar(value) or isinstance(value, (list, tuple)) and len(value) <= 8
                  and all(_is_scalar(v) for v in value)):
            raise CheckpointError(
                f"{path} is malformed: {name}[{key!r}] is a {type(value).__name__} "
                f"{quote(value, 60)}, where a number, a string, None or a short list of them "
                "belongs")


def check_checkpoint(state, path, max_values: int = 10**7) -> None:
    """Raises :class:`CheckpointError` unless ``state`` has our checkpoint's structure and
    finite model tensors. ``max_values`` bounds the walk of its containers."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an inverseflow checkpoint: it holds a "
                              f"{type(state).__name__}, not a dict")
    _check_values(state, path, max_values)
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
                              f"entries {quote(bad_tensors[:3])}")
    _check_config(state["model_config"], "model_config", path)
    _check_config(state["train_config"], "train_config", path, nested=("model_options",))
    config = state["model_config"]
    if not isinstance(config.get("model"), str) or not isinstance(config.get("image_shape"),
                                                                   (list, tuple)):
        raise CheckpointError(f"{path} is malformed: model_config needs a 'model' name and "
                              "an 'image_shape'")
    if state["step"] < 0 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                    and math.isfinite(x) for x in state["losses"]):
        raise CheckpointError(f"{path} is malformed: a negative step or non-numeric losses "
                              "(each loss of a run is a finite number)")
    for key in ("train_seconds", "initial_test_bpd"):
        if state[key] is not None and not math.isfinite(state[key]):
            raise CheckpointError(f"{path} is malformed: {key} is not finite")
    if not all_finite(state["model"].values()):
        bad = nonfinite_names(state["model"].items())
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path} holds NaN or infinite values in the model tensor(s) "
            f"{', '.join(quote(name, 100) for name in bad[:3])}{more}: its weights cannot be "
            "evaluated or sampled; use an earlier checkpoint")


def save_json(data: dict, path) -> Path:
    text = json.dumps(data, indent=2).encode()
    return _atomic(Path(path), lambda handle: handle.write(text))
