"""Argument checks shared by the flow models' public methods (``encode``, ``decode``,
``log_prob``, ``sample``), so that every model says the same thing at the model level
rather than letting an op or the logit fail deep inside."""

from __future__ import annotations

import math

import torch

from ..nn._validate import positive_int


def check_images(x, image_shape, dtype: torch.dtype, name: str = "x",
                 logit_alpha: float | None = None) -> None:
    """``x`` must be a (B, C, H, W) floating tensor of pixel values in [0, 1] whose dtype
    is the model's; out-of-range values would make the logit NaN, silently.

    With ``logit_alpha`` (for ``encode``, a bijection) the whole open domain of the logit
    preprocessing is accepted, (−α/(1−2α), (1−α)/(1−2α)), which holds what ``decode``
    returns; without it (for ``log_prob``, a density on [0, 1]^D) exactly [0, 1].
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point tensor of images in [0, 1], got {got}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, image_shape))}), "
                         f"got {tuple(x.shape)}")
    _check_dtype(x, dtype, name)
    # A data-dependent check: it would break a torch.compile graph, so compiled callers
    # are trusted (bits_per_dim's dequantisation stays in range by construction).
    if not x.numel() or torch.compiler.is_compiling():
        return
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if logit_alpha is None:
        inside = low >= 0 and high <= 1                     # NaN fails both
        domain = "[0, 1]"
    else:
        lo, hi = -logit_alpha / (1 - 2 * logit_alpha), (1 - logit_alpha) / (1 - 2 * logit_alpha)
        inside = low > lo and high < hi
        domain = f"[0, 1] (encode accepts the logit's domain ({lo:.4g}, {hi:.4g}))"
    if not inside:
        raise ValueError(f"{name} must hold pixel values in {domain}, as dequantised images "
                         f"do; got values from {low:.4g} to {high:.4g}")


def check_latents(z, dim: int, dtype: torch.dtype, name: str = "z") -> None:
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if z.dim() != 2 or z.shape[1] != dim:
        raise ValueError(f"{name} must have shape (B, {dim}), got {tuple(z.shape)}")
    _check_dtype(z, dtype, name)


def _check_dtype(t: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    if t.dtype != dtype:
        hint = "model.double()" if t.dtype == torch.float64 else f"{name}.to({dtype})"
        raise TypeError(f"{name} is {t.dtype} but the model's parameters are {dtype}; convert "
                        f"one to the other (for example {hint})")


def positive_count(value, name: str) -> int:
    """An integer-like ``value`` (int, numpy integer, 0-d integer tensor) >= 1, as int."""
    return positive_int(value, name)


def check_temperature(temperature, name: str = "temperature",
                      dtype: torch.dtype | None = None) -> float:
    """A finite, positive real number (the latent's standard deviation scale); with
    ``dtype``, also finite and positive once rounded to it (the model's dtype)."""
    if isinstance(temperature, bool):
        raise TypeError(f"{name} must be a positive number, got {temperature!r}")
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {type(temperature).__name__} "
                        f"{temperature!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and positive, got {temperature!r}")
    if dtype is not None and dtype.is_floating_point:
        info = torch.finfo(dtype)
        if not info.tiny <= value <= info.max:
            raise ValueError(f"{name} must be representable in the model's dtype {dtype} "
                             f"(from {info.tiny:.3g} to {info.max:.3g}), got {temperature!r}")
    return value
