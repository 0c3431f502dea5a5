"""The 1-D and 3-D ops (inv_conv1d/3d, their transposed solves, causal_conv1d/3d) against the
dense float64 oracle of docs/nd-design.md (tests/oracle_nd.py), for every order of each
dimension, with the 2-D ops' guarantees: autograd (gradcheck, gradgradcheck, gradients
against the oracle, zero gradient at masked entries), forward-mode AD, opcheck,
torch.compile(fullgraph=True), vmap, mixed precision, non-contiguous and empty inputs, and
clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import inverseflow
from inverseflow import ops
from inverseflow.ops import _geometry

import oracle_nd as O

OPS = {
    1: {"inv": ops.inv_conv1d, "transposed": ops.inv_conv1d_transposed,
        "causal": ops.causal_conv1d},
    3: {"inv": ops.inv_conv3d, "transposed": ops.inv_conv3d_transposed,
        "causal": ops.causal_conv3d},
}
RAW = {d: {kind: getattr(torch.ops.inverseflow, name) for kind, name in
           (("inv", f"inv_conv{d}d"), ("transposed", f"inv_conv{d}d_transposed"),
            ("causal", f"causal_conv{d}d"))} for d in (1, 3)}
ORDERS = {d: O.corners(d) + [O.GROUP_PATTERN[d]] for d in (1, 3)}
DTYPES = (torch.float64, torch.float32)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# (batch, spatial shape, kernel): square and rectangular kernels, a kernel of size 1 along
# an axis (all of them: a pure channel mix), and kernels longer than the signal.
SHAPES = {
    1: [(3, (7,), (3,)), (2, (5,), (2,)), (2, (6,), (1,)), (1, (3,), (5,)), (17, (4,), (4,))],
    3: [(2, (2, 3, 3), (2, 2, 2)), (1, (3, 2, 3), (2, 1, 3)), (2, (2, 2, 3), (1, 2, 2)),
        (1, (2, 2, 2), (3, 2, 1)), (2, (1, 2, 3), (1, 1, 1))],
}


def channels_for(order: str, d: int, wide: bool = False) -> int:
    """Channel counts: odd for a corner, one or two channels per group for the pattern."""
    if order == O.GROUP_PATTERN[d]:
        return 2 ** d * (2 if wide else 1)
    return 3


def make(d, batch, shape, kernel, order, rng, dtype=torch.float64, wide=False, scale=0.3):
    channels = channels_for(order, d, wide)
    cols = channels // 2 ** d if order == O.GROUP_PATTERN[d] else channels
    weight = scale * torch.randn(channels, cols, *kernel, generator=rng, dtype=torch.float64)
    data = torch.randn(batch, channels, *shape, generator=rng, dtype=torch.float64)
    return data.to(dtype), weight.to(dtype)


def dense_inverse(y, weight, order):
    """x = T⁻¹y through torch.linalg.solve of the oracle's dense matrix (differentiable)."""
    matrix = O.dense(weight, order, tuple(y.shape[2:]))
    return torch.linalg.solve(matrix, y.reshape(y.shape[0], -1).T).T.reshape(y.shape)


def dense_transposed(g, weight, order):
    matrix = O.dense(weight, order, tuple(g.shape[2:]))
    return torch.linalg.solve(matrix.T, g.reshape(g.shape[0], -1).T).T.reshape(g.shape)


REFERENCE = {"inv": dense_inverse, "transposed": dense_transposed, "causal": O.causal_conv}


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _cases():
    for d in (1, 3):
        for batch, shape, kernel in SHAPES[d]:
            for order in ORDERS[d]:
                yield pytest.param(d, batch, shape, kernel, order,
                                   id=f"{d}d-B{batch}-n{'x'.join(map(str, shape))}"
                                      f"-k{'x'.join(map(str, kernel))}-{order}")


CASES = list(_cases())


# --------------------------------------------------------------------- the dense oracle

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("d,batch,shape,kernel,order", CASES)
def test_ops_match_the_dense_oracle(d, batch, shape, kernel, order, dtype, rng):
    data, weight = make(d, batch, shape, kernel, order, rng, dtype)
    for kind, fn in OPS[d].items():
        out = fn(data, weight, order)
        assert out.dtype == dtype and out.shape == data.shape, kind
        expected = REFERENCE[kind](data.double(), weight.double(), order)
        err = rel_err(out, expected)
        assert err <= TOL[dtype], f"{kind}: rel err {err:.3e}"
    # The inverse undoes the causal conv and the other way round.
    back = OPS[d]["causal"](OPS[d]["inv"](data, weight, order), weight, order)
    assert rel_err(back, data) <= TOL[dtype]


@pytest.mark.parametrize("d", [1, 3])
def test_the_group_pattern_with_two_channels_per_group(d, rng):
    batch, shape, kernel = SHAPES[d][0]
    order = O.GROUP_PATTERN[d]
    data, weight = make(d, batch, shape, kernel, order, rng, wide=True)
    assert weight.shape[1] == 2
    for kind, fn in OPS[d].items():
        assert rel_err(fn(data, weight, order), REFERENCE[kind](data, weight, order)) <= 1e-10


@pytest.mark.parametrize("d", [1, 3])
def test_default_order_is_the_first_corner(d, rng):
    batch, shape, kernel = SHAPES[d][0]
    first = O.corners(d)[0]
    data, weight = make(d, batch, shape, kernel, first, rng)
    for kind, fn in OPS[d].items():
        torch.testing.assert_close(fn(data, weight), fn(data, weight, first), rtol=0, atol=0)


@pytest.mark.parametrize("d", [1, 3])
def test_empty_batch_and_empty_axis(d, rng):
    batch, shape, kernel = SHAPES[d][0]
    for order in (O.corners(d)[-1], O.GROUP_PATTERN[d]):
        data, weight = make(d, batch, shape, kernel, order, rng)
        for empty in (data[:0], data[..., :0]):
            w = weight.clone().requires_grad_(True)
            leaf = empty.clone().requires_grad_(True)
            for kind, fn in OPS[d].items():
                out = fn(leaf, w, order)
                assert out.shape == empty.shape, kind
                out.sum().backward()
                assert torch.equal(w.grad, torch.zeros_like(w)), kind
                w.grad = None


def _noncontiguous(data, rng):
    """Views equal in value to ``data`` with other strides."""
    wide = torch.randn(*data.shape[:-1], 2 * data.shape[-1], generator=rng, dtype=data.dtype)
    wide[..., ::2] = data
    yield "strided", wide[..., ::2]
    yield "transposed", data.transpose(0, 1).contiguous().transpose(0, 1)
    yield "expanded_batch", data[:1].expand(data.shape)


@pytest.mark.parametrize("d", [1, 3])
def test_noncontiguous_inputs(d, rng):
    batch, shape, kernel = SHAPES[d][0]
    for order in (O.corners(d)[1], O.GROUP_PATTERN[d]):
        data, weight = make(d, batch, shape, kernel, order, rng)
        w_t = weight.transpose(0, 1).contiguous().transpose(0, 1)
        for label, view in _noncontiguous(data, rng):
            assert not view.is_contiguous(), label
            for kind, fn in OPS[d].items():
                got = fn(view, w_t if label == "transposed" else weight, order)
                expected = REFERENCE[kind](view.contiguous(), weight, order)
                assert rel_err(got, expected) <= 1e-10, f"{kind} {order} {label}"


def test_the_one_geometry_at_d_2_is_the_2d_oracle(rng):
    """One geometry module serves every dimension (issue 25): at d = 2 its mask, causal conv,
    adjoint and weight gradient are the independent 2-D oracle's (tests/oracle.py)."""
    import oracle as O2

    for order in ("TL", "TR", "BL", "BR", "quad"):
        weight = O2.random_weight(8, 2, 3, order, rng, scale=0.5)
        x = torch.randn(2, 8, 4, 5, generator=rng, dtype=torch.float64)
        u = torch.randn(2, 8, 4, 5, generator=rng, dtype=torch.float64)
        wm = _geometry.masked_weight(weight, order)
        torch.testing.assert_close(wm, O2.mask(weight, order), rtol=0, atol=0)
        assert rel_err(_geometry.causal_conv(x, wm, order), O2.causal_conv(x, weight, order)) < 1e-12
        a = O2.dense_matrix(weight, order, 4, 5)
        adjoint = (a.T @ u.reshape(2, -1).T).T.reshape(u.shape)
        assert rel_err(_geometry.causal_conv_adjoint(u, wm, order), adjoint) < 1e-12
        w = weight.clone().requires_grad_()
        (O2.causal_conv(x, w, order) * u).sum().backward()
        grad = _geometry.mask_gradient(_geometry.conv_weight_grad(x, u, weight.shape, order), order)
        assert rel_err(grad, w.grad) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("d,order", [(d, o) for d in (1, 3) for o in ORDERS[d]] + [(2, "quad")])
def test_every_sampling_form_of_the_causal_conv_is_the_oracle(d, order, dtype, rng):
    """Sampling picks the fastest of these forms per shape (the generated conv kernel among
    them), so each must be exact, not only the one a test run happens to pick."""
    shape, kernel = {1: ((5,), (3,)), 2: ((3, 4), (2, 3)), 3: ((2, 3, 2), (2, 1, 3))}[d]
    x, weight = make(d, 2, shape, kernel, order, rng, dtype, wide=True) if d != 2 else (
        torch.randn(2, 8, *shape, generator=rng, dtype=torch.float64).to(dtype),
        torch.randn(8, 2, *kernel, generator=rng, dtype=torch.float64).to(dtype))
    wm = _geometry.masked_weight(weight, order)
    forms = _geometry.sampling_forms(order, d, True)
    assert "kernel" in forms and len(forms) >= 2
    expected = O.causal_conv(x.double(), weight.double(), order)
    for name, form in forms.items():
        assert rel_err(form(x, wm), expected) <= TOL[dtype], name


# ---------------------------------------------------------------------------- autograd

SMALL = {1: (2, (4,), (2,)), 3: (1, (2, 2, 3), (2, 1, 2))}
SMALL_ORDERS = [(1, "L"), (1, "R"), (1, "pair"), (3, "NTL"), (3, "FBR"), (3, "NBR"), (3, "oct")]


@pytest.mark.parametrize("kind", ["inv", "transposed", "causal"])
@pytest.mark.parametrize("d,order", SMALL_ORDERS)
def test_gradcheck(d, order, kind, rng):
    batch, shape, kernel = SMALL[d]
    data, weight = make(d, batch, shape, kernel, order, rng)
    fn = OPS[d][kind]
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, order),
                                    (data.requires_grad_(), weight.requires_grad_()))


@pytest.mark.parametrize("d,order", [(1, "R"), (3, "oct"), (3, "FTL")])
def test_gradgradcheck(d, order, rng):
    shape, kernel = {1: ((4,), (2,)), 3: ((2, 1, 2), (2, 1, 2))}[d]
    data, weight = make(d, 1, shape, kernel, order, rng)
    assert torch.autograd.gradgradcheck(lambda a, b: OPS[d]["inv"](a, b, order),
                                        (data.requires_grad_(), weight.requires_grad_()))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["inv", "transposed", "causal"])
@pytest.mark.parametrize("d", [1, 3])
def test_gradients_match_the_dense_oracle_and_masked_entries_get_zero(d, kind, dtype, rng):
    batch, shape, kernel = SHAPES[d][0]
    for order in ORDERS[d]:
        data, weight = make(d, batch, shape, kernel, order, rng, dtype)
        data.requires_grad_(True)
        weight.requires_grad_(True)
        upstream = torch.randn(data.shape, generator=rng, dtype=torch.float64)
        OPS[d][kind](data, weight, order).backward(upstream.to(dtype))
        d64 = data.detach().double().requires_grad_(True)
        w64 = weight.detach().double().requires_grad_(True)
        REFERENCE[kind](d64, w64, order).backward(upstream)
        assert rel_err(data.grad, d64.grad) <= TOL[dtype], f"{kind} {order}: grad of the data"
        assert rel_err(weight.grad, w64.grad) <= TOL[dtype], f"{kind} {order}: grad of the weight"
        masked = ~_geometry._center_parts(weight, order)[0]
        assert masked.any() and (weight.grad[masked] == 0).all(), f"{kind} {order}"


@pytest.mark.parametrize("d", [1, 3])
def test_masked_entries_change_nothing(d, rng):
    batch, shape, kernel = SHAPES[d][0]
    for order in ORDERS[d]:
        data, weight = make(d, batch, shape, kernel, order, rng)
        masked = ~_geometry._center_parts(weight, order)[0]
        other = weight.clone()
        other[masked] = float("nan")
        for kind, fn in OPS[d].items():
            assert torch.equal(fn(data, other, order), fn(data, weight, order)), f"{kind} {order}"


# ----------------------------------------------------------------- forward-mode AD, vmap

@pytest.mark.parametrize("kind", ["inv", "transposed", "causal"])
@pytest.mark.parametrize("d,order", SMALL_ORDERS)
def test_func_jvp_matches_the_oracle(d, order, kind, rng):
    batch, shape, kernel = SMALL[d]
    data, weight = make(d, batch, shape, kernel, order, rng)
    tangents = (torch.randn(data.shape, generator=rng, dtype=torch.float64),
                torch.randn(weight.shape, generator=rng, dtype=torch.float64))
    out, tangent = torch.func.jvp(lambda a, b: OPS[d][kind](a, b, order), (data, weight), tangents)
    ref, ref_tangent = torch.func.jvp(lambda a, b: REFERENCE[kind](a, b, order), (data, weight),
                                      tangents)
    assert ref_tangent.abs().max() > 1e-3
    assert rel_err(out, ref) <= 1e-10 and rel_err(tangent, ref_tangent) <= 1e-10


@pytest.mark.parametrize("d,order", [(1, "pair"), (3, "FBL")])
def test_forward_ad_dual_tensors_on_the_raw_ops(d, order, rng):
    batch, shape, kernel = SMALL[d]
    data, weight = make(d, batch, shape, kernel, order, rng)
    y_dot = torch.randn(data.shape, generator=rng, dtype=torch.float64)
    w_dot = torch.randn(weight.shape, generator=rng, dtype=torch.float64)
    for kind in ("inv", "transposed"):
        with fwAD.dual_level():
            out = RAW[d][kind](fwAD.make_dual(data, y_dot), fwAD.make_dual(weight, w_dot), order)
            tangent = fwAD.unpack_dual(out).tangent
        _, expected = torch.func.jvp(lambda a, b: REFERENCE[kind](a, b, order), (data, weight),
                                     (y_dot, w_dot))
        assert rel_err(tangent, expected) <= 1e-10, kind


@pytest.mark.parametrize("d,order", [(1, "R"), (3, "oct")])
def test_vmap_over_data_and_over_weight(d, order, rng):
    batch, shape, kernel = SMALL[d]
    data, weight = make(d, batch, shape, kernel, order, rng)
    for kind, fn in OPS[d].items():
        stacked = torch.stack([data, 2 * data, -data])
        got = torch.func.vmap(lambda a: fn(a, weight, order))(stacked)
        for i in range(3):
            assert rel_err(got[i], REFERENCE[kind](stacked[i], weight, order)) <= 1e-10, kind
        weights = torch.stack([weight, 0.5 * weight])
        got = torch.func.vmap(lambda b: fn(data, b, order))(weights)
        for i in range(2):
            assert rel_err(got[i], REFERENCE[kind](data, weights[i], order)) <= 1e-10, kind


# ------------------------------------------------------------ opcheck and torch.compile

@pytest.mark.parametrize("dtype,requires_grad", [(torch.float32, False), (torch.float64, True)],
                         ids=["f32-nograd", "f64-grad"])
@pytest.mark.parametrize("d,order", [(1, "R"), (1, "pair"), (3, "NBL"), (3, "oct")])
@pytest.mark.parametrize("kind", ["inv", "transposed", "causal"])
def test_opcheck(kind, d, order, dtype, requires_grad, rng):
    batch, shape, kernel = SMALL[d]
    data, weight = make(d, batch, shape, kernel, order, rng, dtype)
    torch.library.opcheck(RAW[d][kind], (data.requires_grad_(requires_grad),
                                         weight.requires_grad_(requires_grad), order))


def _pipeline(seq, vol, w1, w1_pair, w3, w3_oct):
    a = inverseflow.inv_conv1d(seq, w1, "R")
    b = inverseflow.causal_conv1d(torch.tanh(a), w1_pair, "pair")
    c = inverseflow.inv_conv3d(vol, w3_oct, "oct")
    d = inverseflow.causal_conv3d(torch.tanh(c), w3, "FTR")
    e = inverseflow.ops.inv_conv3d_transposed(d, w3 * 0.5, "NBL")
    return (b * 1.5).sum() + (e ** 2).sum() + inverseflow.ops.inv_conv1d_transposed(b, w1_pair,
                                                                                     "pair").sum()


def test_torch_compile_fullgraph(rng, backend="aot_eager"):
    torch._dynamo.reset()
    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=rng, dtype=torch.float64)

    seq, w1, w1_pair = randn(2, 4, 6), randn(4, 4, 3, scale=0.3), randn(4, 2, 3, scale=0.3)
    vol, w3, w3_oct = randn(2, 8, 2, 3, 2), randn(8, 8, 2, 2, 2, scale=0.2), randn(8, 1, 2, 2, 2)
    inputs = (seq, vol, w1, w1_pair, w3, w3_oct)

    def run(fn):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        out.backward()
        return out.detach(), [t.grad for t in leaves]

    eager_out, eager_grads = run(_pipeline)
    assert all(g.abs().max() > 1e-3 for g in eager_grads)   # every input really takes part
    compiled = torch.compile(_pipeline, backend=backend, fullgraph=True)
    comp_out, comp_grads = run(compiled)
    assert rel_err(comp_out, eager_out) <= 1e-12
    for i, (a, b) in enumerate(zip(comp_grads, eager_grads)):
        assert rel_err(a, b) <= 1e-12, f"input {i}"
    torch._dynamo.reset()


@pytest.mark.parametrize("d,order", [(1, "R"), (3, "NBR")])
def test_inductor_with_dynamic_shapes(d, order, rng):
    """Inductor, with the spatial sizes symbolic: the weight gradient then takes its
    forward-conv form (Inductor's lowering of convolution_backward fails there in 2-D)."""
    torch._dynamo.reset()
    batch, shape, kernel = SMALL[d]
    _, weight = make(d, batch, shape, kernel, order, rng)
    weight.requires_grad_(True)

    def loss(y, w):
        return (inverseflow.ops.inv_conv1d(y, w, order) if d == 1
                else inverseflow.inv_conv3d(y, w, order)).square().sum()

    compiled = torch.compile(loss, dynamic=True, fullgraph=True, backend="inductor")
    sizes = {1: [(5,), (7,)], 3: [(2, 2, 3), (3, 2, 2)]}[d]   # no size 1: it would specialize
    for size in sizes:
        y = torch.randn(2, weight.shape[0], *size, generator=rng, dtype=torch.float64,
                        requires_grad=True)
        got = torch.autograd.grad(compiled(y, weight), (y, weight))
        expected = torch.autograd.grad(loss(y, weight), (y, weight))
        for name, a, b in zip(("y", "weight"), got, expected):
            assert rel_err(a, b) <= 1e-10, f"{size} {name}"
    torch._dynamo.reset()


# -------------------------------------------------------------------- mixed precision

@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [1, 3])
def test_low_precision_computes_in_float32(d, low, rng):
    batch, shape, kernel = SMALL[d]
    order = O.corners(d)[-1]
    data, weight = make(d, batch, shape, kernel, order, rng, scale=0.1)
    data, weight = data.to(low), weight.to(low)
    for kind, fn in OPS[d].items():
        direct = fn(data, weight, order)
        assert direct.dtype == low, kind
        expected = fn(data.float(), weight.float(), order)
        torch.testing.assert_close(direct, expected.to(low), rtol=0, atol=0)
        with torch.autocast("cpu", dtype=low):
            auto = fn(data.float(), weight.float(), order)
        assert auto.dtype == torch.float32, kind
        torch.testing.assert_close(auto, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("d", [1, 3])
def test_bad_arguments_name_the_argument(d, rng):
    batch, shape, kernel = SHAPES[d][0]
    corner, pattern = O.corners(d)[0], O.GROUP_PATTERN[d]
    data, weight = make(d, batch, shape, kernel, corner, rng)
    names = {"inv": "y", "transposed": "g", "causal": "x"}
    other_order = {1: "TL", 3: "L"}[d]
    for kind, fn in OPS[d].items():
        arg = names[kind]
        with pytest.raises(ValueError, match=rf"{arg} must be {d + 2}-D"):
            fn(data[0], weight, corner)
        with pytest.raises(ValueError, match=rf"{arg} must be {d + 2}-D"):
            fn(data.unsqueeze(-1), weight, corner)
        with pytest.raises(ValueError, match=rf"order must be one of .* for {d}-D data; got "
                                             rf"'{other_order}' \('{other_order}' is a "
                                             rf"{ {1: 2, 3: 1}[d]}-D order\)"):
            fn(data, weight, other_order)
        with pytest.raises(ValueError, match=rf"order='{pattern}' needs the channel count "
                                             rf"divisible by {2 ** d}; {arg} has 3 channels"):
            fn(data, weight[:, :1], pattern)
        with pytest.raises(ValueError, match="weight must have shape"):
            fn(data, weight[:2], corner)
        with pytest.raises(TypeError, match=f"{arg} and weight must have the same dtype"):
            fn(data, weight.float(), corner)
        with pytest.raises(TypeError, match="order must be a str"):
            fn(data, weight, 0)
        with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
            fn(data, weight.tolist(), corner)
        # the raw ops check the same way (the fake kernel too)
        with pytest.raises(ValueError, match=rf"must be {d + 2}-D"):
            RAW[d][kind](data[0], weight, corner)


def test_a_solve_op_refuses_data_of_another_dimension(rng):
    """_dispatch.solve reads the dimension from the data's rank, so each op checks its own:
    the 2-D op given 1-D data (and a 1-D order) must not run the 1-D solve."""
    data, weight = make(1, 2, (5,), (3,), "L", rng)
    for kind in ("inv", "transposed"):
        op = getattr(torch.ops.inverseflow, "inv_conv2d" + ("_transposed" if kind != "inv" else ""))
        with pytest.raises(ValueError, match="order must be one of TL, TR, BL, BR, quad for 2-D"):
            op(data, weight, "L")
        with pytest.raises(ValueError, match=r"must be 4-D \(N, C, H, W\)"):
            op(data, weight, "TL")
        volume, weight3 = make(3, 1, (2, 2, 2), (2, 2, 2), "NTL", rng)
        with pytest.raises(ValueError, match=r"must be 3-D \(N, C, W\)"):
            RAW[1][kind](volume, weight3, "L")
