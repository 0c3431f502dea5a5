"""Deblurring with a known or learned causal blur: the inverse of a convolution outside flows.

A *causal* blur is anchored at a corner (DESIGN.md §14): with ``order="TL"`` the blurred
pixel ``y[h, w]`` is a weighted sum of ``x`` at ``(h, w)`` and the pixels above and to
its left, with zero beyond the border::

    y[h, w] = Σ_{i, j} kernel[i, j] · x[h + i − (kh−1), w + j − (kw−1)]

The tap aligned with the output (the *leading tap* ``k₀``: ``kernel[kh−1, kw−1]`` for TL,
:func:`leading_tap` in general) is the diagonal of the blur's (triangular) matrix. Dividing
by it makes the blur a single-channel :func:`inverseflow.causal_conv2d`, so the exact
restoration is one parallel solve, ``x = inv_conv2d(y / k₀, kernel / k₀)``
(:func:`deblur`), in ``H + W − 1`` dependent steps, with no boundary assumption beyond the
blur's own zeros.

Nagar & Varma, "Parallel Backpropagation for Inverse of a Convolution with Application to
Normalizing Flows" (AISTATS 2025) name deblurring as the inverse's second use. Their
parallel backward makes the inverse trainable, which :func:`calibrate` uses to learn an
unknown causal kernel from one (sharp, blurred) pair by gradient descent on
``‖deblur(y, k) − x‖²``.

**Stability.** The inverse is an IIR filter. It is bounded at every image size when the
blur is dominated by its leading tap, ``ρ = Σ_{t≠0} |k_t / k₀| < 1`` (the limits guide's bound,
:func:`stability_ratio`). A blur that is not (a centred Gaussian moved to a corner has a
tiny leading tap) grows exponentially across the image. :func:`deblur` never returns that
silently: it bounds the growth ``max|x| / max|y|`` (the statistic training logs) of the
inverse of the kernel's shape ``kernel / k₀`` over every image of the size at hand, by ρ
when ρ < 1, else exactly (:func:`inverse_gain`, one more solve), and raises
:class:`UnstableBlurError` past ``max_growth`` (default 1e4). The overall gain ``1/k₀``
scales signal and noise alike, so it is judged apart: only one that overflows is refused.

Images are float tensors whose last two dimensions are (H, W); every leading index (batch,
colour channel) is an independent plane blurred by the same 2-D kernel.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .nn.invconv import GROWTH_WARNING_THRESHOLD, stability_bound
from .ops import inv_conv2d
from .ops._geometry import center, padding

CORNERS = ("TL", "TR", "BL", "BR")
FLOAT_DTYPES = (torch.float32, torch.float64)
# skimage.data's grey and colour photographs that ship inside the wheel (no download).
PHOTOGRAPHS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass",
               "gravel", "moon", "page", "rocket", "text")


class UnstableBlurError(ValueError):
    """The causal inverse of this blur amplifies without bound: the kernel is not dominated
    by its leading tap, and the restored image would be garbage (or inf/NaN)."""


class BlurStabilityWarning(RuntimeWarning):
    """``deblur(..., on_unstable="warn")`` returned a restoration whose inverse can amplify
    past ``max_growth``: look at it, do not trust it."""


# ------------------------------------------------------------------ argument checks


def _check_order(order) -> str:
    if not isinstance(order, str):
        raise TypeError(f"order must be a str, one of {', '.join(CORNERS)}; got "
                        f"{type(order).__name__}")
    if order not in CORNERS:
        raise ValueError(f"order must be one of {', '.join(CORNERS)} (a blur has one channel, "
                         f"so there is no 'quad'); got {order!r}")
    return order


def _check_image(image, name: str) -> Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {image.dtype}")
    if image.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (..., H, W); got shape "
                         f"{tuple(image.shape)}")
    if image.shape[-1] == 0 or image.shape[-2] == 0:
        raise ValueError(f"{name} must have H, W >= 1; got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} holds inf or NaN values")
    return image


def _check_kernel(kernel, like: Tensor, order: str) -> Tensor:
    if not isinstance(kernel, torch.Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if kernel.dim() != 2:
        raise ValueError(f"kernel must be 2-D (kh, kw); got shape {tuple(kernel.shape)}")
    if kernel.shape[0] < 1 or kernel.shape[1] < 1:
        raise ValueError(f"kernel must be at least 1x1; got shape {tuple(kernel.shape)}")
    if kernel.dtype != like.dtype:
        raise TypeError(f"kernel must have the image's dtype {like.dtype}; got {kernel.dtype}")
    if kernel.device != like.device:
        raise ValueError(f"kernel must be on the image's device {like.device}; got {kernel.device}")
    if not torch.isfinite(kernel).all():
        raise ValueError("kernel holds inf or NaN values")
    if leading_tap(kernel, order) == 0:
        i, j = center(order, kernel.shape)
        raise ValueError(f"kernel's leading tap kernel[{i}, {j}] (the tap aligned with the "
                         f"output for order={order!r}) is 0: the causal blur is singular")
    return kernel


def _planes(image: Tensor) -> Tensor:
    """(..., H, W) → (P, 1, H, W): every leading index is an independent plane."""
    return image.reshape(-1, 1, *image.shape[-2:])


# ------------------------------------------------------------------ the blur and its inverse


def leading_tap(kernel: Tensor, order: str = "TL") -> Tensor:
    """The tap aligned with the output pixel: ``kernel[kh−1, kw−1]`` for TL, ``[kh−1, 0]``
    for TR, ``[0, kw−1]`` for BL, ``[0, 0]`` for BR (a 0-d tensor)."""
    return kernel[center(_check_order(order), kernel.shape[-2:])]


def blur(image: Tensor, kernel: Tensor, order: str = "TL") -> Tensor:
    """The causal blur ``y = k ∗ x`` anchored at the corner ``order``, zero beyond the
    border (the module docstring's formula). A plain ``conv2d`` of the corner-padded image:
    the kernel is used as given (its leading tap need not be 1)."""
    _check_order(order)
    image = _check_image(image, "image")
    kernel = _check_kernel(kernel, image, order)
    kh, kw = kernel.shape
    out = F.conv2d(F.pad(_planes(image), padding(order, (kh, kw))), kernel[None, None])
    return out.reshape(image.shape)


def stability_ratio(kernel: Tensor, order: str = "TL") -> float:
    """``ρ = Σ_{t≠0} |k_t / k₀|``: the limits guide's stability bound (``InvConv2d.stability_bound``
    for the single-channel kernel ``kernel / k₀``. ρ < 1 guarantees
    ``max|x| ≤ max|y| / (|k₀| (1 − ρ))`` at every image size; it is sufficient, not
    necessary (a smooth decaying blur often has ρ > 1 and a tame inverse)."""
    _check_order(order)
    kernel = _check_kernel(kernel, kernel, order)
    return stability_bound((kernel / leading_tap(kernel, order))[None, None], order)


def inverse_gain(kernel: Tensor, size, order: str = "TL") -> float:
    """The exact worst-case growth of :func:`deblur` on an image of ``size = (H, W)``:
    ``‖T⁻¹‖_∞ = max over y of max|x| / max|y|``, the growth statistic of the worst input.

    The inverse is shift-invariant with a zero border, so its largest row sum is the ℓ1
    norm of its impulse response over the image: one solve of an impulse at the corner's
    first pixel, in float64 on the CPU (cached per kernel, size and order). inf when that
    overflows.
    """
    _check_order(order)
    kernel = _check_kernel(kernel, kernel, order)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise ValueError(f"size must be a pair (H, W) of positive ints; got {size!r}")
    taps = kernel.detach().double().cpu()
    return _cached_gain(tuple(taps.flatten().tolist()), tuple(taps.shape), tuple(size), order)


@functools.lru_cache(maxsize=64)
def _cached_gain(taps: tuple, shape: tuple, size: tuple, order: str) -> float:
    """inverse_gain's solve, once per (kernel, size, order): deblurring a stream of images
    of one size with one kernel pays for it once."""
    kernel = torch.tensor(taps, dtype=torch.float64).reshape(shape)
    k0 = leading_tap(kernel, order)
    impulse = kernel.new_zeros(1, 1, *size)
    impulse[0, 0, -1 if order in ("BL", "BR") else 0, -1 if order in ("TR", "BR") else 0] = 1 / k0
    response = inv_conv2d(impulse, (kernel / k0)[None, None], order)
    gain = float(response.abs().sum())
    return gain if gain == gain else math.inf   # NaN (inf − inf in the recursion) is inf


def deblur(blurred: Tensor, kernel: Tensor, order: str = "TL", *,
           max_growth: float = GROWTH_WARNING_THRESHOLD, on_unstable: str = "raise") -> Tensor:
    """Restores ``x`` from ``blurred = blur(x, kernel, order)``: ``inv_conv2d(y/k₀, k/k₀)``.

    Exact up to rounding for a stable blur, and differentiable in ``blurred`` and
    ``kernel`` (the paper's parallel backward).

    Before returning, it bounds the growth ``max|x| / max|y|`` of the inverse of the
    kernel's shape ``kernel / k₀`` on every image of this size: by the stability bound
    ``1 / (1 − ρ)`` when ρ < 1 (free), else by the exact :func:`inverse_gain` of
    ``kernel / k₀`` (one more solve of one plane). The overall gain ``1/k₀`` multiplies
    signal and noise alike, so it is left out (a kernel scaled by 1e-5 restores exactly);
    only a gain that overflows the image's dtype is refused. Past ``max_growth``
    (default 1e4, the growth training warns at) the restoration amplifies noise and
    rounding that much, so it is garbage: ``on_unstable="raise"`` (default) raises
    :class:`UnstableBlurError` (a ValueError); ``"warn"`` returns it with a
    :class:`BlurStabilityWarning` (to look at the failure).
    """
    _check_order(order)
    blurred = _check_image(blurred, "blurred")
    kernel = _check_kernel(kernel, blurred, order)
    if isinstance(max_growth, bool) or not isinstance(max_growth, (int, float)):
        raise TypeError(f"max_growth must be a number, got {type(max_growth).__name__}")
    if not max_growth > 0:
        raise ValueError(f"max_growth must be positive, got {max_growth}")
    if on_unstable not in ("raise", "warn"):
        raise ValueError(f"on_unstable must be 'raise' or 'warn', got {on_unstable!r}")
    size = tuple(blurred.shape[-2:])
    k0 = leading_tap(kernel, order)
    message = _instability(kernel.detach(), float(k0.detach()), order, size, max_growth,
                           blurred.dtype)
    if message is not None:
        if on_unstable == "raise":
            raise UnstableBlurError(message)
        warnings.warn(message, BlurStabilityWarning, stacklevel=2)
    restored = inv_conv2d(_planes(blurred) / k0, (kernel / k0)[None, None], order)
    return restored.reshape(blurred.shape)


def _instability(kernel: Tensor, k0: float, order: str, size: tuple, max_growth: float,
                 dtype: torch.dtype) -> str | None:
    """Why :func:`deblur` of this kernel would be garbage, or None.

    Stability is judged on the kernel's shape, ``kernel / k₀`` (whose leading tap is 1):
    the overall gain ``1/k₀`` scales the restoration, signal and noise alike, so it does
    not change its relative error, and a kernel scaled by 1e-5 restores as well as the
    kernel itself. Only a gain that overflows ``dtype`` is refused for its own sake."""
    rho = stability_ratio(kernel, order)
    bound = 1 / (1 - rho) if rho < 1 else math.inf      # the shape's growth, by ρ
    growth = bound if bound <= max_growth else inverse_gain(kernel / k0, size, order)
    if not growth <= max_growth:
        dominance = (f"is not dominated by its leading tap (ρ = Σ|k_t/k₀| = {rho:.3g}, "
                     "at least 1)" if rho >= 1 else
                     f"is only barely dominated by its leading tap (ρ = Σ|k_t/k₀| = "
                     f"{rho:.3g}, close to 1)")
        return (f"kernel {dominance}: on a {size[0]}x{size[1]} image the causal inverse of "
                f"kernel/k₀ can amplify {growth:.3g}x (max|x|/max|y|, before the overall "
                f"gain 1/k₀), past max_growth={max_growth:.3g}, so the restoration would be "
                f"garbage; anchor the kernel at the corner of its largest tap (order), or use "
                f"a regularised deconvolution (docs/guides/deblurring.md)")
    if not abs(1 / k0) <= torch.finfo(dtype).max:
        return (f"kernel's overall gain 1/k₀ = 1/{k0:.3g} overflows {dtype}: its shape "
                f"kernel/k₀ is stable (ρ = {rho:.3g}), but dividing the image by k₀ gives inf; "
                "rescale the kernel and the image together")
    return None


# ------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """A kernel learned by :func:`calibrate` through the inverse's parallel backward
    (Nagar & Varma, AISTATS 2025): ``kernel`` (kh, kw) in the blur's own scale (leading tap
    included), the final mean squared restoration error ``loss``, and the loss after each
    L-BFGS step, ``losses``."""

    kernel: Tensor
    loss: float
    losses: list[float] = field(repr=False)


def _kernel_size(kernel_size) -> tuple[int, int]:
    size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise ValueError(f"kernel_size must be a positive int or a pair (kh, kw) of them; got "
                         f"{kernel_size!r}")
    return int(size[0]), int(size[1])


def calibrate(sharp: Tensor, blurred: Tensor, kernel_size, order: str = "TL", *,
              steps: int = 20) -> Calibration:
    """Learns an unknown causal blur from one pair by backpropagating through its inverse.

    Minimises ``mean((g · inv_conv2d(blurred, w) − sharp)²)`` over the normalised taps ``w``
    (leading tap fixed at 1 by the op's mask) and the gain ``g = 1/k₀``, with L-BFGS; every
    gradient is the paper's parallel backward (one transposed solve and one conv weight
    gradient). Starts from the identity blur (``w = 0``, so the first solves are trivially
    stable) with the least-squares gain. Runs at most ``steps`` L-BFGS steps (20 function
    evaluations each), stopping early once a step makes no progress. Returns ``w / g``.

    The loss is measured on the restoration, the quantity one wants small; a blur too
    unstable to invert gives an infinite loss, which the line search steps back from.

    ``blurred`` must be ``blur(sharp, k)`` as a whole image (zero beyond the border). A crop
    of a larger blurred image is not: its edges toward the corner mix in pixels from
    outside the crop, and the inverse carries that error across the whole crop.
    """
    _check_order(order)
    sharp = _check_image(sharp, "sharp")
    blurred = _check_image(blurred, "blurred")
    if (sharp.shape, sharp.dtype, sharp.device) != (blurred.shape, blurred.dtype, blurred.device):
        raise ValueError(f"sharp and blurred must have the same shape, dtype and device; got "
                         f"{tuple(sharp.shape)} {sharp.dtype} {sharp.device} and "
                         f"{tuple(blurred.shape)} {blurred.dtype} {blurred.device}")
    kh, kw = _kernel_size(kernel_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    x, y = _planes(sharp), _planes(blurred)
    taps = torch.zeros(1, 1, kh, kw, dtype=y.dtype, device=y.device, requires_grad=True)
    gain = ((x * y).sum() / (y * y).sum().clamp_min(torch.finfo(y.dtype).tiny)).detach()
    gain.requires_grad_(True)
    optimizer = torch.optim.LBFGS([taps, gain], lr=1, max_iter=20, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                  tolerance_change=1e-15)

    def closure():
        optimizer.zero_grad()
        loss = ((gain * inv_conv2d(y, taps, order) - x) ** 2).mean()
        if not torch.isfinite(loss):
            # An unstable trial kernel: an infinite loss with zero gradient makes the line
            # search shrink its step instead of following NaN gradients.
            return torch.tensor(math.inf, dtype=y.dtype, device=y.device)
        loss.backward()
        return loss

    losses = []
    for _ in range(steps):
        losses.append(float(optimizer.step(closure).detach()))
        if len(losses) > 1 and not losses[-1] < losses[-2]:
            break   # converged: L-BFGS made no progress over a whole step
    with torch.no_grad():
        final = float(((gain * inv_conv2d(y, taps, order) - x) ** 2).mean())
        normalised = taps[0, 0].clone()
        normalised[center(order, (kh, kw))] = 1
        kernel = normalised / gain
    return Calibration(kernel=kernel.detach(), loss=final, losses=losses)


# ------------------------------------------------------------------ baselines and metrics


def fft_deconvolve(blurred: Tensor, kernel: Tensor, order: str = "TL", *, pad: int = 0) -> Tensor:
    """Frequency-domain inverse filter: ``X = Y / K`` on a periodic grid.

    With ``pad=0`` it exactly inverts the *circular* blur of the same kernel (the image
    wraps around at its borders), which is a different problem from :func:`blur`'s zero
    border. With ``pad > 0`` the blurred image is extended by ``pad`` zeros on the two
    sides away from the corner before the transform; the wrapped-around tail of the causal
    inverse then decays like ρ^pad for a stable blur, so the result approaches
    :func:`deblur`'s exact answer (the same problem) as ``pad`` grows.
    """
    _check_order(order)
    blurred = _check_image(blurred, "blurred")
    kernel = _check_kernel(kernel, blurred, order)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")
    # Flip the axes whose corner is at the far end, so the problem is anchored top-left.
    flips = [d for d, far in ((-2, order in ("BL", "BR")), (-1, order in ("TR", "BR"))) if far]
    y = _planes(blurred).flip(flips) if flips else _planes(blurred)
    k = kernel.flip([d + 2 for d in flips]) if flips else kernel
    h, w = y.shape[-2:]
    kh, kw = k.shape
    size = (h + pad, w + pad)
    if kh > size[0] or kw > size[1]:
        raise ValueError(f"kernel {tuple(kernel.shape)} is larger than the padded image {size}")
    # Tap [i, j] reads x[p − (kh−1−i, kw−1−j)]: the convolution kernel is the flipped taps
    # at the origin.
    transfer = torch.fft.rfft2(k.flip([0, 1]), s=size)
    restored = torch.fft.irfft2(torch.fft.rfft2(y, s=size) / transfer, s=size)[..., :h, :w]
    if flips:
        restored = restored.flip(flips)
    return restored.reshape(blurred.shape)


def psnr(estimate: Tensor, truth: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / mean((estimate − truth)²))``
    (inf for an exact match, −inf when the error overflows, NaN when the estimate has NaN)."""
    for arg, name in ((estimate, "estimate"), (truth, "truth")):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(arg).__name__}")
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate and truth must have the same shape; got "
                         f"{tuple(estimate.shape)} and {tuple(truth.shape)}")
    mse = float(((estimate.double() - truth.double()) ** 2).mean())
    if mse == 0 or mse != mse:   # an exact match, or NaN in the estimate
        return math.inf if mse == 0 else math.nan
    return -math.inf if mse == math.inf else 10 * math.log10(data_range ** 2 / mse)


def load_image(name: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """A photograph bundled with scikit-image (``skimage.data.<name>()``, e.g. ``camera``,
    ``astronaut``, ``coffee``; :data:`PHOTOGRAPHS`) as a (C, H, W) tensor in [0, 1]. Needs
    the ``deblur`` extra."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("load_image needs scikit-image: pip install 'inverseflow[deblur]'"
                          ) from err
    if name not in PHOTOGRAPHS:
        raise ValueError(f"name must be one of {', '.join(PHOTOGRAPHS)}; got {name!r}")
    array = getattr(data, name)()
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].transpose(2, 0, 1)
    else:
        raise ValueError(f"skimage.data.{name}() is not a 2-D grey or RGB image "
                         f"(shape {array.shape})")
    scale = 255.0 if array.dtype.kind == "u" else 1.0
    return torch.from_numpy(array.astype("float64") / scale).to(dtype).contiguous()


__all__ = ["blur", "deblur", "calibrate", "Calibration", "fft_deconvolve", "leading_tap",
           "stability_ratio", "inverse_gain", "PHOTOGRAPHS", "psnr", "load_image",
           "UnstableBlurError", "BlurStabilityWarning"]
