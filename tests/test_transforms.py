"""inverseflow.transforms inside torch.distributions and Pyro (DESIGN.md §9).

The oracle is the dense float64 solve of tests/oracle.py and the normal density written
out by hand; nothing here reuses the ops to check the ops.
"""

import copy
import math
import pickle

import pytest
import torch
from torch.distributions import Independent, Normal, TransformedDistribution

import oracle
from inverseflow.nn import InvConv2d
from inverseflow.transforms import InvConv2dModule, InvConv2dTransform

ORDERS = ["TL", "BR", "quad"]
EVENT = (4, 5, 6)


def _base(rng, event=EVENT):
    loc = torch.randn(*event, generator=rng, dtype=torch.float64)
    scale = torch.rand(*event, generator=rng, dtype=torch.float64) + 0.5
    return Independent(Normal(loc, scale), 3), loc, scale


def _normal_log_density(z, loc, scale):
    """Sum over (C, H, W) of log N(z; loc, scale), written out."""
    per_entry = -0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    return per_entry.sum(dim=(-3, -2, -1))


def _images(op, images, weight, order):
    """Applies an oracle op (NCHW) to (..., C, H, W)."""
    flat = images.reshape(-1, *images.shape[-3:])
    return op(flat, weight, order).reshape(images.shape)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_log_prob_is_the_base_density_of_the_solve(order, batch_shape, rng):
    weight = oracle.random_weight(EVENT[0], 3, 2, order, rng)
    base, loc, scale = _base(rng)
    flow = TransformedDistribution(base, [InvConv2dTransform(weight, order)], validate_args=True)
    x = torch.randn(*batch_shape, *EVENT, generator=rng, dtype=torch.float64)
    z = _images(oracle.inv_conv, x, weight, order)
    expected = _normal_log_density(z, loc, scale)   # log|det| = 0: no correction
    log_prob = flow.log_prob(x)
    assert log_prob.shape == batch_shape
    assert torch.allclose(log_prob, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", ORDERS)
def test_inv_is_the_other_placement(order, rng):
    weight = oracle.random_weight(EVENT[0], 3, 3, order, rng)
    base, loc, scale = _base(rng)
    flow = TransformedDistribution(base, [InvConv2dTransform(weight, order).inv])
    x = torch.randn(5, *EVENT, generator=rng, dtype=torch.float64)
    expected = _normal_log_density(_images(oracle.causal_conv, x, weight, order), loc, scale)
    assert torch.allclose(flow.log_prob(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", ORDERS)
def test_round_trip_and_sampling_direction(order, rng):
    weight = oracle.random_weight(EVENT[0], 3, 3, order, rng)
    t = InvConv2dTransform(weight, order)
    z = torch.randn(2, 3, *EVENT, generator=rng, dtype=torch.float64)
    x = t(z)
    assert torch.allclose(x, _images(oracle.causal_conv, z, weight, order), atol=1e-12)
    assert torch.allclose(t.inv(x), z, atol=1e-10)
    assert torch.allclose(t(t.inv(z)), z, atol=1e-10)
    assert t.inv.inv is t and t.inv.sign == 1 and t.bijective and t.event_dim == 3


def test_log_abs_det_jacobian_is_zero_of_the_batch_shape(rng):
    weight = oracle.random_weight(4, 2, 2, "TL", rng, dtype=torch.float32)
    t = InvConv2dTransform(weight, "TL")
    z = torch.randn(2, 3, *EVENT, generator=rng)
    for transform, a, b in ((t, z, t(z)), (t.inv, t(z), z)):
        ladj = transform.log_abs_det_jacobian(a, b)
        assert ladj.shape == (2, 3) and ladj.dtype == torch.float32
        assert torch.count_nonzero(ladj) == 0


@pytest.mark.parametrize("order", ["TL", "quad"])
def test_gradients_reach_the_weight(order, rng):
    weight = oracle.random_weight(EVENT[0], 3, 3, order, rng).requires_grad_()
    base, loc, scale = _base(rng)
    x = torch.randn(3, *EVENT, generator=rng, dtype=torch.float64)
    flow = TransformedDistribution(base, [InvConv2dTransform(weight, order)])
    (grad,) = torch.autograd.grad(flow.log_prob(x).sum(), weight)
    expected_weight = weight.detach().clone().requires_grad_()
    z = _images(oracle.inv_conv, x, expected_weight, order)
    (expected,) = torch.autograd.grad(_normal_log_density(z, loc, scale).sum(), expected_weight)
    assert grad.abs().max() > 0
    assert torch.allclose(grad, expected, rtol=1e-8, atol=1e-10)
    # rsample convolves: its pathwise gradient reaches the weight too.
    sample = flow.rsample((2,))
    assert sample.shape == (2, *EVENT)
    (sample_grad,) = torch.autograd.grad(sample.square().sum(), weight)
    assert sample_grad.abs().max() > 0
    assert flow.sample((4,)).shape == (4, *EVENT)


@pytest.mark.parametrize("args, error, match", [
    (("not a tensor",), TypeError, "weight must be a torch.Tensor"),
    ((torch.zeros(4, 4, 3, 3, dtype=torch.int64),), TypeError, "float32 or float64"),
    ((torch.zeros(4, 4, 3),), ValueError, "weight must be 4-D"),
    ((torch.zeros(4, 3, 3, 3),), ValueError, r"\(C, C, kh, kw\)"),
    ((torch.zeros(4, 4, 3, 3), "quad"), ValueError, "C divisible by 4"),
    ((torch.zeros(6, 1, 3, 3), "quad"), ValueError, "C divisible by 4"),
    ((torch.zeros(4, 4, 3, 3), "XY"), ValueError, "order must be one of"),
    ((torch.zeros(4, 4, 3, 3), 3), TypeError, "order must be a str"),
])
def test_bad_arguments_name_what_was_expected(args, error, match):
    with pytest.raises(error, match=match):
        InvConv2dTransform(*args)


def test_bad_images_are_rejected_clearly():
    t = InvConv2dTransform(torch.zeros(4, 4, 3, 3))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        t(torch.zeros(4, 5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        t.inv([1.0])
    # 3 channels for the transform's own 4-channel weight: the images are wrong, not the weight.
    with pytest.raises(ValueError, match=r"z must have 4 channels \(the weight's"):
        t(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"x must have 4 channels \(the weight's"):
        t.inv(torch.zeros(3, 5, 5))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 0, 5), (4, 5, 0), (1, 4, 0, 0), (0, 4, 5, 6)])
def test_empty_images_work_as_the_ops_do(order, shape, rng):
    # The ops take H = 0 or W = 0; the transform used to fail folding the batch with -1.
    from inverseflow import causal_conv2d, inv_conv2d

    weight = oracle.random_weight(4, 3, 3, order, rng)
    t = InvConv2dTransform(weight, order)
    images = torch.zeros(shape, dtype=torch.float64)
    flat = images.reshape(math.prod(shape[:-3]), *shape[-3:])
    torch.testing.assert_close(t(images), causal_conv2d(flat, weight, order).reshape(shape))
    torch.testing.assert_close(t.inv(images), inv_conv2d(flat, weight, order).reshape(shape))
    assert t.log_abs_det_jacobian(images, t(images)).shape == shape[:-3]


def test_with_cache_shares_the_weight(rng):
    weight = oracle.random_weight(4, 3, 3, "TL", rng).requires_grad_()
    cached = InvConv2dTransform(weight).with_cache(1)
    z = torch.randn(2, *EVENT, generator=rng, dtype=torch.float64)
    x = cached(z)
    assert cached.inv(x) is z and cached.weight is weight
    assert cached == InvConv2dTransform(weight) and cached != InvConv2dTransform(weight, "BR")


def test_module_is_initialised_like_invconv2d_and_owns_its_weight():
    torch.manual_seed(7)
    layer = InvConv2d(8, (3, 2), "quad")
    torch.manual_seed(7)
    module = InvConv2dModule(8, (3, 2), "quad")
    assert torch.equal(module.weight, layer.weight)
    assert [name for name, _ in module.named_parameters()] == ["weight"]
    assert isinstance(module.weight, torch.nn.Parameter)
    assert isinstance(module, InvConv2dTransform) and isinstance(module, torch.nn.Module)
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        InvConv2dModule(0)
    with pytest.raises(ValueError, match="divisible by 4"):
        InvConv2dModule(6)


def test_module_works_as_a_module_and_as_a_transform(rng):
    module = InvConv2dModule(4, 3, "TL").double()
    other = InvConv2dModule(4, 3, "TL")
    # Transform.__eq__ would make modules unhashable; containers need hashing.
    assert len({module, other}) == 2 and module == module and module != other
    container = torch.nn.ModuleList([module, other])
    assert len(list(container.parameters())) == 2
    assert set(container.state_dict()) == {"0.weight", "1.weight"}
    assert "InvConv2dModule(order='TL'" in repr(module)
    z = torch.randn(2, *EVENT, generator=rng, dtype=torch.float64)
    assert torch.allclose(module(z), module.forward(z))
    assert torch.allclose(module.inv(module(z)), z, atol=1e-10)
    assert module.inv.inv is module
    clone = copy.deepcopy(module)
    assert clone.weight is not module.weight and torch.equal(clone.weight, module.weight)
    assert torch.allclose(clone.inv(module(z)), z, atol=1e-10)
    restored = pickle.loads(pickle.dumps(module))
    assert torch.equal(restored.weight, module.weight)


def test_module_maximum_likelihood_step_with_a_torch_optimizer(rng):
    module = InvConv2dModule(4, 3, "quad").double()
    base, _, _ = _base(rng)
    flow = TransformedDistribution(base, [module])
    x = torch.randn(8, *EVENT, generator=rng, dtype=torch.float64)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-2)
    before = module.weight.detach().clone()
    loss = -flow.log_prob(x).mean()
    loss.backward()
    optimizer.step()
    assert not torch.equal(module.weight.detach(), before)


def test_pyro_svi_step_changes_the_weight(rng):
    import pyro   # in the test extra: a missing pyro-ppl fails here rather than skipping
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    pyro.clear_param_store()
    module = InvConv2dModule(4, 3, "quad")
    x = torch.randn(6, *EVENT, generator=rng)
    base = dist.Normal(torch.zeros(EVENT), torch.ones(EVENT)).to_event(3)

    def model(data):
        pyro.module("invconv", module)
        flow = dist.TransformedDistribution(base, [module])
        with pyro.plate("images", len(data)):
            pyro.sample("x", flow, obs=data)

    def guide(data):   # nothing latent: SVI is maximum likelihood here
        pass

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    before = module.weight.detach().clone()
    loss = svi.step(x)
    assert math.isfinite(loss)
    assert pyro.get_param_store()["invconv$$$weight"] is module.weight
    assert not torch.equal(module.weight.detach(), before)
    # Pyro's distribution scores with the solve, as torch.distributions does.
    z = _images(oracle.inv_conv, x.double(), module.weight.detach().double(), "quad")
    expected = _normal_log_density(z, torch.zeros(EVENT, dtype=torch.float64),
                                   torch.ones(EVENT, dtype=torch.float64))
    log_prob = dist.TransformedDistribution(base, [module]).log_prob(x)
    assert torch.allclose(log_prob.double(), expected, rtol=1e-4, atol=1e-3)
