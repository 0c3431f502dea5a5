"""The wavefront: in which step the inverse can compute each pixel (order TL, k=3)."""

import matplotlib.pyplot as plt
import numpy as np

from footprint import draw_grid, footprint, wavefront_steps

H, W = 6, 8
steps = wavefront_steps("TL", H, W).numpy()
reads = footprint("TL", kernel=3, size=7).numpy()

fig, (ax_reads, ax_steps) = plt.subplots(1, 2, figsize=(10, 3.8),
                                         gridspec_kw={"width_ratios": [1, 1.5]})
ax_reads.imshow(np.where(reads, 0.35, 1.0), cmap="gray", vmin=0, vmax=1)
c = reads.shape[0] // 2
ax_reads.add_patch(plt.Rectangle((c - 0.5, c - 0.5), 1, 1, color="tab:orange"))
ax_reads.set_title("one output pixel (orange) reads\nits k×k block toward the TL corner")
ax_steps.imshow(steps, cmap="viridis")
for (i, j), s in np.ndenumerate(steps):
    ax_steps.text(j, i, str(s), ha="center", va="center",
                  color="white" if s < steps.max() * 0.6 else "black", fontsize=9)
ax_steps.set_title(f"the inverse's step for each pixel: the anti-diagonal h + w\n"
                   f"{H}×{W} image: {steps.max() + 1} = H + W − 1 steps instead of {H * W}")
draw_grid(ax_reads, *reads.shape)
draw_grid(ax_steps, H, W)
fig.tight_layout()
