"""CIFAR-10 (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html), "python version".

No package registry carries it: download ``cifar-10-python.tar.gz`` from the page above,
unpack it, and pass the folder that contains ``cifar-10-batches-py/`` (or that folder
itself) as ``data_dir``. Files: ``data_batch_1`` .. ``data_batch_5`` (train, 50,000
images) and ``test_batch`` (10,000), each a pickle (``encoding='bytes'``) of a dict whose
``b'data'`` is a uint8 array (N, 3072) with each row the R, G, B planes of a 32x32 image
(CHW order) and ``b'labels'`` a list of N ints. Images -> (N, 3, 32, 32).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._base import Dataset, DatasetNotFoundError, as_path, load_array_pickle, to_nchw

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
_HOW = (
    "download CIFAR-10 python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
    f"unpack cifar-10-python.tar.gz and pass --data-dir DIR containing {FOLDER}/"
)


def _batch_dir(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        raise DatasetNotFoundError(f"CIFAR-10 needs a data directory: {_HOW}")
    root = as_path(data_dir)
    for folder in (root / FOLDER, root):
        if (folder / TRAIN_FILES[0]).is_file():
            missing = [n for n in (*TRAIN_FILES, TEST_FILE) if not (folder / n).is_file()]
            if missing:
                raise DatasetNotFoundError(f"CIFAR-10: {folder} lacks {', '.join(missing)}; {_HOW}")
            return folder
    raise DatasetNotFoundError(f"CIFAR-10: no {FOLDER}/{TRAIN_FILES[0]} under {root}; {_HOW}")


def read_cifar_batch(path: Path) -> np.ndarray:
    """One CIFAR-10 python batch -> its uint8 ``data`` array (N, 3072)."""
    with open(path, "rb") as f:
        batch = load_array_pickle(f, path, encoding="bytes")
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else repr(type(data))
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {desc}")
    if labels is not None and len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data


def load_cifar10(data_dir: str | os.PathLike | None = None) -> Dataset:
    folder = _batch_dir(data_dir)
    train = np.concatenate([read_cifar_batch(folder / n) for n in TRAIN_FILES])
    test = read_cifar_batch(folder / TEST_FILE)
    return Dataset("cifar10", to_nchw(train, (3, 32, 32)), to_nchw(test, (3, 32, 32)))
