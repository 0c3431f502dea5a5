"""The backward pass allocates O(B·C·H·W): no buffer beyond a few times the input."""

import pytest
import torch

import inverseflow
from inverseflow.bench.memory import LargestAllocation


@pytest.mark.parametrize("order", ["TL", "BR", "quad"])
@pytest.mark.parametrize("kernel", [2, 3, 5])
def test_backward_buffers_are_a_few_times_the_input(order, kernel, rng):
    batch, channels, size = 8, 12, 16
    cg = channels // 4 if order == "quad" else channels
    weight = (0.1 / kernel * torch.randn(channels, cg, kernel, kernel, generator=rng)
              ).requires_grad_()
    y = torch.randn(batch, channels, size, size, generator=rng, requires_grad=True)
    x = inverseflow.inv_conv2d(y, weight, order)
    grad = torch.randn(x.shape, generator=rng)
    with LargestAllocation() as largest:
        x.backward(grad)
    padded_fraction = ((size + kernel - 1) / size) ** 2
    assert largest.numel >= y.numel(), "the probe missed the backward's own outputs"
    assert largest.numel <= padded_fraction * y.numel(), (largest.numel / y.numel(), largest.op)
    # The paper's released kernels build B·C·k²·H·W auxiliaries; make sure that would show.
    assert batch * channels * kernel**2 * size**2 > 2 * padded_fraction * y.numel()


def test_the_probe_sees_large_allocations():
    with LargestAllocation() as largest:
        torch.empty(1000).fill_(1.0)
        torch.zeros(10)
    assert largest.numel == 1000
