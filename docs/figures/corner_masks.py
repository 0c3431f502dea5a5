"""The four corners: which neighbours a pixel reads, and the masked centre tap."""

import matplotlib.pyplot as plt
import numpy as np
import torch

import inverseflow
from footprint import draw_grid, footprint

C = 4
weight = torch.full((C, C, 3, 3), 0.5, dtype=torch.float64)
fig, axes = plt.subplots(2, 4, figsize=(10, 5.8))
for col, order in enumerate(["TL", "TR", "BL", "BR"]):
    reads = footprint(order, kernel=3, size=5).numpy()
    ax = axes[0, col]
    ax.imshow(np.where(reads, 0.35, 1.0), cmap="gray", vmin=0, vmax=1)
    ax.add_patch(plt.Rectangle((1.5, 1.5), 1, 1, color="tab:orange"))
    ax.set_title(f"order={order!r}")
    draw_grid(ax, 5, 5)
    # The centre tap's C×C matrix as the op applies it: d y[c, p] / d x[c', p].
    x = torch.zeros(1, C, 5, 5, dtype=torch.float64)
    centre = torch.autograd.functional.jacobian(
        lambda v: inverseflow.causal_conv2d(v, weight, order)[0, :, 2, 2], x)[:, 0, :, 2, 2]
    ax = axes[1, col]
    ax.imshow(centre.numpy(), cmap="Blues", vmin=0, vmax=1.2)
    for (i, j), v in np.ndenumerate(centre.numpy()):
        ax.text(j, i, "1" if v == 1 else ("w" if v else "0"), ha="center", va="center")
    ax.set_title("centre tap (C×C)")
    draw_grid(ax, C, C)
axes[0, 0].set_ylabel("pixels read")
axes[1, 0].set_ylabel("channels")
fig.tight_layout(h_pad=1.5)
