"""Argument checks for the layers' constructors, shared by every layer (and by the
transforms and integrations built on them), so that a bad channel count or kernel size
fails at construction with the argument's name, not inside ``torch.randn`` or a tuple
unpacking. The ops' tensor checks are :mod:`inverseflow.ops._validate`."""

from __future__ import annotations

import math
import operator


def positive_int(value, name: str, minimum: int = 1) -> int:
    """An integer ``value`` (int, numpy integer, 0-d integer tensor; not bool, not float)
    that is at least ``minimum``, as int."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}, got the bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} "
                        f"{value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be {expected}, got {number}")
    return number


KERNEL_FORMS = {1: "a 1-tuple (kw,)", 2: "a pair (kh, kw)", 3: "a triple (kd, kh, kw)"}


def kernel_size_nd(kernel_size, dims: int, name: str = "kernel_size") -> tuple[int, ...]:
    """``k`` or a ``dims``-tuple of sizes (axis order, e.g. ``(kd, kh, kw)``), each a
    positive integer, as a ``dims``-tuple."""
    form = KERNEL_FORMS[dims]
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != dims:
            raise ValueError(f"{name} must be an integer k or {form}, got "
                             f"{kernel_size!r} ({len(kernel_size)} entries)")
        return tuple(positive_int(k, f"{name}[{i}]") for i, k in enumerate(kernel_size))
    try:
        k = positive_int(kernel_size, name)
    except TypeError:
        raise TypeError(f"{name} must be an integer k or {form}, got "
                        f"{type(kernel_size).__name__} {kernel_size!r}") from None
    return (k,) * dims


def kernel_size_2d(kernel_size, name: str = "kernel_size") -> tuple[int, int]:
    """``k`` or ``(kh, kw)``, each a positive integer, as ``(kh, kw)``."""
    return kernel_size_nd(kernel_size, 2, name)


def non_negative_number(value, name: str) -> float:
    """A finite real number >= 0 (not bool), as float."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a finite number >= 0, got {type(value).__name__} "
                        f"{value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number
