"""torch.compile of whole models (after ActNorm's explicit initialisation) and of the ops
with dynamic shapes (issue 12, item 11)."""

from __future__ import annotations

import pytest
import torch

import inverseflow
from inverseflow.models import from_preset

import oracle


def _small_model(seed: int):
    torch.manual_seed(seed)
    return from_preset("digits", levels=2, steps=1, coupling_width=16)


def _images(rng, batch=8):
    return torch.randint(0, 256, (batch, 1, 8, 8), generator=rng, dtype=torch.uint8)


def _loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = model.bits_per_dim_dequantized(x).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("solve_on", ["density", "sampling"])
def test_whole_model_compiles_fullgraph_after_initialize(solve_on, rng):
    torch._dynamo.reset()
    model = _small_model(int(torch.randint(0, 1000, (1,), generator=rng)))
    model.set_solve_on(solve_on)
    model.initialize(_images(rng))
    x = (_images(rng).float() + torch.rand(8, 1, 8, 8, generator=rng)) / 256
    eager_loss, eager_grads = _loss_and_grads(model, x)
    compiled = torch.compile(model.bits_per_dim_dequantized, fullgraph=True, backend="aot_eager")
    model.zero_grad(set_to_none=True)
    loss = compiled(x).mean()
    loss.backward()
    assert oracle.rel_err(loss, eager_loss) <= 1e-5
    for (name, p), expected in zip(model.named_parameters(), eager_grads):
        assert oracle.rel_err(p.grad, expected) <= 1e-4, name
    # the nn.Module itself, through forward (uint8 in, bits/dim out)
    module = torch.compile(model, fullgraph=True, backend="aot_eager")
    module(_images(rng)).mean().backward()
    torch._dynamo.reset()


def test_compiling_an_uninitialised_model_says_what_to_do(rng):
    torch._dynamo.reset()
    model = _small_model(1)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="initiali[sz]e"):
        compiled(_images(rng))
    torch._dynamo.reset()


def test_a_loaded_model_compiles_without_an_eager_call(rng):
    torch._dynamo.reset()
    source = _small_model(2)
    source.initialize(_images(rng))
    model = _small_model(3)
    model.load_state_dict(source.state_dict())
    # (Dynamo can't take a torch.Generator, so the dequantisation noise is drawn outside.)
    compiled = torch.compile(model.bits_per_dim_dequantized, fullgraph=True,
                             backend="aot_eager")
    x = (_images(rng).float() + torch.rand(8, 1, 8, 8, generator=rng)) / 256
    with torch.no_grad():
        assert oracle.rel_err(compiled(x), source.bits_per_dim_dequantized(x)) <= 1e-5
    torch._dynamo.reset()


@pytest.mark.parametrize("order", ["TL", "quad"])
def test_dynamic_shapes_backward_when_height_and_width_change(order, rng):
    """Inductor's lowering of convolution_backward failed with symbolic H, W
    ("Invalid ranges"); the weight gradient then takes a forward-conv form."""
    torch._dynamo.reset()
    weight = oracle.random_weight(8, 3, 2, order, rng).requires_grad_(True)

    def loss(y, w):
        return (inverseflow.inv_conv2d(y, w, order) ** 2).sum()

    compiled = torch.compile(loss, dynamic=True, fullgraph=True, backend="inductor")
    for hw in [(4, 5), (6, 3), (5, 7)]:
        y = torch.randn(2, 8, *hw, generator=rng, dtype=torch.float64, requires_grad=True)
        got = torch.autograd.grad(compiled(y, weight), (y, weight))
        expected = torch.autograd.grad(loss(y, weight), (y, weight))
        for a, b in zip(got, expected):
            assert oracle.rel_err(a, b) <= 1e-10, hw
    torch._dynamo.reset()
