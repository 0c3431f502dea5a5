"""The k×k masked invertible convolution, in either placement."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import causal_conv2d, inv_conv2d
from ..ops._geometry import center, groups, masked_weight
from ..ops._validate import ORDERS, check_order
from ._validate import kernel_size_2d, non_negative_number, positive_int

PLACEMENTS = ("density", "sampling")

# max|x| / max|y| of a solve above this is reported: a stable filter with the usual small
# off-centre taps stays within a few times 1; 1e4 means the IIR recursion is amplifying.
GROWTH_WARNING_THRESHOLD = 1e4


def inverse_growth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The growth statistic of a solve ``x = inv_conv2d(y, ...)``: ``max|x| / max|y|`` (a
    0-d tensor, no host sync; inf or NaN when the solve overflowed)."""
    with torch.no_grad():
        return x.abs().amax() / y.abs().amax().clamp_min(torch.finfo(y.dtype).tiny)


class InvConv2d(nn.Module):
    """Invertible k×k convolution with a unit-lower-triangular center (log-det 0).

    ``solve_on="density"`` is the Inverse-Flow placement of Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows"
    (AISTATS 2025): the density pass (data → latent) applies the *inverse* of the
    convolution and sampling applies the plain convolution. ``"sampling"`` is the
    FInC Flow (Kallappa et al., 2023) / Emerging convolutions (Hoogeboom et al., ICML
    2019) placement, the other way round. Both use the same parameters, so
    :meth:`set_solve_on` switches a trained layer between them (a different function of
    the data, with the same exact log-det).

    Stability: the inverse is an IIR filter. With ``L`` the masked center matrix and
    ``W_t`` the off-center taps, ``ρ = Σ_t ‖L⁻¹ W_t‖_∞ < 1`` guarantees
    ``max|x| ≤ ‖L⁻¹‖_∞ max|y| / (1 − ρ)`` at any image size (:meth:`stability_bound`
    returns ρ); past it the solve can grow exponentially across the image. With
    ``record_growth = True`` each solve stores ``last_growth``, the largest
    ``max|x| / max|y|`` since it was last cleared (two reductions per solve), which the
    training loop logs and warns on.

    Args:
        channels: C, the input and output channel count (divisible by 4 for ``quad``).
        kernel_size: ``k`` or ``(kh, kw)``; rectangular and 1×1 kernels are valid.
        order: ``"quad"`` (default: four channel groups, one per corner), ``"TL"``,
            ``"TR"``, ``"BL"`` or ``"BR"``.
        solve_on: ``"density"`` (Inverse-Flow) or ``"sampling"`` (FInC/Emerging).
        init_scale: scale of the off-centre taps' initial noise (identity plus noise).

    Shapes: ``forward(x)`` and ``inverse(z)`` take (B, C, H, W) float32 or float64 (any H,
    W) and keep the shape; ``weight`` is (C, C, kh, kw), or (C, C/4, kh, kw) for ``quad``.

    Raises:
        ValueError: a non-positive ``channels`` or ``kernel_size``, an unknown ``order`` or
            ``solve_on``, a negative ``init_scale``, or ``quad`` with C not divisible by 4;
            the ops' ``ValueError``/``TypeError`` for images of the wrong shape or dtype.
    """

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "quad",
                 solve_on: str = "density", init_scale: float = 0.1):
        super().__init__()
        channels = positive_int(channels, "channels")
        kh, kw = kernel_size_2d(kernel_size)
        check_order(order)
        init_scale = non_negative_number(init_scale, "init_scale")
        if order == "quad" and channels % 4:
            raise ValueError(f"order='quad' needs channels divisible by 4, got {channels}")
        cg = channels // 4 if order == "quad" else channels
        self.order = order
        self.set_solve_on(solve_on)
        # Identity plus small noise: the mask makes the center's diagonal 1, and every
        # other tap starts near 0, so the layer starts near the identity.
        self.weight = nn.Parameter(init_scale / (kh * kw) ** 0.5 * torch.randn(channels, cg, kh, kw))
        self.record_growth = False
        self.last_growth: torch.Tensor | None = None

    def set_solve_on(self, solve_on: str) -> None:
        """Switches the placement, ``"density"`` or ``"sampling"`` (same parameters);
        ``ValueError`` for anything else."""
        if solve_on not in PLACEMENTS:
            raise ValueError(f"solve_on must be one of {PLACEMENTS}, got {solve_on!r}")
        self.solve_on = solve_on

    def forward(self, x):
        """Data → latent: ``(z, logdet)``, ``z`` like ``x`` (B, C, H, W), ``logdet`` zeros
        (B,). With ``solve_on="density"`` this is :func:`inverseflow.inv_conv2d`."""
        if self.solve_on == "density":
            return self._solve(x), x.new_zeros(x.shape[0])
        return causal_conv2d(x, self.weight, self.order), x.new_zeros(x.shape[0])

    def inverse(self, z):
        """Latent → data: ``x`` like ``z`` (B, C, H, W). With ``solve_on="density"`` this is
        the plain :func:`inverseflow.causal_conv2d`."""
        if self.solve_on == "density":
            return causal_conv2d(z, self.weight, self.order)
        return self._solve(z)

    def _solve(self, y):
        x = inv_conv2d(y, self.weight, self.order)
        if self.record_growth and x.numel():
            growth = inverse_growth(x, y)
            self.last_growth = growth if self.last_growth is None else torch.maximum(
                self.last_growth, growth)
        return x

    def stability_bound(self) -> float:
        """ρ = Σ_t ‖L⁻¹ W_t‖_∞ over the off-center taps (per channel group, the largest);
        ρ < 1 is sufficient for a bounded inverse (see the class docstring)."""
        return stability_bound(self.weight, self.order)

    def extra_repr(self) -> str:
        return f"order={self.order!r}, solve_on={self.solve_on!r}, weight={tuple(self.weight.shape)}"


@torch.no_grad()
def stability_bound(weight: torch.Tensor, order: str) -> float:
    """ρ = Σ_t ‖L⁻¹ W_t‖_∞ of ``inv_conv2d(·, weight, order)`` over the off-center taps
    (per channel group, the largest); ρ < 1 guarantees ``max|x| ≤ ‖L⁻¹‖_∞ max|y| / (1 − ρ)``
    at any image size. Shared by :class:`InvConv2d` and :mod:`inverseflow.deblur`."""
    w = masked_weight(weight.detach().double(), order)
    kh, kw = w.shape[2], w.shape[3]
    bounds = []
    for corner, part in groups(order, w.shape[0]):
        ci, cj = center(corner, kh, kw)
        taps = w[part]
        l_inv = torch.linalg.inv(taps[:, :, ci, cj])
        folded = torch.einsum("ab,bcij->acij", l_inv, taps)
        folded[:, :, ci, cj] = 0
        bounds.append(folded.abs().sum(dim=1).amax(dim=0).sum())   # Σ_t ‖·‖_∞
    return float(max(bounds))


__all__ = ["InvConv2d", "PLACEMENTS", "ORDERS", "stability_bound", "inverse_growth",
           "GROWTH_WARNING_THRESHOLD"]
