"""The inverse convolution as a ``normflows`` flow layer (DESIGN.md §9).

normflows (Stimper et al., "normflows: A PyTorch Package for Normalizing Flows", JOSS 2023)
runs a ``Flow``'s ``forward(z)`` from the latent towards the data (``sample``) and its
``inverse(x)`` from the data towards the latent (``log_prob``, ``forward_kld``); each
returns ``(output, log|det|)`` of the map it applied, with shape ``(batch,)``.

Importing this module imports normflows; ``import inverseflow`` alone does not.
"""

from __future__ import annotations

import torch

try:
    import normflows as _nf
except ImportError as exc:  # pragma: no cover - exercised only without normflows
    raise ImportError("inverseflow.integrations.normflows needs normflows: "
                      "pip install normflows (or pip install 'inverseflow[normflows]')") from exc

from ..nn import InvConv2d


class InvConv2dFlow(_nf.flows.Flow):
    """k×k masked invertible convolution (log-det 0) for ``normflows.NormalizingFlow`` and
    ``normflows.MultiscaleFlow``.

    ``solve_on="density"`` is the Inverse-Flow placement of Nagar & Varma, "Parallel
    Backpropagation for Inverse of a Convolution with Application to Normalizing Flows"
    (AISTATS 2025): ``inverse`` (data → latent, used by ``log_prob``) solves the convolution
    and ``forward`` (sampling) is a plain convolution. ``solve_on="sampling"`` is the FInC
    Flow / Emerging placement, the other way round. The layer is an
    :class:`inverseflow.nn.InvConv2d` (``self.conv``) with the same arguments.

    Args:
        channels: C (divisible by 4 for ``quad``).
        kernel_size: ``k`` or ``(kh, kw)``.
        order: ``"quad"`` (default), ``"TL"``, ``"TR"``, ``"BL"`` or ``"BR"``.
        solve_on: ``"density"`` or ``"sampling"``.
        init_scale: scale of the off-centre taps' initial noise.

    Shapes: (B, C, H, W) float32 or float64 in and out; the log-det is zeros (B,).
    Raises ``ValueError``/``TypeError`` as :class:`inverseflow.nn.InvConv2d` and the ops do.
    """

    def __init__(self, channels: int, kernel_size: int | tuple = 3, order: str = "quad",
                 solve_on: str = "density", init_scale: float = 0.1):
        super().__init__()
        self.conv = InvConv2d(channels, kernel_size, order, solve_on=solve_on,
                              init_scale=init_scale)

    def forward(self, z: torch.Tensor):
        """Latent → data: returns ``(x, zeros(batch))``."""
        x = self.conv.inverse(z)
        return x, z.new_zeros(z.shape[0])

    def inverse(self, x: torch.Tensor):
        """Data → latent: returns ``(z, zeros(batch))``."""
        return self.conv(x)


__all__ = ["InvConv2dFlow"]
