"""Element-wise invertible activations: the smooth leaky ReLU and a per-element spline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from zuko.transforms import MonotonicRQSTransform

from ._validate import positive_int


class SmoothLeakyReLU(nn.Module):
    """``y = α x + (1 − α) softplus(x)``, the smooth leaky ReLU of Self-Normalizing Flows
    (Keller, Peters, Jaini, Hoogeboom, Forré & Welling, ICML 2021), used by the
    Inverse-Flow paper's CNN backbone (Nagar & Varma, AISTATS 2025) with α = 0.3.

    Its slope ``α + (1 − α) σ(x)`` lies in (α, 1), so it maps R onto R. The inverse has
    no closed form: Newton's method, started at ``x = y`` (to the right of the root, on
    a convex increasing function, so the iterates fall monotonically onto it), runs
    until the update is below float tolerance; a last Newton step carries the gradient
    ``dx/dy = 1 / f'(x)``. NaN has no preimage and raises; ±inf map to themselves; a y
    below α·finfo(dtype).min, whose preimage (≈ y/α) is beyond the dtype's range, gives
    -inf (the correctly rounded preimage), alone or in a batch.

    Args:
        alpha: the slope at −∞, in (0, 1) (``ValueError`` otherwise).
        max_iterations: Newton's cap in :meth:`inverse` (``RuntimeError`` past it).

    Shapes: any (B, ...) float tensor, kept; ``logdet`` is (B,).
    """

    def __init__(self, alpha: float = 0.3, max_iterations: int = 100):
        super().__init__()
        if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
        self.alpha, self.max_iterations = float(alpha), max_iterations

    def value(self, x):
        """The function (±inf map to themselves), in two forms, each free of cancellation on its
        side (so Newton's residual is accurate to an ulp of y; F.softplus alone also drops
        log1p(e^-x) past x = 20, 2e-9 that float64 sees) and of overflow where the value is
        finite (α·max + (1 − α)·max rounds to inf); the second uses
        x − softplus(x) = −softplus(−x). (The one form x − (1 − α)(x − softplus(x)) lost
        digits for x ≪ 0: with α = 0.1 Newton never met its tolerance at y = −7.56.)"""
        return torch.where(x < 0, self.alpha * x + (1 - self.alpha) * F.softplus(x),
                           x + (1 - self.alpha) * F.softplus(-x))

    def _slope(self, x):
        return self.alpha + (1 - self.alpha) * torch.sigmoid(x)

    def forward(self, x):
        """``(y, logdet)``: ``y`` like ``x``; ``logdet`` (B,) is Σ log of the slope."""
        logdet = torch.log(self._slope(x)).flatten(1).sum(1)
        return self.value(x), logdet

    def inverse(self, y):
        """``x`` with ``forward(x)[0] == y`` (Newton's method); ``ValueError`` if ``y`` has
        NaN, ``RuntimeError`` if Newton does not converge."""
        if torch.isnan(y).any():
            raise ValueError("SmoothLeakyReLU.inverse: y contains NaN, which no input maps "
                             "to (the layer maps the reals onto the reals)")
        eps = torch.finfo(y.dtype).eps
        finite = torch.isfinite(y)
        with torch.no_grad():
            x = y.clone()
            # Iterates fall monotonically onto the root, so one that leaves the dtype's range
            # (below α·finfo.min the preimage y/α overflows) has a root beyond it too: it
            # stays at -inf, the correctly rounded answer, whatever else is in the batch.
            active = finite.clone()
            for _ in range(self.max_iterations):
                step = torch.where(active, (self.value(x) - y) / self._slope(x), 0)
                x = x - step
                active &= torch.isfinite(x)
                if bool(((step.abs() <= 4 * eps * (1 + x.abs())) | ~active).all()):
                    break
            else:
                raise RuntimeError(f"SmoothLeakyReLU.inverse: Newton's method did not converge "
                                   f"in {self.max_iterations} iterations")
        x = x.detach()
        solved = finite & torch.isfinite(x)
        x_solved = torch.where(solved, x, 0)
        refined = x_solved - (self.value(x_solved) - y) / self._slope(x_solved)
        return torch.where(solved, refined, torch.where(finite, x, y))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SplineActivation(nn.Module):
    """A monotonic rational-quadratic spline per element (Durkan, Bekasov, Murray &
    Papamakarios, "Neural Spline Flows", NeurIPS 2019), with its own parameters for each
    element of ``shape`` (C, H, W): the activation of the Inverse-Flow paper's Glow step
    and CNN backbone (Nagar & Varma, AISTATS 2025; its code uses 5 bins and tail bound 20).

    The spline is zuko's ``MonotonicRQSTransform``; outside [−bound, bound] it is the
    identity. All-zero parameters give the identity, so the layer starts as one.

    Args:
        shape: (C, H, W) of the images, positive ints; each element gets its own spline.
        bins: spline bins, at least 2 (the paper's code uses 5).
        bound: the spline acts on [−bound, bound], positive.

    Shapes: ``forward(x)`` and ``inverse(y)`` take ``(B, *shape)`` float tensors (``ValueError``
    naming the argument otherwise) and keep the shape; ``logdet`` is (B,).
    """

    def __init__(self, shape, bins: int = 5, bound: float = 20.0):
        super().__init__()
        if not isinstance(shape, (tuple, list)) or not shape:
            raise ValueError(f"shape must be a tuple of positive ints (C, H, W), got {shape!r}")
        shape = tuple(positive_int(v, f"shape[{i}]") for i, v in enumerate(shape))
        bins = positive_int(bins, "bins", minimum=2)
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound!r}")
        self.shape, self.bins, self.bound = tuple(shape), bins, float(bound)
        self.widths = nn.Parameter(torch.zeros(*shape, bins))
        self.heights = nn.Parameter(torch.zeros(*shape, bins))
        self.derivatives = nn.Parameter(torch.zeros(*shape, bins - 1))

    def _transform(self):
        return MonotonicRQSTransform(self.widths, self.heights, self.derivatives, bound=self.bound)

    def _check(self, x, name):
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{name} must have shape (B, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")

    def forward(self, x):
        """``(y, logdet)`` of the per-element spline; ``logdet`` is (B,)."""
        self._check(x, "x")
        y, ladj = self._transform().call_and_ladj(x)
        return y, ladj.flatten(1).sum(1)

    def inverse(self, y):
        """The spline's exact inverse (a bin search and a quadratic root per element)."""
        self._check(y, "y")
        return self._transform().inv(y)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, bins={self.bins}, bound={self.bound}"


__all__ = ["SmoothLeakyReLU", "SplineActivation"]
