"""TensorBoard event files for a training run (``inverseflow train --tensorboard``).

The writer is ``torch.utils.tensorboard.SummaryWriter``; it needs the ``tensorboard``
package, which is an extra (``pip install 'inverseflow[tensorboard]'``), so it is imported
only when a run asks for it.
"""

from __future__ import annotations

import atexit
from pathlib import Path

import torch

from .grids import make_grid

INSTALL_HINT = "pip install tensorboard (or pip install 'inverseflow[tensorboard]')"


def check_available() -> None:
    """Raises RuntimeError, saying how to install it, when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"--tensorboard needs the tensorboard package ({exc}); "
                           f"{INSTALL_HINT}") from None


class TensorBoardLog:
    """Losses, learning rate, test bits/dim and sample grids of one run, under ``log_dir``.

    ``log_dir=None`` makes every call a no-op (logging off, or a rank other than 0), so the
    training loop calls it unconditionally. A resumed run passes ``resume_step`` (its
    checkpoint's step): TensorBoard then drops the events an interrupted run wrote after that
    step, which the resumed run replays.
    """

    def __init__(self, log_dir: str | Path | None, resume_step: int | None = None):
        self.writer = None
        if log_dir is None:
            return
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step else None   # keep the checkpoint's own step
        self.writer = SummaryWriter(str(log_dir), purge_step=purge)
        # An interrupted or diverged run still leaves its events on disk.
        atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def train_step(self, step: int, loss_bits_per_dim: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/bits_per_dim", loss_bits_per_dim, step)
            self.writer.add_scalar("train/learning_rate", lr, step)

    def inverse_growth(self, step: int, growth: float | None) -> None:
        """The step's largest max|x| / max|y| of a k×k inverse (train.guards)."""
        if self.writer is not None and growth is not None:
            self.writer.add_scalar("train/max_inverse_growth", growth, step)

    def test_bits_per_dim(self, step: int, bpd: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("test/bits_per_dim", bpd, step)
            self.writer.flush()

    def samples(self, step: int, images: torch.Tensor) -> None:
        """``images``: (N, C, H, W) in [0, 1], logged as one grid."""
        if self.writer is not None:
            self.writer.add_image("samples", make_grid(images), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            atexit.unregister(self.close)
