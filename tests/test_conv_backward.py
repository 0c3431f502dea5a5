"""The causal conv's backward pieces (issue 18): every form of the weight gradient (with and
without batch chunks) and of the adjoint ``Tᵀu`` against the dense oracle, the per-shape
choice among them, and the backward's peak memory against conv's."""

import pytest
import torch
import torch.nn.functional as F

import inverseflow
import oracle
from inverseflow.bench.conv_parity import backward_peak_bytes
from inverseflow.ops import _autotune, _geometry

ORDERS = ("TL", "TR", "BL", "BR", "quad")
# (batch, channels, H, W, kh, kw): square and rectangular kernels, 1×k and k×1, images
# smaller than the kernel.
SHAPES = [(3, 8, 5, 7, 3, 2), (2, 4, 4, 4, 3, 3), (5, 12, 3, 6, 2, 3), (2, 16, 4, 5, 2, 1),
          (3, 4, 1, 2, 3, 3)]


def _weight_grad_oracle(x, grad_out, weight_shape, order):
    """Σ over every use of a weight entry (the oracle's dense index triples) of
    grad_out[row] · x[col]: the unmasked gradient, built without any convolution."""
    batch, channels, height, width = x.shape
    rows, cols, entry = oracle._dense_indices(order, channels, height, width, *weight_shape[2:])
    x_flat, g_flat = x.double().reshape(batch, -1), grad_out.double().reshape(batch, -1)
    products = (g_flat[:, rows] * x_flat[:, cols]).sum(0)
    total = torch.zeros(torch.Size(weight_shape).numel(), dtype=torch.float64)
    return total.index_add_(0, entry, products).reshape(weight_shape)


def _layouts(x):
    """The input as given, channels-last, and a non-contiguous slice of a wider tensor."""
    wide = torch.stack([x, x], dim=-1)[..., 0]
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": wide}


def _forms(order):
    return list(_geometry.weight_grad_forms(order))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("order", ORDERS)
def test_every_weight_grad_form_and_chunking_matches_the_oracle(order, shape, dtype, rng,
                                                                monkeypatch):
    batch, channels, height, width, kh, kw = shape
    weight_shape = (channels, channels // 4 if order == "quad" else channels, kh, kw)
    x = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64)
    grad_out = torch.randn(x.shape, generator=rng, dtype=torch.float64)
    expected = _weight_grad_oracle(x, grad_out, weight_shape, order)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    size = x.numel() * torch.finfo(dtype).bits // 8
    for form in _forms(order):
        fn = _geometry.WEIGHT_GRAD_FORMS[form]
        # one chunk, at least two, one sample each
        for budget, fewest, most in ((size, 1, 1), (size - 1, 2, batch), (1, batch, batch)):
            monkeypatch.setattr(_geometry, "WEIGHT_GRAD_CHUNK_BYTES", budget)
            assert fewest <= _geometry.batch_chunks(fn, x.to(dtype), order) <= most
            grads = _layouts(grad_out.to(dtype))
            for name, inp in _layouts(x.to(dtype)).items():
                got = _geometry._in_batch_chunks(fn, inp, grads[name], weight_shape, order)
                assert got.dtype == dtype and got.shape == weight_shape
                assert oracle.rel_err(got, expected) < tol, (form, budget, name)


def test_batch_chunks_are_at_least_two_above_the_chunk_size_and_at_most_the_cap():
    big = torch.empty(1000, 64, 64, 64, device="meta")          # 1 GiB of float32
    small = torch.empty(4, 4, 8, 8, device="meta")
    for form in _geometry.WEIGHT_GRAD_FORMS.values():
        for order in ("TL", "quad"):
            assert _geometry.batch_chunks(form, big, order) == _geometry.WEIGHT_GRAD_MAX_CHUNKS
            assert _geometry.batch_chunks(form, small, order) == 1
            just_over = torch.empty(_geometry.WEIGHT_GRAD_CHUNK_BYTES // 4 + 1, 1, 1, 1,
                                    device="meta")
            assert _geometry.batch_chunks(form, just_over, order) >= 2


@pytest.mark.parametrize("benchmark", [False, True], ids=["rule", "benchmark"])
@pytest.mark.parametrize("order", ORDERS)
def test_the_backward_takes_a_chosen_form_and_stays_exact(order, benchmark, rng, monkeypatch):
    monkeypatch.setattr(inverseflow.backends, "benchmark", benchmark)
    monkeypatch.setattr(_autotune, "_choices", {})
    weight = oracle.random_weight(8, 3, 2, order, rng).requires_grad_()
    y = torch.randn(3, 8, 6, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(y.shape, generator=rng, dtype=torch.float64)
    got = torch.autograd.grad(inverseflow.inv_conv2d(y, weight, order), (y, weight), upstream)
    key = [k for k in _autotune.choices() if k[:2] == ("conv_weight_grad", order)]
    # measured and remembered only in benchmark mode, and only where there is a choice
    assert len(key) == (benchmark and len(_forms(order)) > 1)
    assert all(_autotune.choices()[k] in _forms(order) for k in key)
    y64, w64 = y.detach().requires_grad_(), weight.detach().requires_grad_()
    want = torch.autograd.grad(oracle.inv_conv(y64, w64, order), (y64, w64), upstream)
    for a, b in zip(got, want):
        assert oracle.rel_err(a, b) < 1e-10


def test_a_recorded_double_backward_still_differentiates_the_weight_grad(rng):
    # create_graph: the weight gradient is recorded, so it takes the traceable form.
    x = torch.randn(2, 8, 4, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(x.shape, generator=rng, dtype=torch.float64, requires_grad=True)
    shape = (8, 2, 3, 3)
    assert torch.autograd.gradcheck(
        lambda a, b: _geometry.conv_weight_grad(a, b, shape, "quad"), (x, grad_out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("order", ORDERS)
def test_every_adjoint_form_matches_the_dense_transpose(order, shape, dtype, rng):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng, scale=0.5)
    u = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64)
    a = oracle.dense_matrix(weight, order, height, width)
    expected = (a.T @ u.reshape(batch, -1).T).T.reshape(u.shape)
    weight_m = oracle.mask(weight, order).to(dtype)
    forms = (_geometry.ADJOINT_GROUP_FORMS if order == "quad" else
             {"per_group": lambda t, w: _geometry._adjoint_per_group(t, w, order)})
    forms = {**forms, "chosen": lambda t, w: _geometry.causal_conv_adjoint(t, w, order)}
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for form, fn in forms.items():
        for name, inp in _layouts(u.to(dtype)).items():
            got = fn(inp, weight_m)
            assert got.dtype == dtype and got.shape == u.shape
            assert oracle.rel_err(got, expected) < tol, (form, name)


def test_forward_ad_of_the_transposed_solve_uses_the_adjoint_forms(rng):
    # The adjoint is the weight-tangent term of the transposed solve's jvp; with plain
    # dual tensors it takes a measured form, under torch.func the per-group one.
    import torch.autograd.forward_ad as fwAD
    weight = oracle.random_weight(8, 3, 3, "quad", rng)
    tangent = torch.randn(weight.shape, generator=rng, dtype=torch.float64)
    g = torch.randn(2, 8, 5, 4, generator=rng, dtype=torch.float64)
    op = inverseflow.ops.inv_conv2d_transposed
    _, want = torch.func.jvp(lambda w: oracle.inv_conv_transposed(g, w, "quad"), (weight,),
                             (tangent,))
    with fwAD.dual_level():
        got = fwAD.unpack_dual(op(g, fwAD.make_dual(weight, tangent), "quad")).tangent
    assert oracle.rel_err(got, want) < 1e-10
    _, got_func = torch.func.jvp(lambda w: op(g, w, "quad"), (weight,), (tangent,))
    assert oracle.rel_err(got_func, want) < 1e-10


def _backward_peaks(batch, channels, size, order, rng):
    cg = channels // 4 if order == "quad" else channels
    weight = (0.03 * torch.randn(channels, cg, 3, 3, generator=rng)).requires_grad_()
    y = torch.randn(batch, channels, size, size, generator=rng, requires_grad=True)
    upstream = torch.randn(y.shape, generator=rng)
    conv = F.conv2d(y, weight, padding=1, groups=4 if order == "quad" else 1)
    conv_peak = backward_peak_bytes(
        lambda: torch.autograd.grad(conv, (y, weight), upstream, retain_graph=True))
    x = inverseflow.inv_conv2d(y, weight, order)
    ours = {}
    for form in _forms(order):
        # each form in turn, as if it had been chosen
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_autotune, "choose", lambda op, order, forms, *args, form=form: form)
            ours[form] = backward_peak_bytes(
                lambda: torch.autograd.grad(x, (y, weight), upstream, retain_graph=True))
    return ours, conv_peak


@pytest.mark.parametrize("order", ["TL", "quad"])
def test_backward_peak_memory_is_no_larger_than_convs(order, rng):
    # Deterministic: the allocator's events, not timings. The input (768 KiB) is above the
    # chunk size, where the bound holds for every form; before the chunks (and the copy-free
    # form) the padded copy made it 5.30 against 3.68 B·C·H·W for TL, 2.24 against 2.00 for
    # quad.
    batch, channels, size = 64, 12, 16
    assert batch * channels * size**2 * 4 > _geometry.WEIGHT_GRAD_CHUNK_BYTES
    ours, conv_peak = _backward_peaks(batch, channels, size, order, rng)
    for form, peak in ours.items():
        assert peak <= conv_peak, (form, peak / conv_peak)
