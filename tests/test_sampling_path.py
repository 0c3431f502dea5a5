"""The sampling pass's fast paths (issue 18): quad's causal-conv forms against the dense
oracle, the per-shape choice among them, and the per-version caches of the masked weight
and of the 1×1 inverse (reused while the weights are unchanged, recomputed after any
in-place update)."""

import pytest
import torch

import inverseflow
import oracle
from inverseflow.nn import InvConv2d, InvertibleConv1x1
from inverseflow.ops import _form_rules, _geometry, _weight_cache

QUAD_FORMS = _geometry.sampling_forms("quad", 2, True)

# (batch, channels, H, W, kh, kw): square and rectangular kernels, 1×k and k×1, images
# smaller than the kernel.
SHAPES = [(2, 8, 5, 7, 3, 2), (1, 4, 4, 4, 3, 3), (3, 12, 6, 6, 1, 3), (2, 16, 4, 5, 2, 1),
          (2, 4, 1, 2, 3, 3)]


def _layouts(x):
    """The input as given, channels-last, and a non-contiguous slice of a wider tensor."""
    wide = torch.stack([x, x], dim=-1)[..., 0]   # x again, with a column stride of 2
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": wide}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("form", sorted(QUAD_FORMS))
def test_every_quad_form_matches_the_dense_oracle(form, shape, dtype, rng):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, "quad", rng, scale=0.5)
    x = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64)
    expected = oracle.causal_conv(x, weight, "quad")
    weight_m = _geometry.masked_weight(weight.to(dtype), "quad")
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    if dtype == torch.float64:
        assert QUAD_FORMS[form](x.to(dtype), weight_m).dtype == dtype
    for name, inp in _layouts(x.to(dtype)).items():
        got = QUAD_FORMS[form](inp, weight_m)
        assert oracle.rel_err(got, expected) < tol, name


def test_an_inf_in_one_group_stays_in_that_group(rng):
    # The block-diagonal weight is built by padding: an inf in group 0's taps must not turn
    # the other groups' outputs into NaN (a product with a 0/1 mask would).
    weight = oracle.random_weight(8, 3, 3, "quad", rng)
    weight[0, 0, 0, 0] = float("inf")
    x = torch.rand(1, 8, 4, 4, generator=rng, dtype=torch.float64) + 0.1
    weight_m = _geometry.masked_weight(weight, "quad")
    for form, fn in QUAD_FORMS.items():
        out = fn(x, weight_m)
        assert torch.isfinite(out[:, 2:]).all(), form
        assert torch.isinf(out[:, :1]).any(), form


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_every_equal_form_keeps_a_non_finite_input_in_its_group(dims, rng):
    """DESIGN §16: equal means equal for bad data too. An inf in group 0's data must leave
    every other group's result finite in every form of the causal conv, its adjoint and the
    weight gradient (a dense block-diagonal or embedded weight would spread 0·inf = NaN)."""
    order = {1: "pair", 2: "quad", 3: "oct"}[dims]
    groups, size = 2 ** dims, {1: 6, 2: 4, 3: 3}[dims]
    channels = 2 * groups
    weight = 0.1 * torch.randn(channels, 2, *(2,) * dims, generator=rng, dtype=torch.float64)
    weight_m = _geometry.masked_weight(weight, order)
    x = torch.rand(2, channels, *(size,) * dims, generator=rng, dtype=torch.float64) + 0.1
    x[(0, 0) + (0,) * dims] = float("inf")       # group 0 holds channels 0 and 1
    others = slice(2, None)
    for name, fn in _geometry.sampling_forms(order, dims, True).items():
        assert torch.isfinite(fn(x, weight_m)[:, others]).all(), ("causal_conv", name)
    for name, fn in _geometry.ADJOINT_GROUP_FORMS.items():
        assert torch.isfinite(fn(x, weight_m)[:, others]).all(), ("adjoint", name)
    grad_out = torch.rand_like(x)
    for name, form in _geometry.weight_grad_forms(order).items():
        grad = _geometry._in_batch_chunks(form, x, grad_out, tuple(weight.shape), order)
        assert torch.isfinite(grad[others]).all(), ("weight_grad", name)
        assert not torch.isfinite(grad[:2]).all(), ("weight_grad", name)


def test_sampling_takes_the_rules_form_and_stays_exact(rng):
    weight = oracle.random_weight(12, 3, 3, "quad", rng)
    x = torch.randn(3, 12, 7, 6, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        got = inverseflow.causal_conv2d(x, weight, "quad")
    weight_m = _geometry.masked_weight(weight, "quad")
    assert _form_rules.pick("causal_conv", "quad", QUAD_FORMS, (x, weight_m)) in QUAD_FORMS
    assert oracle.rel_err(got, oracle.causal_conv(x, weight, "quad")) < 1e-12


def test_autograd_through_the_causal_conv_still_matches_the_oracle(rng):
    weight = oracle.random_weight(8, 3, 2, "quad", rng).requires_grad_()
    x = torch.randn(2, 8, 5, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(inverseflow.causal_conv2d(x, weight, "quad").square().sum(),
                              (x, weight))
    want = torch.autograd.grad(oracle.causal_conv(x, weight, "quad").square().sum(), (x, weight))
    for g, w in zip(got, want):
        assert oracle.rel_err(g, w) < 1e-12


def test_masked_weight_is_computed_once_per_weight_version(rng):
    layer = InvConv2d(8, 3, order="quad").double()
    with torch.no_grad():
        first = _geometry.masked_weight(layer.weight, "quad")
        assert _geometry.masked_weight(layer.weight, "quad") is first   # reused
        layer.weight.add_(0.01)                                          # in-place update
        second = _geometry.masked_weight(layer.weight, "quad")
    assert second is not first
    assert torch.equal(second, oracle.mask(layer.weight.detach(), "quad"))
    # With a graph to record nothing is cached: the result carries the gradient.
    assert _geometry.masked_weight(layer.weight, "quad").requires_grad


def test_sampling_after_optimizer_steps_and_load_state_dict_uses_the_new_weights(rng):
    layer = InvConv2d(8, 3, order="quad").double()
    z = torch.randn(2, 8, 5, 5, generator=rng, dtype=torch.float64)

    def check():
        with torch.no_grad():
            got = layer.inverse(z)
        assert oracle.rel_err(got, oracle.causal_conv(z, layer.weight.detach(), "quad")) < 1e-12

    check()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.weight.grad = torch.randn_like(layer.weight)
    optimizer.step()
    check()
    layer.load_state_dict({"weight": torch.randn_like(layer.weight) * 0.05})
    check()
    with torch.inference_mode():    # inference tensors have no version: no caching, still exact
        got = layer.inverse(z)
    assert oracle.rel_err(got, oracle.causal_conv(z, layer.weight.detach(), "quad")) < 1e-12


def test_writes_through_data_reach_the_cached_paths(rng):
    # .data writes (gradcheck's numerical perturbation, hand-made weight surgery) bypass the
    # version counter; the cache used to return the old masked weight, silently.
    layer = InvConv2d(8, 3, order="quad").double()
    conv1x1 = InvertibleConv1x1(8).double()
    z = torch.randn(2, 8, 5, 5, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        layer.inverse(z), conv1x1.inverse(z)    # fill the caches
        layer.weight.data.copy_(0.05 * torch.randn(layer.weight.shape, generator=rng,
                                                   dtype=torch.float64))
        conv1x1.log_s.data.add_(0.3)
        got, got_1x1 = layer.inverse(z), conv1x1.inverse(z)
    assert oracle.rel_err(got, oracle.causal_conv(z, layer.weight.detach(), "quad")) < 1e-12
    w_inv = torch.linalg.inv(conv1x1.matrix().detach())
    assert torch.allclose(got_1x1, torch.einsum("ij,bjhw->bihw", w_inv, z), atol=1e-12)


def test_conv1x1_inverse_is_cached_per_version_and_follows_updates(rng):
    layer = InvertibleConv1x1(6).double()
    z = torch.randn(2, 6, 3, 3, generator=rng, dtype=torch.float64)

    def expected():
        w = layer.matrix().detach()
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(w), z)

    with torch.no_grad():
        a = layer.inverse(z)
        assert torch.allclose(a, expected(), atol=1e-12)
        assert any(key[0] == "conv1x1_inverse" and key[1] == id(layer.lower)
                   for key in _weight_cache._entries)   # computed once, kept for this version
        layer.log_s.add_(0.3)
        b = layer.inverse(z)
    assert torch.allclose(b, expected(), atol=1e-12) and not torch.allclose(a, b)
    # And the forward still inverts it exactly.
    with torch.no_grad():
        assert torch.allclose(layer(b)[0], z, atol=1e-12)


def test_the_cached_paths_trace_whole_under_torch_compile(rng):
    # fullgraph: the cache and form choice must step aside for Dynamo without a graph break.
    layer = InvConv2d(8, 3, order="quad").double().eval()
    mix = InvertibleConv1x1(8).double()
    z = torch.randn(2, 8, 6, 6, generator=rng, dtype=torch.float64)
    compiled = torch.compile(lambda t: mix.inverse(layer.inverse(t)), fullgraph=True,
                             backend="eager")
    with torch.no_grad():
        got = compiled(z)
        want = mix.inverse(layer.inverse(z))
    assert torch.allclose(got, want, atol=1e-12)
