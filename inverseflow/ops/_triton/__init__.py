"""The Triton backend (DESIGN §18): the solve, transposed solve and causal conv as Triton
programs, for AMD (ROCm) and NVIDIA GPUs, and for CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, for tests). Importing this package does not import Triton;
:func:`run_triton` does, on first use.
"""

from __future__ import annotations

import torch

TRITON_HINT = ("install it with `pip install 'inverseflow[triton]'` (Triton 3.x; on ROCm, "
               "the Triton that comes with PyTorch)")


def run_triton(y: torch.Tensor, weight: torch.Tensor, order: str, direction: int, dims: int,
               force_generic: bool = False) -> tuple[torch.Tensor, str]:
    """:func:`inverseflow.ops._dispatch.solve` on the Triton backend."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"the triton backend was chosen but Triton is not installed "
                           f"({exc}); {TRITON_HINT}") from None
    from . import launch

    return launch.run(y, weight, order, direction, dims, force_generic)
