"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, https://github.com/zalandoresearch/fashion-mnist).

Read from the Debian package ``dataset-fashion-mnist``, which installs the standard IDX
files in ``/usr/share/datasets/fashion-mnist/``: ``train-images-idx3-ubyte.gz`` (60,000
images) and ``t10k-images-idx3-ubyte.gz`` (10,000), each 28x28 -> (N, 1, 28, 28).
``data_dir`` overrides the folder (the ``.gz`` files or uncompressed ones without ``.gz``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ._base import Dataset, DatasetNotFoundError, as_path, to_nchw
from .idx import read_idx_images

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAIN_FILE = "train-images-idx3-ubyte.gz"
TEST_FILE = "t10k-images-idx3-ubyte.gz"


def _find(folder: Path, name: str, from_default: bool) -> Path:
    for candidate in (folder / name, folder / name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    how = (
        "install it with: apt-get install dataset-fashion-mnist"
        if from_default
        else f"put {TRAIN_FILE} and {TEST_FILE} there (or apt-get install dataset-fashion-mnist "
        f"and leave --data-dir unset to use {DEFAULT_DIR})"
    )
    raise DatasetNotFoundError(f"Fashion-MNIST: {folder / name} not found; {how}")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    folder = DEFAULT_DIR if data_dir is None else as_path(data_dir)
    splits = []
    for name in (TRAIN_FILE, TEST_FILE):
        path = _find(folder, name, data_dir is None)
        images = read_idx_images(path)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{path}: Fashion-MNIST images must be 28x28, got {images.shape[1:]}")
        splits.append(to_nchw(images, (1, 28, 28)))
    return Dataset("fashion-mnist", *splits)
