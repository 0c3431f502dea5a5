"""Shared by the design guide's figures: what one output pixel of ``causal_conv2d`` reads,
measured from the operator itself (its Jacobian), so the pictures follow the code."""

import torch

import inverseflow


def footprint(order: str, kernel: int = 3, size: int = 7) -> torch.Tensor:
    """(size, size) bool: the input pixels that the output at the image's centre reads
    (one channel; the centre pixel is the unit-diagonal tap)."""
    weight = torch.ones(1, 1, kernel, kernel, dtype=torch.float64)
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = inverseflow.causal_conv2d(x, weight, order)
    (grad,) = torch.autograd.grad(y[0, 0, size // 2, size // 2], x)
    return grad[0, 0] != 0


def wavefront_steps(order: str, height: int, width: int, kernel: int = 3) -> torch.Tensor:
    """Each pixel's step in the fastest schedule of the inverse: 0 for pixels that depend on
    nothing, else 1 + the latest step among the pixels its equation reads (longest path in
    the dependency graph, read off the operator's Jacobian)."""
    weight = torch.ones(1, 1, kernel, kernel, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda x: inverseflow.causal_conv2d(x, weight, order),
        torch.zeros(1, 1, height, width, dtype=torch.float64)).reshape(height * width, -1)
    depends = (jac != 0) & ~torch.eye(height * width, dtype=torch.bool)
    steps = torch.full((height * width,), -1)
    while (steps < 0).any():
        for p in range(height * width):
            if steps[p] < 0 and all(steps[q] >= 0 for q in depends[p].nonzero().flatten()):
                preds = steps[depends[p]]
                steps[p] = 0 if preds.numel() == 0 else preds.max() + 1
    return steps.reshape(height, width)


def draw_grid(ax, height: int, width: int) -> None:
    """Thin lines between pixels, no tick labels."""
    ax.set_xticks([j - 0.5 for j in range(1, width)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, height)], minor=True)
    ax.grid(which="minor", color="0.75", linewidth=0.6)
    ax.tick_params(which="both", length=0)
    ax.set_xticks([]), ax.set_yticks([])
