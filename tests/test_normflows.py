"""inverseflow.integrations.normflows inside normflows' NormalizingFlow and MultiscaleFlow.

normflows is in the test extra, so it is imported plainly: a missing package fails here
rather than skipping. The oracle is tests/oracle.py's dense float64 solve.
"""

import math
import subprocess
import sys

import normflows as nf
import pytest
import torch

import oracle
from inverseflow.integrations.normflows import InvConv2dFlow


def _gaussian(shape, rng):
    """normflows' DiagGaussian with random (not the default zero) parameters, float64."""
    q0 = nf.distributions.DiagGaussian(shape).double()
    with torch.no_grad():
        q0.loc.copy_(torch.randn(q0.loc.shape, generator=rng, dtype=torch.float64))
        q0.log_scale.copy_(0.3 * torch.randn(q0.log_scale.shape, generator=rng,
                                             dtype=torch.float64))
    return q0


def _log_density(z, q0):
    """log N(z; loc, exp(log_scale)) summed over (C, H, W), written out."""
    loc, log_scale = q0.loc.detach(), q0.log_scale.detach()
    per_entry = (-0.5 * ((z - loc) * torch.exp(-log_scale)) ** 2 - log_scale
                 - 0.5 * math.log(2 * math.pi))
    return per_entry.sum(dim=(1, 2, 3))


def _set_weight(flow, rng):
    with torch.no_grad():
        w = flow.conv.weight
        w.copy_(oracle.random_weight(w.shape[0], w.shape[2], w.shape[3], flow.conv.order, rng))
    return flow.conv.weight


@pytest.mark.parametrize("order", ["TL", "quad"])
@pytest.mark.parametrize("solve_on", ["density", "sampling"])
def test_normalizing_flow_log_prob_matches_a_hand_computation(order, solve_on, rng):
    layer = InvConv2dFlow(4, 3, order, solve_on=solve_on).double()
    weight = _set_weight(layer, rng)
    q0 = _gaussian((4, 5, 6), rng)
    model = nf.NormalizingFlow(q0, [layer])
    x = torch.randn(3, 4, 5, 6, generator=rng, dtype=torch.float64)
    to_latent = oracle.inv_conv if solve_on == "density" else oracle.causal_conv
    expected = _log_density(to_latent(x, weight.detach(), order), q0)
    log_prob = model.log_prob(x)
    assert log_prob.shape == (3,)
    assert torch.allclose(log_prob, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", ["BR", "quad"])
def test_round_trip_log_det_shape_and_sampling(order, rng):
    layer = InvConv2dFlow(8, (2, 3), order).double()
    weight = _set_weight(layer, rng)
    z = torch.randn(3, 8, 4, 5, generator=rng, dtype=torch.float64)
    x, log_det = layer(z)
    # forward is latent → data: in the Inverse-Flow placement a plain convolution.
    assert torch.allclose(x, oracle.causal_conv(z, weight.detach(), order), atol=1e-12)
    back, inv_log_det = layer.inverse(x)
    assert torch.allclose(back, z, atol=1e-10)
    for ld in (log_det, inv_log_det):
        assert ld.shape == (3,) and ld.dtype == torch.float64 and torch.count_nonzero(ld) == 0

    model = nf.NormalizingFlow(_gaussian((8, 4, 5), rng), [layer])
    samples, log_q = model.sample(6)
    assert samples.shape == (6, 8, 4, 5)
    assert torch.allclose(model.log_prob(samples), log_q, rtol=1e-8, atol=1e-8)


def test_forward_kld_gradient_reaches_the_weight_and_training_changes_it(rng):
    layer = InvConv2dFlow(4, 3, "quad").double()
    weight = _set_weight(layer, rng)
    q0 = _gaussian((4, 5, 5), rng)
    model = nf.NormalizingFlow(q0, [layer])
    x = torch.randn(4, 4, 5, 5, generator=rng, dtype=torch.float64)
    loss = model.forward_kld(x)
    (grad,) = torch.autograd.grad(loss, weight)
    oracle_weight = weight.detach().clone().requires_grad_()
    expected_loss = -_log_density(oracle.inv_conv(x, oracle_weight, "quad"), q0).mean()
    (expected,) = torch.autograd.grad(expected_loss, oracle_weight)
    assert grad.abs().max() > 0
    assert torch.allclose(grad, expected, rtol=1e-8, atol=1e-10)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = weight.detach().clone()
    model.forward_kld(x).backward()
    optimizer.step()
    assert not torch.equal(weight.detach(), before)


def _multiscale(rng):
    """Two levels on (2, 8, 8) images: [conv, Squeeze] per level, a channel Merge between."""
    fine, coarse = InvConv2dFlow(8, 3, "quad").double(), InvConv2dFlow(16, 2, "TL").double()
    _set_weight(fine, rng)
    _set_weight(coarse, rng)
    q0 = [_gaussian((16, 2, 2), rng), _gaussian((4, 4, 4), rng)]
    flows = [[coarse, nf.flows.Squeeze()], [fine, nf.flows.Squeeze()]]
    model = nf.MultiscaleFlow(q0, flows, [nf.flows.Merge()], class_cond=False)
    return model, fine, coarse, q0


def _unsqueeze_to_channels(x):
    """Space-to-depth: (B, C, H, W) → (B, 4C, H/2, W/2), as normflows' Squeeze.inverse lays
    the 2×2 block out (channel c*4 + 2*dh + dw)."""
    b, c, h, w = x.shape
    return (x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
            .reshape(b, 4 * c, h // 2, w // 2))


def test_multiscale_flow_log_prob_matches_a_hand_computation(rng):
    model, fine, coarse, q0 = _multiscale(rng)
    x = torch.randn(3, 2, 8, 8, generator=rng, dtype=torch.float64)
    u = oracle.inv_conv(_unsqueeze_to_channels(x), fine.conv.weight.detach(), "quad")
    kept, factored = u.chunk(2, dim=1)
    v = oracle.inv_conv(_unsqueeze_to_channels(kept), coarse.conv.weight.detach(), "TL")
    expected = _log_density(factored, q0[1]) + _log_density(v, q0[0])
    assert torch.allclose(model.log_prob(x, None), expected, rtol=1e-10, atol=1e-10)


def test_multiscale_flow_samples_round_trip_and_trains(rng):
    model, fine, coarse, _ = _multiscale(rng)
    samples, log_q = model.sample(5)
    assert samples.shape == (5, 2, 8, 8)
    assert torch.allclose(model.log_prob(samples, None), log_q, rtol=1e-8, atol=1e-8)
    latents, log_det = model.inverse_and_log_det(samples)
    assert log_det.shape == (5,) and torch.count_nonzero(log_det) == 0
    rebuilt, _ = model.forward_and_log_det(latents)
    assert torch.allclose(rebuilt, samples, atol=1e-10)

    x = torch.randn(4, 2, 8, 8, generator=rng, dtype=torch.float64)
    model.forward_kld(x).backward()
    for layer in (fine, coarse):
        assert layer.conv.weight.grad.abs().max() > 0


def test_importing_inverseflow_does_not_import_normflows():
    code = ("import sys, inverseflow, inverseflow.transforms, inverseflow.integrations; "
            "print('normflows' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
