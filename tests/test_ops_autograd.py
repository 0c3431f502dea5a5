"""Autograd, opcheck, torch.compile, the mask's semantics and non-contiguous inputs."""

from __future__ import annotations

import pytest
import torch

import inverseflow

import oracle

ORDERS = ("TL", "TR", "BL", "BR", "quad")
OPS = {
    "inv_conv2d": lambda: torch.ops.inverseflow.inv_conv2d,
    "inv_conv2d_transposed": lambda: torch.ops.inverseflow.inv_conv2d_transposed,
    "causal_conv2d": lambda: torch.ops.inverseflow.causal_conv2d,
}


def _inputs(shape, order, rng, dtype=torch.float64, requires_grad=False):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng, dtype=dtype)
    y = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64).to(dtype)
    return y.requires_grad_(requires_grad), weight.requires_grad_(requires_grad)


# --------------------------------------------------------------------------- gradcheck

# Generic shapes (kh != kw) plus shapes that hit specialized kernels (C 4/8, k 2x2/3x3).
GRADCHECK_SHAPES = [(2, 8, 3, 4, 2, 3), (2, 4, 3, 3, 2, 2), (1, 8, 2, 3, 3, 3), (3, 4, 1, 4, 1, 2)]


@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=oracle.param_id)
@pytest.mark.parametrize("order", ORDERS)
def test_gradcheck_inv_conv2d(order, shape, rng):
    y, weight = _inputs(shape, order, rng, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: inverseflow.inv_conv2d(a, b, order), (y, weight))


@pytest.mark.parametrize("order", ORDERS)
def test_gradcheck_causal_conv2d(order, rng):
    x, weight = _inputs((2, 8, 3, 4, 2, 3), order, rng, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: inverseflow.causal_conv2d(a, b, order),
                                    (x, weight))


@pytest.mark.parametrize("order", ORDERS)
def test_gradcheck_inv_conv2d_transposed(order, rng):
    g, weight = _inputs((2, 4, 3, 3, 2, 2), order, rng, requires_grad=True)
    op = torch.ops.inverseflow.inv_conv2d_transposed
    assert torch.autograd.gradcheck(lambda a, b: op(a, b, order), (g, weight))


@pytest.mark.parametrize("order", ["TL", "quad"])
def test_gradgradcheck_inv_conv2d(order, rng):
    y, weight = _inputs((1, 4, 2, 3, 2, 2), order, rng, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: inverseflow.inv_conv2d(a, b, order),
                                        (y, weight))


# --------------------------------------------------------------- gradients vs the oracle

ORACLE_GRAD_SHAPES = [(3, 12, 3, 4, 3, 3), (17, 8, 3, 3, 2, 2), (2, 4, 4, 5, 2, 3),
                      (1, 4, 1, 6, 3, 1), (3, 24, 2, 3, 2, 2)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", ORACLE_GRAD_SHAPES,
                         ids=oracle.param_id)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fn", ["inv_conv2d", "causal_conv2d"])
def test_gradients_match_oracle(fn, order, shape, dtype, rng):
    y, weight = _inputs(shape, order, rng, dtype=dtype, requires_grad=True)
    upstream = torch.randn(y.shape, generator=rng, dtype=torch.float64)
    out = getattr(inverseflow, fn)(y, weight, order)
    out.backward(upstream.to(dtype))

    y64 = y.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref = (oracle.inv_conv if fn == "inv_conv2d" else oracle.causal_conv)(y64, w64, order)
    ref.backward(upstream)

    tol = 1e-10 if dtype == torch.float64 else 1e-5
    err_y = oracle.rel_err(y.grad, y64.grad)
    err_w = oracle.rel_err(weight.grad, w64.grad)
    assert err_y <= tol, f"{fn} {order} {shape} {dtype}: grad y rel err {err_y:.3e}"
    assert err_w <= tol, f"{fn} {order} {shape} {dtype}: grad weight rel err {err_w:.3e}"


# ------------------------------------------------------------------------------ opcheck

@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("order,shape", [("TL", (3, 12, 3, 4, 3, 3)), ("quad", (2, 8, 3, 3, 2, 3)),
                                         ("BR", (17, 4, 2, 5, 2, 2))],
                         ids=["TL-spec", "quad-generic", "BR"])
@pytest.mark.parametrize("op_name", list(OPS))
def test_opcheck(op_name, order, shape, dtype, requires_grad, rng):
    y, weight = _inputs(shape, order, rng, dtype=dtype, requires_grad=requires_grad)
    torch.library.opcheck(OPS[op_name](), (y, weight, order))


# ------------------------------------------------------------------------ torch.compile

def _pipeline(y, w_tl, w_quad):
    x = inverseflow.inv_conv2d(y, w_tl, "TL")
    z = inverseflow.causal_conv2d(torch.tanh(x), w_quad, "quad")
    # A different weight for the second inverse, so that it does not cancel the causal conv.
    out = inverseflow.inv_conv2d(z * 1.5, w_quad * 0.5, "quad")
    return out + inverseflow.causal_conv2d(x, w_tl)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, rng):
    torch._dynamo.reset()
    shape = (3, 8, 4, 5)
    y = torch.randn(shape, generator=rng, dtype=torch.float64)
    w_tl = oracle.random_weight(8, 3, 3, "TL", rng)
    w_quad = oracle.random_weight(8, 2, 2, "quad", rng)
    upstream = torch.randn(shape, generator=rng, dtype=torch.float64)

    def run(fn):
        leaves = [t.clone().requires_grad_(True) for t in (y, w_tl, w_quad)]
        out = fn(*leaves)
        out.backward(upstream)
        return out.detach(), [t.grad for t in leaves]

    eager_out, eager_grads = run(_pipeline)
    for grad in eager_grads:   # the pipeline really depends on every input
        assert grad.abs().max() > 1e-3
    compiled = torch.compile(_pipeline, backend=backend, fullgraph=True)
    comp_out, comp_grads = run(compiled)
    assert oracle.rel_err(comp_out, eager_out) <= 1e-12
    for name, a, b in zip(("y", "w_tl", "w_quad"), comp_grads, eager_grads):
        assert oracle.rel_err(a, b) <= 1e-12, name
    # A second call with fresh values reuses the graph and still matches.
    y2 = torch.randn(shape, generator=rng, dtype=torch.float64)
    assert oracle.rel_err(compiled(y2, w_tl, w_quad), _pipeline(y2, w_tl, w_quad)) <= 1e-12
    torch._dynamo.reset()


# ------------------------------------------------------------------------------- masking

MASK_SHAPE = (3, 8, 3, 4, 3, 2)


def _apply_fn(fn, y, weight, order):
    if fn == "inv_conv2d_transposed":
        return torch.ops.inverseflow.inv_conv2d_transposed(y, weight, order)
    return getattr(inverseflow, fn)(y, weight, order)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [MASK_SHAPE, (3, 12, 3, 3, 3, 3)], ids=["generic", "C12k3"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fn", ["inv_conv2d", "inv_conv2d_transposed", "causal_conv2d"])
def test_masked_entries_do_not_change_results(fn, order, shape, dtype, rng):
    y, weight = _inputs(shape, order, rng, dtype=dtype)
    masked = oracle.masked_positions(weight.shape, order)
    assert masked.any() and not masked.all()
    other = weight.clone()
    other[masked] = (torch.randn(int(masked.sum()), generator=rng, dtype=torch.float64) * 10
                     ).to(dtype)
    assert not torch.equal(other, weight)
    assert torch.equal(_apply_fn(fn, y, other, order), _apply_fn(fn, y, weight, order))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("order", ["TL", "BR", "quad"])
@pytest.mark.parametrize("fn", ["inv_conv2d", "inv_conv2d_transposed", "causal_conv2d"])
def test_nonfinite_masked_entries_are_ignored(fn, order, value, rng):
    """DESIGN §2: stored values at masked positions never change a result, whatever they are."""
    y, weight = _inputs(MASK_SHAPE, order, rng)
    other = weight.clone()
    other[oracle.masked_positions(weight.shape, order)] = value
    expected = _apply_fn(fn, y, weight, order)
    got = _apply_fn(fn, y, other, order)
    assert torch.isfinite(expected).all()
    assert torch.equal(got, expected), (
        f"{fn} order={order}: masked entries set to {value} changed the result; "
        f"non-finite outputs: {int((~torch.isfinite(got)).sum())} of {got.numel()}")


@pytest.mark.parametrize("shape", [MASK_SHAPE, (3, 12, 3, 3, 3, 3)], ids=["generic", "C12k3"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fn", ["inv_conv2d", "inv_conv2d_transposed", "causal_conv2d"])
def test_masked_entries_get_exactly_zero_gradient(fn, order, shape, rng):
    y, weight = _inputs(shape, order, rng, requires_grad=True)
    out = _apply_fn(fn, y, weight, order)
    out.backward(torch.randn(out.shape, generator=rng, dtype=out.dtype))
    masked = oracle.masked_positions(weight.shape, order)
    assert (weight.grad[masked] == 0).all(), weight.grad[masked]
    assert (weight.grad[~masked] != 0).float().mean() > 0.5   # the rest is really trained


# ------------------------------------------------------------------ non-contiguous inputs

NC_CASES = [("TL", (3, 12, 4, 5, 3, 3)), ("quad", (17, 8, 3, 4, 2, 2)), ("BR", (2, 4, 3, 5, 2, 3)),
            ("quad", (3, 16, 3, 3, 3, 2))]


def _noncontiguous_variants(y, weight, rng):
    """(label, y', weight') pairs equal in value to (y, weight) but laid out differently."""
    b, c, h, w = y.shape
    yield "channels_last", y.to(memory_format=torch.channels_last), weight
    big = torch.randn(b, c, 2 * h, w, generator=rng, dtype=y.dtype)
    big[:, :, ::2] = y
    yield "strided_rows", big[:, :, ::2], weight
    wide = torch.randn(b, c + 5, h, w + 3, generator=rng, dtype=y.dtype)
    narrow = wide.narrow(1, 2, c).narrow(3, 1, w)
    narrow.copy_(y)
    yield "narrow", narrow, weight
    w_t = weight.transpose(0, 1).contiguous()          # stored transposed
    yield "transposed_weight", y, w_t.transpose(0, 1)
    yield "expanded_batch", y[:1].expand(b, c, h, w), weight   # stride 0 over the batch


@pytest.mark.parametrize("order,shape", NC_CASES, ids=oracle.param_id)
@pytest.mark.parametrize("fn", ["inv_conv2d", "inv_conv2d_transposed", "causal_conv2d"])
def test_noncontiguous_inputs(fn, order, shape, rng):
    y, weight = _inputs(shape, order, rng)
    for label, y_nc, w_nc in _noncontiguous_variants(y, weight, rng):
        if label == "expanded_batch":
            y_ref = y_nc.contiguous()
        else:
            y_ref = y
        assert not (y_nc.is_contiguous() and w_nc.is_contiguous()), label
        assert torch.equal(y_nc, y_ref) and torch.equal(w_nc, weight), label
        got = _apply_fn(fn, y_nc, w_nc, order)
        expected = _apply_fn(fn, y_ref, weight, order)
        err = oracle.rel_err(got, expected)
        assert err <= 1e-12, f"{fn} {order} {label}: rel err {err:.3e}"


@pytest.mark.parametrize("order,shape", NC_CASES, ids=oracle.param_id)
def test_noncontiguous_gradients(order, shape, rng):
    y, weight = _inputs(shape, order, rng)
    upstream = torch.randn(y.shape, generator=rng, dtype=y.dtype)

    def grads(y_in, w_in, up):
        y_leaf = y_in.detach().requires_grad_(True)
        w_leaf = w_in.detach().requires_grad_(True)
        inverseflow.inv_conv2d(y_leaf, w_leaf, order).backward(up)
        return y_leaf.grad, w_leaf.grad

    gy_ref, gw_ref = grads(y, weight, upstream)
    w_t = weight.transpose(0, 1).contiguous().transpose(0, 1)
    gy, gw = grads(y.to(memory_format=torch.channels_last), w_t,
                   upstream.to(memory_format=torch.channels_last))
    assert oracle.rel_err(gy, gy_ref) <= 1e-12
    assert oracle.rel_err(gw, gw_ref) <= 1e-12
    # A stride-0 upstream gradient (what .sum() produces).
    y_leaf = y.clone().requires_grad_(True)
    w_leaf = weight.clone().requires_grad_(True)
    inverseflow.inv_conv2d(y_leaf, w_leaf, order).sum().backward()
    gy_ref, gw_ref = grads(y, weight, torch.ones_like(y))
    assert oracle.rel_err(y_leaf.grad, gy_ref) <= 1e-12
    assert oracle.rel_err(w_leaf.grad, gw_ref) <= 1e-12
