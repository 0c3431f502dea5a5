"""The 1-D and 3-D layers (inverseflow.nn.InvConv1d, InvConv3d) and their Transform adapters
(inverseflow.transforms.InvConv{1,3}dTransform / Module), against the dense float64
oracle of docs/nd-design.md (tests/oracle_nd.py)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import distributions as D

import inverseflow.nn as ifnn
from inverseflow import transforms as T
from inverseflow.nn._validate import KERNEL_FORMS
from inverseflow.nn.invconv import stability_bound

import oracle_nd as O

LAYERS = {1: ifnn.InvConv1d, 2: ifnn.InvConv2d, 3: ifnn.InvConv3d}
TRANSFORMS = {1: T.InvConv1dTransform, 3: T.InvConv3dTransform}
MODULES = {1: T.InvConv1dModule, 3: T.InvConv3dModule}
SHAPE = {1: (6,), 3: (2, 3, 2)}
KERNEL = {1: (3,), 3: (2, 1, 2)}


def dense_inverse(y, weight, order):
    matrix = O.dense(weight, order, tuple(y.shape[2:]))
    return torch.linalg.solve(matrix, y.reshape(y.shape[0], -1).T).T.reshape(y.shape)


def rel_err(a, b) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def _layer(d, order, solve_on="density", channels=8, init_scale=0.5):
    layer = LAYERS[d](channels, KERNEL[d], order, solve_on=solve_on, init_scale=init_scale)
    return layer.double()


@pytest.mark.parametrize("solve_on", ["density", "sampling"])
@pytest.mark.parametrize("d,order", [(d, o) for d in (1, 3) for o in O.corners(d)
                                     + [O.GROUP_PATTERN[d]]])
def test_layer_is_the_oracle_in_both_placements(d, order, solve_on, rng):
    layer = _layer(d, order, solve_on)
    x = torch.randn(3, 8, *SHAPE[d], generator=rng, dtype=torch.float64)
    with torch.no_grad():
        z, logdet = layer(x)
    solved = dense_inverse(x, layer.weight.detach(), order)
    convolved = O.causal_conv(x, layer.weight.detach(), order)
    assert rel_err(z, solved if solve_on == "density" else convolved) <= 1e-10
    assert logdet.shape == (3,) and torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
    assert rel_err(layer.inverse(z), x) <= 1e-10


@pytest.mark.parametrize("d", [1, 3])
def test_defaults_and_weight_shape(d):
    layer = LAYERS[d](16)
    pattern = O.GROUP_PATTERN[d]
    assert layer.order == pattern and layer.solve_on == "density"
    assert tuple(layer.weight.shape) == (16, 16 // 2 ** d) + (3,) * d
    full = LAYERS[d](3, 2, O.corners(d)[-1])
    assert tuple(full.weight.shape) == (3, 3) + (2,) * d
    assert pattern in repr(layer)


@pytest.mark.parametrize("d", [1, 3])
def test_gradient_reaches_the_weight(d, rng):
    layer = _layer(d, O.GROUP_PATTERN[d])
    x = torch.randn(2, 8, *SHAPE[d], generator=rng, dtype=torch.float64)
    (layer(x)[0] ** 2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().max() > 0


@pytest.mark.parametrize("d", [1, 2, 3])
def test_stability_bound_is_the_folded_taps_norm(d, rng):
    """ρ = max over groups of Σ_t ‖L⁻¹ W_t‖_∞, recomputed here from the oracle's mask."""
    order = O.GROUP_PATTERN[d]
    kernel = (2,) * d
    weight = 0.3 * torch.randn(2 ** d * 2, 2, *kernel, generator=rng, dtype=torch.float64)
    masked = O.mask(weight, order)
    expected = 0.0
    for corner, part in O.groups(order, weight.shape[0], d):
        centre = (slice(None), slice(None)) + O.center(corner, kernel)
        l_inv = torch.linalg.inv(masked[part][centre])
        total = 0.0
        for tap in O.offsets(corner, kernel):
            if tap != O.center(corner, kernel):
                block = l_inv @ masked[part][(slice(None), slice(None)) + tap]
                total += float(block.abs().sum(dim=1).max())
        expected = max(expected, total)
    assert stability_bound(weight, order) == pytest.approx(expected, rel=1e-12)
    layer = LAYERS[d](weight.shape[0], 2, order).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
    assert layer.stability_bound() == pytest.approx(expected, rel=1e-12)


def test_a_bound_below_one_bounds_a_long_1d_solve(rng):
    """ρ < 1 ⇒ max|x| ≤ ‖L⁻¹‖_∞ max|y| / (1 − ρ), however long the sequence."""
    layer = ifnn.InvConv1d(4, 4, "L", init_scale=0.0).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 4, 4, generator=rng, dtype=torch.float64))
        layer.weight[:, :, :-1] *= 0.9 / layer.stability_bound()   # ρ is linear in these taps
    rho = layer.stability_bound()
    assert rho == pytest.approx(0.9, rel=1e-12)
    centre = O.mask(layer.weight.detach(), "L")[:, :, -1]
    y = torch.randn(2, 4, 4000, generator=rng, dtype=torch.float64)
    x, _ = layer(y)
    l_inv_norm = float(torch.linalg.inv(centre).abs().sum(dim=1).max())
    x = x.detach()
    assert float(x.abs().max()) <= l_inv_norm * float(y.abs().max()) / (1 - rho) * (1 + 1e-9)


@pytest.mark.parametrize("d", [1, 3])
def test_record_growth_keeps_the_largest_ratio(d, rng):
    layer = _layer(d, O.corners(d)[0], channels=3)
    layer.record_growth = True
    ys = [torch.randn(2, 3, *SHAPE[d], generator=rng, dtype=torch.float64) * s for s in (1, 5)]
    ratios = []
    for y in ys:
        x, _ = layer(y)
        ratios.append(float(x.detach().abs().max() / y.abs().max()))
    assert float(layer.last_growth) == pytest.approx(max(ratios), rel=1e-12)


@pytest.mark.parametrize("d", [1, 3])
def test_layer_arguments_are_checked(d):
    cls, pattern = LAYERS[d], O.GROUP_PATTERN[d]
    bad_channels = {1: 5, 3: 12}[d]
    with pytest.raises(ValueError, match=rf"order='{pattern}' needs channels divisible by "
                                         rf"{2 ** d}, got {bad_channels}"):
        cls(bad_channels, 3, pattern)
    other = "TL" if d == 1 else "BR"
    with pytest.raises(ValueError, match=rf"order must be one of .* for {d}-D data"):
        cls(8, 3, other)
    with pytest.raises(ValueError, match=re.escape(
            f"kernel_size must be an integer k or {KERNEL_FORMS[d]}, got (3, 3) (2 entries)")):
        cls(8, (3, 3), pattern)
    with pytest.raises(ValueError, match=r"kernel_size\[0\] must be a positive integer"):
        cls(8, (0,) * d, pattern)
    with pytest.raises(ValueError, match="solve_on must be one of"):
        cls(8, 3, pattern, solve_on="both")
    with pytest.raises(ValueError, match=r"channels must be a positive integer"):
        cls(0)
    layer = cls(8, 2, pattern)
    with pytest.raises(ValueError, match=rf"y must be {d + 2}-D"):
        layer(torch.zeros(2, 8, *(3,) * (4 - d)))


# ------------------------------------------------------------------------- transforms

@pytest.mark.parametrize("d", [1, 3])
def test_transform_samples_by_convolution_and_scores_by_the_solve(d, rng):
    order = O.corners(d)[-1]
    weight = 0.3 * torch.randn(3, 3, *KERNEL[d], generator=rng, dtype=torch.float64)
    event = (3,) + SHAPE[d]
    base = D.Independent(D.Normal(torch.zeros(event, dtype=torch.float64),
                                  torch.ones(event, dtype=torch.float64)), d + 1)
    transform = TRANSFORMS[d](weight, order)
    flow = D.TransformedDistribution(base, [transform])
    x = torch.randn(4, 2, *event, generator=rng, dtype=torch.float64)   # two batch dims
    z = dense_inverse(x.reshape(8, *event), weight, order).reshape(x.shape)
    assert rel_err(flow.log_prob(x), base.log_prob(z)) <= 1e-10
    assert flow.log_prob(x).shape == (4, 2)
    torch.testing.assert_close(transform(z), x)
    assert transform.log_abs_det_jacobian(z, x).shape == (4, 2)
    # .inv is the other placement: its forward is the solve
    torch.testing.assert_close(transform.inv(x), z)
    assert flow.sample((5,)).shape == (5,) + event
    cached = transform.with_cache(1)
    assert type(cached) is TRANSFORMS[d] and cached.weight is weight and cached == transform


@pytest.mark.parametrize("d", [1, 3])
def test_transform_arguments_are_checked(d, rng):
    cls, pattern = TRANSFORMS[d], O.GROUP_PATTERN[d]
    weight = torch.randn(8, 8, *KERNEL[d], generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"weight must be {d + 2}-D"):
        cls(weight[..., 0] if d == 3 else weight[..., None])
    with pytest.raises(ValueError, match=rf"with C divisible by {2 ** d} for order='{pattern}'"):
        cls(weight, pattern)
    with pytest.raises(ValueError, match=r"order must be one of"):
        cls(weight, "quad")
    transform = cls(weight)
    with pytest.raises(ValueError, match=rf"with at least {d + 1} dimensions"):
        transform(torch.zeros((8,) + SHAPE[d][1:], dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"must have 8 channels .* in dimension -{d + 1}"):
        transform(torch.zeros(2, 3, *SHAPE[d], dtype=torch.float64))


@pytest.mark.parametrize("d", [1, 3])
def test_module_owns_and_trains_its_weight(d, rng):
    module = MODULES[d](8, 2).double()
    pattern = O.GROUP_PATTERN[d]
    assert module.order == pattern
    params = list(module.parameters())
    assert len(params) == 1 and params[0] is module.weight
    assert tuple(module.weight.shape) == (8, 8 // 2 ** d) + (2,) * d
    x = torch.randn(2, 8, *SHAPE[d], generator=rng, dtype=torch.float64)
    torch.testing.assert_close(module(x), O.causal_conv(x, module.weight.detach(), pattern))
    (module.inv(x) ** 2).sum().backward()
    assert module.weight.grad.abs().max() > 0
    assert module != MODULES[d](8, 2) and len({module, module}) == 1
    assert "order=" in repr(module)
