"""Bad arguments, non-finite values and empty inputs (DESIGN.md §2 "Stability", §5)."""

from __future__ import annotations

import re

import pytest
import torch

import inverseflow
from inverseflow.ops import _dispatch

import oracle

BAD_ARG = (ValueError, TypeError)


def _word(name: str) -> str:
    return rf"\b{name}\b"


def _good(order="TL", channels=8, dtype=torch.float64, batch=2, size=(3, 4), k=(2, 2)):
    cols = channels // 4 if order == "quad" else channels
    y = torch.randn(batch, channels, *size, dtype=dtype)
    weight = torch.randn(channels, cols, *k, dtype=dtype) * 0.05
    return y, weight


PUBLIC = [("inv_conv2d", "y"), ("causal_conv2d", "x")]


@pytest.fixture(params=PUBLIC, ids=[p[0] for p in PUBLIC])
def public(request):
    fn_name, arg = request.param
    return getattr(inverseflow, fn_name), arg


# ------------------------------------------------------------------ argument validation

def test_good_arguments_work(public):
    fn, _ = public
    for order in ("TL", "TR", "BL", "BR", "quad"):
        y, weight = _good(order)
        assert fn(y, weight, order).shape == y.shape


def test_wrong_rank_image(public):
    fn, arg = public
    y, weight = _good()
    with pytest.raises(ValueError, match=_word(arg)):
        fn(y[0], weight, "TL")                       # 3-D
    with pytest.raises(ValueError, match=_word(arg)):
        fn(y[None], weight, "TL")                    # 5-D


def test_wrong_rank_weight(public):
    fn, _ = public
    y, weight = _good()
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, weight[None], "TL")                    # 5-D
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, weight[:, :, 0], "TL")                 # 3-D


def test_channel_mismatch(public):
    fn, _ = public
    y, _ = _good(channels=8)
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, torch.randn(6, 6, 2, 2, dtype=y.dtype), "TL")
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, torch.randn(8, 6, 2, 2, dtype=y.dtype), "BR")


def test_quad_weight_shape(public):
    fn, _ = public
    y, weight = _good(order="TL", channels=8)        # (8, 8, k, k): not a quad weight
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, weight, "quad")
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, torch.randn(8, 4, 2, 2, dtype=y.dtype), "quad")
    # ... and a quad weight is not a TL weight.
    y, weight = _good(order="quad", channels=8)
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, weight, "TL")


def test_zero_kernel_size(public):
    fn, _ = public
    y, _ = _good()
    with pytest.raises(ValueError, match=_word("weight")):
        fn(y, torch.randn(8, 8, 0, 2, dtype=y.dtype), "TL")


@pytest.mark.parametrize("y_dtype,w_dtype", [(torch.float32, torch.float64),
                                             (torch.float64, torch.float32)])
def test_dtype_mismatch(public, y_dtype, w_dtype):
    fn, arg = public
    y, weight = _good()
    with pytest.raises(BAD_ARG, match=_word("weight")) as info:
        fn(y.to(y_dtype), weight.to(w_dtype), "TL")
    assert re.search(_word(arg), str(info.value)), str(info.value)


# bfloat16 and float16 are supported (computed in float32, DESIGN §12), but only with a
# weight of the same dtype outside autocast: tests/test_mixed_precision.py.
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.complex64, torch.bool])
def test_unsupported_dtype(public, dtype):
    fn, arg = public
    y, weight = _good()
    with pytest.raises(BAD_ARG, match=_word(arg)):
        fn(y.to(dtype), weight.to(dtype), "TL")
    with pytest.raises(BAD_ARG, match=_word(arg)):
        fn(y.to(dtype), weight, "TL")
    with pytest.raises(BAD_ARG, match=_word("weight")):
        fn(y, weight.to(dtype), "TL")


@pytest.mark.parametrize("order", ["tl", "Quad", "QUAD", "XX", "", "TL ", "LT"])
def test_unknown_order(public, order):
    fn, _ = public
    y, weight = _good()
    with pytest.raises(ValueError, match=_word("order")):
        fn(y, weight, order)


@pytest.mark.parametrize("order", [3, None, 0.5, ("TL",), b"TL"])
def test_non_string_order(public, order):
    fn, _ = public
    y, weight = _good()
    with pytest.raises(TypeError, match=_word("order")):
        fn(y, weight, order)


@pytest.mark.parametrize("channels", [1, 2, 6, 10])
def test_quad_needs_channels_divisible_by_4(public, channels):
    fn, arg = public
    y = torch.randn(2, channels, 3, 3, dtype=torch.float64)
    weight = torch.randn(channels, max(1, channels // 4), 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="4") as info:
        fn(y, weight, "quad")
    assert "quad" in str(info.value) and re.search(_word(arg), str(info.value)), str(info.value)


def test_non_tensor_inputs(public):
    fn, arg = public
    y, weight = _good()
    with pytest.raises(TypeError, match=_word(arg)):
        fn(y.numpy(), weight, "TL")
    with pytest.raises(TypeError, match=_word(arg)):
        fn(y.tolist(), weight, "TL")
    with pytest.raises(TypeError, match=_word(arg)):
        fn(None, weight, "TL")
    with pytest.raises(TypeError, match=_word("weight")):
        fn(y, weight.numpy(), "TL")
    with pytest.raises(TypeError, match=_word("weight")):
        fn(y, 0.5, "TL")


def test_mixed_devices(public):
    fn, arg = public
    y, weight = _good()
    with pytest.raises(ValueError) as info:
        fn(y, weight.to("meta"), "TL")
    message = str(info.value)
    for word in (arg, "weight", "cpu", "meta"):
        assert word in message, f"{word!r} not in {message!r}"
    with pytest.raises(ValueError) as info:
        fn(y.to("meta"), weight, "TL")
    message = str(info.value)
    for word in (arg, "weight", "cpu", "meta"):
        assert word in message, f"{word!r} not in {message!r}"


def test_dispatch_solve_validates():
    y, weight = _good()
    with pytest.raises(ValueError, match=_word("weight")):
        _dispatch.solve(y, weight[:4], "TL")
    with pytest.raises(ValueError, match=_word("order")):
        _dispatch.solve(y, weight, "tl")


RAW_OPS = ["inv_conv2d", "inv_conv2d_transposed", "causal_conv2d"]
RAW_ERRORS = (ValueError, TypeError, RuntimeError)


def _raw_bad_calls():
    y, weight = _good()
    yq, wq = _good(order="quad")
    return {
        "3d_y": (y[0], weight, "TL"),
        "5d_weight": (y, weight[None], "TL"),
        "channel_mismatch": (y, weight[:6, :6], "TL"),
        "quad_full_weight": (yq, weight, "quad"),
        "quad_c6": (torch.randn(1, 6, 3, 3, dtype=torch.float64),
                    torch.randn(6, 1, 2, 2, dtype=torch.float64), "quad"),
        "dtype_mismatch": (y.float(), weight, "TL"),
        "int_dtype": (y.long(), weight.long(), "TL"),
        "half_with_double": (y.half(), weight, "TL"),
        "bfloat16_with_float": (y.bfloat16(), weight.float(), "TL"),
        "lower_order": (y, weight, "tl"),
        "int_order": (y, weight, 3),
        "meta_weight": (y, weight.to("meta"), "TL"),
        "zero_kernel": (y, torch.randn(8, 8, 2, 0, dtype=torch.float64), "TL"),
        "non_tensor": (y.tolist(), weight, "TL"),
    }


@pytest.mark.parametrize("case", list(_raw_bad_calls()))
@pytest.mark.parametrize("op_name", RAW_OPS)
def test_raw_ops_reject_bad_arguments(op_name, case):
    args = _raw_bad_calls()[case]
    op = getattr(torch.ops.inverseflow, op_name)
    with pytest.raises(RAW_ERRORS):
        op(*args)


# ------------------------------------------------------------------------- NaN and inf

NAN_CASES = [
    # (order, (B, C, H, W, kh, kw), NaN sample, NaN channel)
    ("TL", (3, 12, 4, 5, 3, 3), 1, 5),        # specialized (C12 k3x3 tl)
    ("quad", (17, 8, 4, 4, 2, 2), 5, 2),      # specialized (C8 k2x2 quad), group 1 (TR)
    ("quad", (17, 8, 4, 4, 2, 2), 2, 5),      # specialized, group 2 (BL), last channel
    ("quad", (17, 12, 4, 5, 3, 3), 16, 10),   # specialized, NaN in the one-sample tail
    ("TL", (17, 5, 4, 5, 2, 3), 3, 2),        # generic
    ("BR", (3, 12, 4, 5, 3, 3), 0, 7),        # generic (BR is not in specs.toml)
    ("BR", (21, 4, 5, 4, 3, 2), 18, 1),       # generic
    ("quad", (3, 16, 4, 4, 3, 2), 2, 6),      # generic
]


@pytest.mark.parametrize("transposed", [False, True], ids=["solve", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("order,shape,sample,c0", NAN_CASES, ids=oracle.param_id)
def test_nan_propagates_exactly_through_the_dependency_cone(order, shape, sample, c0, dtype,
                                                            transposed, rng):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng, dtype=dtype)
    y = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64).to(dtype)
    direction = _dispatch.TRANSPOSED if transposed else _dispatch.SOLVE
    name = _dispatch.solve(y, weight, order, direction)[1]
    h0, w0 = height // 2, width // 2
    y[sample, c0, h0, w0] = float("nan")
    if transposed:
        x = torch.ops.inverseflow.inv_conv2d_transposed(y, weight, order)
    else:
        x = inverseflow.inv_conv2d(y, weight, order)
    cone = oracle.dependency_cone(weight.double(), order, height, width, c0, h0, w0,
                                  transposed=transposed)
    assert cone.sum() > 1 and not cone.all()      # the test means something
    expected = torch.zeros(x.shape, dtype=torch.bool)
    expected[sample] = cone
    got = torch.isnan(x)
    missing = (expected & ~got).nonzero().tolist()
    extra = (got & ~expected).nonzero().tolist()
    assert not missing and not extra, (
        f"kernel={name} NaN at (b={sample}, c={c0}, h={h0}, w={w0}); NaN missing at "
        f"{missing[:8]} ({len(missing)}), unexpected NaN at {extra[:8]} ({len(extra)})")
    assert torch.isfinite(x[~expected]).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("order,shape", [("TL", (3, 12, 4, 4, 3, 3)), ("quad", (17, 8, 3, 4, 2, 2)),
                                         ("BR", (2, 5, 3, 3, 2, 3))], ids=oracle.param_id)
@pytest.mark.parametrize("where", ["off_center", "center_lower"])
def test_inf_in_weight_does_not_crash_and_propagates(order, shape, dtype, where, rng):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng, dtype=dtype)
    y = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64).to(dtype)
    masked = oracle.masked_positions(weight.shape, order)
    free = (~masked).nonzero().tolist()
    corner = order if order != "quad" else "TL"
    ci, cj = oracle.center_tap(corner, kh, kw)
    if where == "off_center":
        pos = next(p for p in free if (p[2], p[3]) != (ci, cj))
    else:
        pos = next(p for p in free if (p[2], p[3]) == (ci, cj))   # strictly below the diagonal
    weight[tuple(pos)] = float("inf")
    for direction in (_dispatch.SOLVE, _dispatch.TRANSPOSED):
        for force_generic in (False, True):
            x, _ = _dispatch.solve(y, weight, order, direction, force_generic)
            assert x.shape == y.shape
            assert not torch.isfinite(x).all()        # overflow is not hidden
    out = inverseflow.causal_conv2d(y, weight, order)
    assert not torch.isfinite(out).all()
    x = inverseflow.inv_conv2d(y, weight, order)
    assert not torch.isfinite(x).all()


def test_huge_weights_overflow_visibly(rng):
    """A strongly unstable IIR filter overflows to inf/NaN instead of crashing or clamping."""
    weight = oracle.random_weight(4, 3, 3, "TL", rng, scale=5.0, dtype=torch.float32)
    y = torch.randn(2, 4, 20, 20, generator=rng, dtype=torch.float32)
    for force_generic in (False, True):
        x, _ = _dispatch.solve(y, weight, "TL", _dispatch.SOLVE, force_generic)
        assert torch.isinf(x).any() or torch.isnan(x).any()
        assert torch.isfinite(x[:, :, 0, 0]).all()     # the first pixel is just L^-1 y


# ---------------------------------------------------------------------------- empty input

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("order", ["TL", "BR", "quad"])
def test_empty_batch(order, dtype):
    y, weight = _good(order=order, batch=0, dtype=dtype)
    for out in (inverseflow.inv_conv2d(y, weight, order),
                inverseflow.causal_conv2d(y, weight, order),
                torch.ops.inverseflow.inv_conv2d_transposed(y, weight, order)):
        assert out.shape == y.shape and out.dtype == dtype and out.numel() == 0
    w = weight.clone().requires_grad_(True)
    yy = y.clone().requires_grad_(True)
    inverseflow.inv_conv2d(yy, w, order).sum().backward()
    assert w.grad.shape == w.shape and (w.grad == 0).all()
    assert yy.grad.shape == y.shape
