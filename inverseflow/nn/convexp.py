"""The convolution exponential."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._autocast import full_precision, upcast
from ._validate import kernel_size_2d, non_negative_number, positive_int


class ConvergenceError(RuntimeError):
    """The power series of the convolution exponential did not reach its tolerance."""


class ConvExp2d(nn.Module):
    """Convolution exponential (Hoogeboom, Garcia Satorras, Tomczak & Welling, "The
    Convolution Exponential and Generalized Sylvester Flows", NeurIPS 2020):
    ``z = exp(M) x = x + M x + M² x / 2! + …`` for a 'same'-padded k×k convolution M.

    - ``log|det| = trace(M) = H·W·Σ_c M[c, c, centre]``; the inverse is ``exp(−M) z``.
    - The series is summed until a term is smaller than ``tolerance`` times the sum (per
      sample, relative; the default is the dtype's machine epsilon), not for a fixed count.
    - The kernel is kept small enough for fast convergence: it is rescaled so that
      Σ_taps ‖W_tap‖_F ≤ ``max_norm``, a bound on the operator norm of M (each tap is a
      zero-padded shift, of norm ≤ 1, times a C×C matrix). The paper normalises with a
      power-iteration spectral norm; this bound is exact and costs no iteration.
    - A series that has not converged after ``max_terms`` terms raises
      :class:`ConvergenceError` rather than returning a truncated result, and so does a
      series that overflows the dtype (a non-finite term from a finite input). Non-finite
      inputs propagate (the training loop detects a non-finite loss).

    Even kernel sizes pad like ``padding='same'`` (one more on the bottom/right).

    Args:
        channels: C, a positive int.
        kernel_size: ``k`` or ``(kh, kw)``.
        max_norm: the bound on Σ_taps ‖W_tap‖_F (positive), or None for no limit.
        tolerance: relative size of the last term, in (0, 1); None for machine epsilon.
        max_terms: the series' cap (a positive int).
        init_scale: scale of the initial weight's noise (non-negative).

    Shapes: (B, C, H, W) float32 or float64 in and out; ``logdet`` is (B,). Raises
    ``ValueError`` for a bad argument or image shape, :class:`ConvergenceError` as above.
    """

    def __init__(self, channels: int, kernel_size: int | tuple = 3, max_norm: float | None = 1.0,
                 tolerance: float | None = None, max_terms: int = 60, init_scale: float = 0.1):
        super().__init__()
        channels = positive_int(channels, "channels")
        kh, kw = kernel_size_2d(kernel_size)
        init_scale = non_negative_number(init_scale, "init_scale")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm!r}")
        if tolerance is not None and not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1) or None, got {tolerance!r}")
        max_terms = positive_int(max_terms, "max_terms")
        self.kernel_size = (kh, kw)
        self.max_norm, self.tolerance, self.max_terms = max_norm, tolerance, max_terms
        self.padding = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
        self.centre = ((kh - 1) // 2, (kw - 1) // 2)
        self.weight = nn.Parameter(init_scale / math.sqrt(channels * kh * kw)
                                   * torch.randn(channels, channels, kh, kw))

    def kernel(self) -> torch.Tensor:
        """The convolution M actually applied (after the norm limit)."""
        if self.max_norm is None:
            return self.weight
        bound = torch.linalg.matrix_norm(self.weight.permute(2, 3, 0, 1)).sum()
        return self.weight * torch.clamp(self.max_norm / bound.clamp_min(1e-30), max=1.0)

    def _series(self, x, m, sign: float):
        if x.dim() != 4 or x.shape[1] != m.shape[0]:
            raise ValueError(f"x must have shape (B, {m.shape[0]}, H, W), got {tuple(x.shape)}")
        tolerance = self.tolerance or torch.finfo(x.dtype).eps
        # Samples whose input is already non-finite propagate it (the training loop sees the
        # loss); in every other sample a non-finite term is an overflow of the series, whose
        # partial sum would be a wrong finite number, so it raises.
        finite_input = torch.isfinite(x.detach()).flatten(1).all(1)
        result, term = x, x
        for k in range(1, self.max_terms + 1):
            term = F.conv2d(F.pad(term, self.padding), m) * (sign / k)
            result = result + term
            t, r = term.detach().flatten(1), result.detach().flatten(1)
            overflow = finite_input & ~(torch.isfinite(t).all(1) & torch.isfinite(r).all(1))
            # float64 norms: a float32 norm can overflow while every element is finite.
            ratio = (torch.linalg.vector_norm(t, dim=1, dtype=torch.float64)
                     / torch.linalg.vector_norm(r, dim=1, dtype=torch.float64).clamp_min(1e-300))
            worst = torch.where(finite_input, ratio, 0.0).amax() if ratio.numel() else ratio.sum()
            overflowed, ratio = torch.stack([overflow.any().double(), worst]).tolist()
            if overflowed:
                raise ConvergenceError(
                    f"ConvExp2d: the exp(M) power series overflowed {x.dtype} at term {k} "
                    f"(a non-finite term from a finite input); the kernel norm is too large: "
                    f"keep max_norm set (got {self.max_norm}) or use float64")
            if ratio <= tolerance:
                return result
        raise ConvergenceError(
            f"ConvExp2d: the exp(M) power series did not converge in max_terms={self.max_terms} "
            f"terms (last term / sum = {ratio:.3g} > tolerance {tolerance:.3g}); the kernel "
            f"norm is too large: keep max_norm set (got {self.max_norm}) or raise max_terms")

    def forward(self, x):
        """``(exp(M) x, logdet)``, ``logdet = H·W·trace`` of the centre tap (B,)."""
        x = upcast(x)
        m = self.kernel()
        ci, cj = self.centre
        logdet = torch.diagonal(m[:, :, ci, cj]).sum() * x.shape[2] * x.shape[3]
        with full_precision(x):   # exp(M) and exp(-M) inverse at one precision (DESIGN §12)
            return self._series(x, m, 1.0), logdet.expand(x.shape[0])

    def inverse(self, z):
        """``exp(−M) z``, by the same series."""
        z = upcast(z)
        with full_precision(z):
            return self._series(z, self.kernel(), -1.0)

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, max_norm={self.max_norm}, "
                f"tolerance={self.tolerance}, max_terms={self.max_terms}")


__all__ = ["ConvExp2d", "ConvergenceError"]
