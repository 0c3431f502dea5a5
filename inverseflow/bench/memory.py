"""Largest tensor an operation allocates, seen through a dispatch mode (any device)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestAllocation(TorchDispatchMode):
    """Records the biggest tensor (in elements) that any dispatched op returns."""

    def __init__(self):
        super().__init__()
        self.numel = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.untyped_storage().nbytes() > 0:
                numel = leaf.untyped_storage().nbytes() // leaf.element_size()
                if numel > self.numel:
                    self.numel, self.op = numel, str(func)
        return out
