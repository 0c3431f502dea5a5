"""Inverse-Flow models: exact inverse, exact log-det, placement of the solve, gradients."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from inverseflow.models import Glow, InverseFlow, bits_per_dim, from_preset
from inverseflow.nn import ActNorm, InvConv2d

PLACEMENTS = ["density", "sampling"]


def _tiny(solve_on="density", model=InverseFlow, order="quad", kernel_size=2, rng=None):
    torch.manual_seed(0 if rng is None else int(torch.randint(1 << 30, (1,), generator=rng)))
    kwargs = dict(kernel_size=kernel_size, solve_on=solve_on, order=order) if model is InverseFlow else {}
    flow = model((1, 4, 4), levels=2, steps=2, coupling_width=8, **kwargs).double()
    # Zero-initialised parts (coupling outputs, priors) would make the test blind to
    # their log-det terms: move every parameter off its initial value.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for module in flow.modules():
        if isinstance(module, ActNorm):
            module.initialized.fill_(True)
    return flow


def _images(batch, rng, shape=(1, 4, 4)):
    return (0.05 + 0.9 * torch.rand(batch, *shape, generator=rng, dtype=torch.float64))


@pytest.mark.parametrize("model,solve_on", [(InverseFlow, "density"),
                                            (InverseFlow, "sampling"), (Glow, None)])
def test_decode_inverts_encode(model, solve_on, rng):
    flow = _tiny(solve_on, model, rng=rng)
    x = _images(5, rng)
    z, logdet = flow.encode(x)
    assert z.shape == (5, 16) and logdet.shape == (5,)
    assert torch.allclose(flow.decode(z), x, atol=1e-10, rtol=0)
    z2 = torch.randn(5, 16, generator=rng, dtype=torch.float64)
    assert torch.allclose(flow.encode(flow.decode(z2))[0], z2, atol=1e-8, rtol=0)


@pytest.mark.parametrize("model,solve_on,order", [(InverseFlow, "density", "quad"),
                                                  (InverseFlow, "sampling", "quad"),
                                                  (InverseFlow, "density", "TL"),
                                                  (InverseFlow, "sampling", "BR"),
                                                  (Glow, None, None)])
def test_logdet_matches_dense_jacobian(model, solve_on, order, rng):
    flow = _tiny(solve_on, model, order=order or "quad", rng=rng)
    x = _images(3, rng)
    _, logdet = flow.encode(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow.encode(v.reshape(1, 1, 4, 4))[0][0], x[i].flatten())
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logdet[i].item() - expected.item()) < 1e-8, (logdet[i], expected)


def test_log_prob_is_standard_normal_latent_plus_logdet(rng):
    flow = _tiny(rng=rng)
    x = _images(4, rng)
    z, logdet = flow.encode(x)
    normal = torch.distributions.Normal(torch.zeros(()), torch.ones(())).log_prob(z).sum(1)
    assert torch.allclose(flow.log_prob(x), normal + logdet, atol=1e-10)
    # bits/dim: −log p(x) of the dequantised image plus D·log 256, over D·log 2.
    lp = flow.log_prob(x)
    assert torch.allclose(bits_per_dim(lp, 16), (-lp / 16 + math.log(256)) / math.log(2))


def test_sampling_draws_standard_normal_latents(rng):
    flow = _tiny(rng=rng)
    gen = torch.Generator().manual_seed(7)
    samples = flow.sample(6, temperature=0.5, generator=gen)
    z_expected = 0.5 * torch.randn(6, 16, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(samples, flow.decode(z_expected.double()).clamp(0, 1))


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _ops_of(fn):
    with _OpRecorder() as rec:
        fn()
    return rec.ops


@pytest.mark.parametrize("solve_on", PLACEMENTS)
def test_solve_runs_only_in_the_chosen_pass(solve_on, rng):
    flow = _tiny(solve_on, rng=rng).float()
    x = _images(2, rng).float()
    encode_ops = _ops_of(lambda: flow.encode(x))
    sample_ops = _ops_of(lambda: flow.sample(2))
    solve = "inverseflow.inv_conv2d"
    if solve_on == "density":
        assert solve in encode_ops and solve not in sample_ops
    else:
        assert solve in sample_ops and solve not in encode_ops
    # Glow runs no k×k layer at all.
    glow = _tiny(model=Glow, rng=rng).float()
    assert solve not in _ops_of(lambda: glow.sample(2)) | _ops_of(lambda: glow.encode(x))


def test_set_solve_on_switches_every_layer_and_keeps_parameters(rng):
    flow = _tiny("density", rng=rng)
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    flow.set_solve_on("sampling")
    assert all(m.solve_on == "sampling" for m in flow.modules() if isinstance(m, InvConv2d))
    assert all(torch.equal(state[k], v) for k, v in flow.state_dict().items())
    x = _images(3, rng)
    assert torch.allclose(flow.decode(flow.encode(x)[0]), x, atol=1e-10)


@pytest.mark.parametrize("solve_on", PLACEMENTS)
def test_gradients_are_finite(solve_on, rng):
    flow = from_preset("digits", solve_on=solve_on)
    x = torch.randint(0, 256, (8, 1, 8, 8), generator=rng, dtype=torch.uint8)
    flow.bits_per_dim(x, generator=rng).mean().backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_actnorm_initialises_from_the_first_batch(rng):
    layer = ActNorm(3)
    x = 5 + 2 * torch.randn(64, 3, 4, 4, generator=rng)
    z, _ = layer(x)
    assert bool(layer.initialized)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_presets_and_bad_arguments():
    assert from_preset("mnist").config["steps"] == 16
    assert from_preset("mnist").config["coupling_width"] == 512
    assert from_preset("mnist").config["levels"] == 2
    with pytest.raises(ValueError, match="preset"):
        from_preset("svhn")
    with pytest.raises(ValueError, match="levels"):
        InverseFlow((1, 8, 8), levels=0, steps=1)
    with pytest.raises(ValueError, match="divisible"):
        InverseFlow((1, 6, 6), levels=2, steps=1)
    with pytest.raises(ValueError, match="image_shape"):
        InverseFlow((8, 8), levels=1, steps=1)
    flow = from_preset("digits")
    with pytest.raises(ValueError, match="shape"):
        flow.encode(torch.rand(2, 1, 7, 7))
    with pytest.raises(TypeError, match="floating"):
        flow.encode(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n must"):
        flow.sample(0)
    with pytest.raises(ValueError, match="solve_on"):
        flow.set_solve_on("both")
