"""Shared pieces of the dataset loaders: the ``Dataset`` record, the not-found error,
and a restricted unpickler for the pickle-based formats (MNIST, CIFAR-10)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not installed or its files are not where they were looked for.

    The message says how to install the dataset or where to put its files."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images of one dataset as raw bytes 0..255.

    ``train`` and ``test`` are contiguous ``torch.uint8`` tensors of shape (N, C, H, W)."""

    name: str
    train: torch.Tensor
    test: torch.Tensor

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            t = getattr(self, split)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 4:
                raise TypeError(f"Dataset.{split} must be a 4-D torch.uint8 tensor (N, C, H, W)")
            if not t.is_contiguous():
                raise ValueError(f"Dataset.{split} must be contiguous")
        if self.train.shape[1:] != self.test.shape[1:]:
            raise ValueError(
                f"train and test image shapes differ: {tuple(self.train.shape[1:])} vs {tuple(self.test.shape[1:])}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train.shape[1:]
        return (int(c), int(h), int(w))

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"test={tuple(self.test.shape)}, dtype=uint8)"
        )


def to_nchw(images: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """(N, C*H*W) or (N, ...) uint8 array -> contiguous uint8 tensor (N, C, H, W), no copy if possible."""
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    arr = np.ascontiguousarray(images).reshape((images.shape[0], *shape))
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
        arr = arr.copy()
    return torch.from_numpy(arr).contiguous()


def as_path(data_dir: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(data_dir)))


# Pickles of numpy arrays (protocol 2 from numpy 1.x, as in the CIFAR-10 and MNIST
# files, or any protocol from numpy 2.x) only need these globals. Anything else in a
# data file is refused rather than executed.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS and not (
            module == "numpy.dtypes" and name.endswith("DType")
        ):
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2: avoid the deprecated alias
        return super().find_class(module, name)


def load_array_pickle(fileobj, path: Path, encoding: str):
    """Unpickles ``fileobj`` allowing only numpy arrays, dtypes and builtin containers.

    Any failure is a ``ValueError`` naming ``path``."""
    try:
        return _ArrayUnpickler(fileobj, encoding=encoding).load()
    except Exception as e:  # pickle, gzip and zlib raise many types on corrupt input
        raise ValueError(f"{path}: not a valid pickle of numpy arrays ({type(e).__name__}: {e})") from e
