"""scikit-learn's 8x8 handwritten digits (the embedded default dataset).

Source: ``sklearn.datasets.load_digits()``, the test set of the UCI "Optical Recognition
of Handwritten Digits" data (Alpaydin & Kaynak, 1998): 1,797 images of 8x8 pixels with
values 0..16. Each value ``v`` becomes the byte ``round(v * 255 / 16)``.

Split (fixed, deterministic, no shuffling): the first 1,500 images are ``train``, the
last 297 are ``test``.
"""

from __future__ import annotations

import numpy as np

from ._base import Dataset, DatasetNotFoundError, to_nchw

N_TRAIN = 1500
N_TOTAL = 1797


def digits_to_bytes(images: np.ndarray) -> np.ndarray:
    """Values 0..16 -> uint8 ``round(v * 255 / 16)`` (round half to even, like Python's ``round``)."""
    v = np.asarray(images, dtype=np.float64)
    if not (np.all(v == np.rint(v)) and v.min() >= 0 and v.max() <= 16):
        raise ValueError("sklearn digits: expected integer pixel values in 0..16")
    return np.rint(v * 255 / 16).astype(np.uint8)


def load_digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise DatasetNotFoundError(
            "the 'digits' dataset comes with scikit-learn, which is not installed: "
            "pip install scikit-learn"
        ) from e
    images = _sk_load_digits().images
    if images.shape != (N_TOTAL, 8, 8):
        raise ValueError(f"sklearn digits: expected images of shape ({N_TOTAL}, 8, 8), got {images.shape}")
    data = digits_to_bytes(images)
    return Dataset("digits", to_nchw(data[:N_TRAIN], (1, 8, 8)), to_nchw(data[N_TRAIN:], (1, 8, 8)))
