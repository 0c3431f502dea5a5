"""Downsampled ImageNet 32x32 and 64x64 (Chrabaszcz, Loshchilov & Hutter, 2017, "A
Downsampled Variant of ImageNet as an Alternative to the CIFAR datasets",
arXiv:1707.08819), the npz version from https://image-net.org/download-images.

No package registry carries it: download and unpack the "Imagenet32_train_npz" and
"Imagenet32_val_npz" archives (64x64: "Imagenet64_train_part1_npz",
"Imagenet64_train_part2_npz", "Imagenet64_val_npz") and pass a folder above them as
``data_dir``; it is searched recursively for ``train_data_batch_1.npz`` ..
``train_data_batch_10.npz`` (train, 1,281,167 images) and ``val_data.npz`` (the test split,
50,000). Each npz holds ``data``, uint8 (N, 3*S*S) with each row the R, G, B planes of an
SxS image (CHW order), ``labels`` and, in train files, ``mean``. Images -> (N, 3, S, S).

Both resolutions use the same file names; when ``data_dir`` holds both, each file is
chosen by its row length (read from the npy header, without loading the array).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ._base import Dataset, DatasetNotFoundError, as_path, to_nchw

TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
VAL_FILE = "val_data.npz"


def _how(size: int) -> str:
    parts = (
        "Imagenet32_train_npz and Imagenet32_val_npz"
        if size == 32
        else "Imagenet64_train_part1_npz, Imagenet64_train_part2_npz and Imagenet64_val_npz"
    )
    return (
        f"download the downsampled ImageNet {size}x{size} npz archives ({parts}) from "
        "https://image-net.org/download-images (needs an ImageNet account), unpack them and "
        "pass --data-dir DIR containing them (searched recursively)"
    )


def npz_data_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``data`` array in an npz, read from its header only."""
    try:
        with zipfile.ZipFile(path) as z, z.open("data.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except KeyError as e:
        raise ValueError(f"{path}: npz has no 'data' array") from e
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a valid npz file ({type(e).__name__}: {e})") from e
    if fortran:
        raise ValueError(f"{path}: 'data' is stored in Fortran order; expected C order (N, 3*S*S)")
    return shape, dtype


def _row_ok(shape, dtype, size: int) -> bool:
    return len(shape) == 2 and shape[1] == 3 * size * size and dtype == np.uint8


def _locate(root: Path, size: int) -> dict[str, tuple[Path, int]]:
    """file name -> (path, number of rows) for every needed file, searching ``root`` recursively."""
    wanted = set(TRAIN_FILES) | {VAL_FILE}
    found: dict[str, list[Path]] = {}
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=True):
        for name in wanted.intersection(filenames):
            found.setdefault(name, []).append(Path(dirpath) / name)
    missing = sorted(wanted - found.keys(), key=lambda n: (n != VAL_FILE, len(n), n))
    if missing:
        raise DatasetNotFoundError(f"ImageNet{size}: {', '.join(missing)} not found under {root}; {_how(size)}")
    chosen = {}
    for name, paths in found.items():
        headers = [(p, *npz_data_shape(p)) for p in sorted(paths)]
        fits = [(p, shape[0]) for p, shape, dtype in headers if _row_ok(shape, dtype, size)]
        if len(fits) > 1:
            raise ValueError(
                f"ImageNet{size}: {name} found more than once with rows of 3*{size}*{size} bytes: "
                + ", ".join(str(p) for p, _ in fits) + "; pass a --data-dir holding one copy"
            )
        if not fits:
            desc = "; ".join(f"{p}: {dtype} {shape}" for p, shape, dtype in headers)
            raise ValueError(
                f"ImageNet{size}: 'data' must be uint8 of shape (N, {3 * size * size}) = (N, 3*{size}*{size}); "
                f"got {desc} (wrong resolution?)"
            )
        chosen[name] = fits[0]
    return chosen


def _read_into(out: np.ndarray, path: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        data = z["data"]
    if data.shape != out.shape or data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 {out.shape}")
    out[...] = data


def _stack(files: list[tuple[Path, int]], size: int) -> np.ndarray:
    """Concatenates the ``data`` arrays into one preallocated array (peak memory: total + one file)."""
    out = np.empty((sum(n for _, n in files), 3 * size * size), dtype=np.uint8)
    start = 0
    for path, n in files:
        _read_into(out[start : start + n], path)
        start += n
    return out


def load_imagenet(size: int, data_dir: str | os.PathLike | None = None) -> Dataset:
    if size not in (32, 64):
        raise ValueError(f"size must be 32 or 64, got {size!r}")
    if data_dir is None:
        raise DatasetNotFoundError(f"ImageNet{size} needs a data directory: {_how(size)}")
    root = as_path(data_dir)
    if not root.is_dir():
        raise DatasetNotFoundError(f"ImageNet{size}: {root} is not a directory; {_how(size)}")
    files = _locate(root, size)
    train = _stack([files[n] for n in TRAIN_FILES], size)
    test = _stack([files[VAL_FILE]], size)
    shape = (3, size, size)
    return Dataset(f"imagenet{size}", to_nchw(train, shape), to_nchw(test, shape))
