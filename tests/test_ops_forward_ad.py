"""Forward-mode AD and torch.func transforms through the ops, against the dense oracle and
finite differences (issue 12, item 2: tangents used to be silently zero)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import inverseflow

import oracle

ORDERS = ("TL", "TR", "BL", "BR", "quad")
SHAPES = [(2, 8, 3, 4, 2, 3), (1, 4, 3, 3, 3, 3)]


def _case(shape, order, rng):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng)
    y = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64)
    y_dot = torch.randn(y.shape, generator=rng, dtype=torch.float64)
    w_dot = torch.randn(weight.shape, generator=rng, dtype=torch.float64)
    return y, weight, y_dot, w_dot


OURS = {"inv_conv2d": inverseflow.inv_conv2d,
        "inv_conv2d_transposed": inverseflow.ops.inv_conv2d_transposed,
        "causal_conv2d": inverseflow.causal_conv2d}
REFERENCE = {"inv_conv2d": oracle.inv_conv, "inv_conv2d_transposed": oracle.inv_conv_transposed,
             "causal_conv2d": oracle.causal_conv}


@pytest.mark.parametrize("shape", SHAPES, ids=oracle.param_id)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fn", list(OURS))
def test_func_jvp_matches_oracle(fn, order, shape, rng):
    y, weight, y_dot, w_dot = _case(shape, order, rng)
    out, tangent = torch.func.jvp(lambda a, b: OURS[fn](a, b, order), (y, weight), (y_dot, w_dot))
    ref_out, ref_tangent = torch.func.jvp(lambda a, b: REFERENCE[fn](a, b, order), (y, weight),
                                          (y_dot, w_dot))
    assert ref_tangent.abs().max() > 1e-3
    assert oracle.rel_err(out, ref_out) <= 1e-10
    assert oracle.rel_err(tangent, ref_tangent) <= 1e-10, f"{fn} {order}: tangent differs"


@pytest.mark.parametrize("which", ["y", "weight", "both"])
@pytest.mark.parametrize("order", ["TL", "quad"])
def test_forward_ad_dual_tensors_match_finite_differences(order, which, rng):
    y, weight, y_dot, w_dot = _case((2, 8, 3, 4, 2, 3), order, rng)
    if which == "y":
        w_dot = torch.zeros_like(w_dot)
    elif which == "weight":
        y_dot = torch.zeros_like(y_dot)
    with fwAD.dual_level():
        dual_y = fwAD.make_dual(y, y_dot) if which != "weight" else y
        dual_w = fwAD.make_dual(weight, w_dot) if which != "y" else weight
        tangent = fwAD.unpack_dual(inverseflow.inv_conv2d(dual_y, dual_w, order)).tangent
    assert tangent is not None, "forward AD lost the tangent"
    eps = 1e-6
    plus = inverseflow.inv_conv2d(y + eps * y_dot, weight + eps * w_dot, order)
    minus = inverseflow.inv_conv2d(y - eps * y_dot, weight - eps * w_dot, order)
    central = (plus - minus) / (2 * eps)
    assert central.abs().max() > 1e-3
    assert oracle.rel_err(tangent, central) <= 1e-7


@pytest.mark.parametrize("order", ["TL", "BR", "quad"])
def test_jacfwd_and_jacrev_match_the_dense_jacobian(order, rng):
    y, weight, _, _ = _case((1, 4, 2, 3, 2, 2), order, rng)
    ours = lambda a, b: inverseflow.inv_conv2d(a, b, order)
    ref = lambda a, b: oracle.inv_conv(a, b, order)
    expected = torch.func.jacrev(ref, argnums=(0, 1))(y, weight)
    for transform in (torch.func.jacfwd, torch.func.jacrev):
        got = transform(ours, argnums=(0, 1))(y, weight)
        for name, a, b in zip(("y", "weight"), got, expected):
            assert oracle.rel_err(a, b) <= 1e-10, f"{transform.__name__} d/d{name}"


@pytest.mark.parametrize("order", ["TL", "quad"])
def test_func_grad_matches_autograd(order, rng):
    y, weight, up, _ = _case((2, 8, 3, 3, 3, 3), order, rng)
    loss = lambda a, b: (inverseflow.inv_conv2d(a, b, order) * up).sum()
    got = torch.func.grad(loss, argnums=(0, 1))(y, weight)
    y64, w64 = y.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (oracle.inv_conv(y64, w64, order) * up).sum().backward()
    assert oracle.rel_err(got[0], y64.grad) <= 1e-10
    assert oracle.rel_err(got[1], w64.grad) <= 1e-10


def test_hessian_forward_over_reverse(rng):
    """jacfwd(jacrev): forward AD through the backward (the transposed solve)."""
    y, weight, up, _ = _case((1, 4, 2, 2, 2, 2), "TL", rng)
    scalar = lambda fn: (lambda b: (fn(y, b, "TL") ** 2 * up).sum())
    got = torch.func.jacfwd(torch.func.jacrev(scalar(inverseflow.inv_conv2d)))(weight)
    expected = torch.func.hessian(scalar(oracle.inv_conv))(weight)
    assert expected.abs().max() > 1e-3
    assert oracle.rel_err(got, expected) <= 1e-9


@pytest.mark.parametrize("order", ["TL", "quad"])
def test_vmap_over_y_and_over_weight(order, rng):
    y, weight, _, w_dot = _case((2, 8, 3, 4, 2, 3), order, rng)
    stacked_y = torch.stack([y, 2 * y, -y])
    got = torch.func.vmap(lambda a: inverseflow.inv_conv2d(a, weight, order))(stacked_y)
    for i in range(3):
        assert oracle.rel_err(got[i], oracle.inv_conv(stacked_y[i], weight, order)) <= 1e-10
    weights = torch.stack([weight, weight + 0.01 * w_dot])
    got = torch.func.vmap(lambda b: inverseflow.inv_conv2d(y, b, order))(weights)
    for i in range(2):
        assert oracle.rel_err(got[i], oracle.inv_conv(y, weights[i], order)) <= 1e-10


@pytest.mark.parametrize("op_name", ["inv_conv2d", "inv_conv2d_transposed"])
def test_raw_ops_forward_ad_and_clear_error_under_torch_func(op_name, rng):
    """The torch.ops entry points carry tangents in forward AD; under a torch.func
    transform they name it and point to the public function instead of returning zeros."""
    y, weight, y_dot, w_dot = _case((2, 4, 3, 3, 2, 2), "TL", rng)
    op = getattr(torch.ops.inverseflow, op_name)
    with fwAD.dual_level():
        out = op(fwAD.make_dual(y, y_dot), fwAD.make_dual(weight, w_dot), "TL")
        tangent = fwAD.unpack_dual(out).tangent
    _, expected = torch.func.jvp(lambda a, b: REFERENCE[op_name](a, b, "TL"), (y, weight),
                                 (y_dot, w_dot))
    assert oracle.rel_err(tangent, expected) <= 1e-10
    with pytest.raises(RuntimeError, match="torch.func transform.*call inverseflow"):
        torch.func.jvp(lambda a: op(a, weight, "TL"), (y,), (y_dot,))
    with pytest.raises(RuntimeError, match="torch.func transform"):
        torch.func.grad(lambda a: op(a, weight, "TL").sum())(y)
