"""inv_conv2d / causal_conv2d / the transposed op against the dense float64 oracle."""

from __future__ import annotations

import pytest
import torch

import inverseflow
from inverseflow.ops import _dispatch

import oracle

ORDERS = ("TL", "TR", "BL", "BR", "quad")
DTYPES = (torch.float64, torch.float32)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# (batch, channels, height, width, kh, kw). Batches mix full 16-/8-lane blocks, wide
# partial tails and single-sample tails (float32 packs 16 samples, float64 8).
# Specialized layer shapes (codegen/specs.toml): k 2x2 / 3x3, C 4/8/12/24/48, tl / quad.
SPECIALIZED_SHAPES = [
    (3, 12, 4, 5, 3, 3),
    (17, 12, 3, 4, 2, 2),
    (21, 4, 6, 7, 2, 2),
    (1, 4, 5, 5, 3, 3),
    (17, 8, 4, 4, 2, 2),
    (3, 8, 5, 4, 3, 3),
    (21, 24, 2, 5, 2, 2),
    (3, 24, 3, 3, 3, 3),
    (1, 48, 2, 3, 3, 3),
    (17, 48, 2, 2, 2, 2),
]
# Shapes only the generic kernel covers: kh != kw, 1x1, 1xk, kx1, H = 1, W = 1, odd C,
# kernels larger than the image.
GENERIC_SHAPES = [
    (3, 4, 4, 6, 2, 3),
    (17, 8, 5, 3, 3, 2),
    (1, 4, 3, 5, 1, 3),
    (21, 8, 5, 3, 3, 1),
    (3, 12, 2, 3, 1, 1),
    (17, 4, 1, 9, 3, 3),
    (1, 8, 9, 1, 2, 2),
    (3, 16, 3, 4, 2, 3),
    (21, 4, 1, 1, 3, 3),
    (3, 4, 2, 2, 4, 5),
    (17, 20, 3, 3, 3, 3),
]
# Channel counts that quad cannot take (C % 4 != 0).
ODD_CHANNEL_SHAPES = [
    (3, 1, 4, 5, 3, 3),
    (17, 3, 3, 4, 2, 3),
    (1, 6, 2, 7, 3, 2),
    (21, 5, 3, 3, 1, 1),
]


def _cases():
    for shape in SPECIALIZED_SHAPES + GENERIC_SHAPES:
        for order in ORDERS:
            yield pytest.param(shape, order, id="B{}C{}H{}W{}k{}x{}-{}".format(*shape, order))
    for shape in ODD_CHANNEL_SHAPES:
        for order in ("TL", "TR", "BL", "BR"):
            yield pytest.param(shape, order, id="B{}C{}H{}W{}k{}x{}-{}".format(*shape, order))


CASES = list(_cases())


def _inputs(shape, order, dtype, rng):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng, dtype=dtype)
    y = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64).to(dtype)
    return y, weight


def _describe(shape, order, dtype, name=None):
    return f"shape (B,C,H,W,kh,kw)={shape} order={order} dtype={dtype}" + (
        f" kernel={name}" if name else "")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape,order", CASES)
def test_inv_conv2d_matches_oracle(shape, order, dtype, rng):
    y, weight = _inputs(shape, order, dtype, rng)
    x = inverseflow.inv_conv2d(y, weight, order)
    assert x.dtype == dtype and x.shape == y.shape
    # The oracle runs on the same (rounded) inputs in float64.
    expected = oracle.inv_conv(y.double(), weight.double(), order)
    err = oracle.rel_err(x, expected)
    name = _dispatch.solve(y, weight, order)[1]
    assert err <= TOL[dtype], f"rel err {err:.3e}; " + _describe(shape, order, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape,order", CASES)
def test_causal_conv2d_matches_oracle(shape, order, dtype, rng):
    x, weight = _inputs(shape, order, dtype, rng)
    y = inverseflow.causal_conv2d(x, weight, order)
    assert y.dtype == dtype and y.shape == x.shape
    expected = oracle.causal_conv(x.double(), weight.double(), order)
    err = oracle.rel_err(y, expected)
    assert err <= TOL[dtype], f"rel err {err:.3e}; " + _describe(shape, order, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape,order", CASES)
def test_round_trip(shape, order, dtype, rng):
    y, weight = _inputs(shape, order, dtype, rng)
    back = inverseflow.causal_conv2d(inverseflow.inv_conv2d(y, weight, order), weight, order)
    err = oracle.rel_err(back, y)
    assert err <= TOL[dtype], f"rel err {err:.3e}; " + _describe(shape, order, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape,order", CASES)
def test_transposed_matches_oracle(shape, order, dtype, rng):
    g, weight = _inputs(shape, order, dtype, rng)
    u = torch.ops.inverseflow.inv_conv2d_transposed(g, weight, order)
    assert u.dtype == dtype and u.shape == g.shape
    expected = oracle.inv_conv_transposed(g.double(), weight.double(), order)
    err = oracle.rel_err(u, expected)
    name = _dispatch.solve(g, weight, order, _dispatch.TRANSPOSED)[1]
    assert err <= TOL[dtype], f"rel err {err:.3e}; " + _describe(shape, order, dtype, name)


@pytest.mark.parametrize("direction", [0, 1], ids=["solve", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SPECIALIZED_SHAPES,
                         ids=["B{}C{}H{}W{}k{}x{}".format(*s) for s in SPECIALIZED_SHAPES])
@pytest.mark.parametrize("order", ORDERS)   # every corner runs the specialization too
def test_specialized_matches_generic(order, shape, dtype, direction, rng):
    y, weight = _inputs(shape, order, dtype, rng)
    x_spec, name = _dispatch.solve(y, weight, order, direction)
    x_gen, gen_name = _dispatch.solve(y, weight, order, direction, force_generic=True)
    assert name != "generic", _describe(shape, order, dtype, name)
    assert gen_name == "generic"
    # Both are checked against the oracle elsewhere; this pins them to each other.
    tol = 1e-12 if dtype == torch.float64 else TOL[dtype]
    err = oracle.rel_err(x_spec, x_gen)
    assert err <= tol, (f"specialized vs generic rel err {err:.3e}; direction={direction} "
                        + _describe(shape, order, dtype, name))


# A specialization is named by its kernel and group channels, whichever layer shape it serves.
SPECIALIZED_NAMES = [(12, 3, 3, "TL"), (12, 3, 3, "quad"), (4, 2, 2, "TL"), (8, 3, 3, "quad"),
                     (24, 2, 2, "quad"), (48, 3, 3, "TL"), (12, 3, 3, "BR"), (4, 2, 2, "BL"),
                     (48, 3, 3, "quad"), (16, 3, 3, "quad"), (24, 3, 3, "TR")]


@pytest.mark.parametrize("direction", [0, 1], ids=["solve", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("channels,kh,kw,order", SPECIALIZED_NAMES)
def test_specialized_kernel_is_used(channels, kh, kw, order, dtype, direction, rng):
    y, weight = _inputs((2, channels, 2, 3, kh, kw), order, dtype, rng)
    _, name = _dispatch.solve(y, weight, order, direction)
    assert name != "generic", f"{channels=} {kh}x{kw} {order} {dtype} {direction=}"
    tags = [f"k{kh}x{kw}", f"g{channels // (4 if order == 'quad' else 1)}",
            "f64" if dtype == torch.float64 else "f32",
            "solve" if direction == 0 else "transposed", "cpu"]
    for tag in tags:
        assert tag in name.split("_"), f"{tag!r} not in kernel name {name!r}"


# No built instantiation has these kernels and group channels (quad C=20: 5 per group).
GENERIC_ONLY = [(7, 3, 3, "BR"), (12, 2, 3, "TL"), (5, 3, 3, "TL"), (20, 3, 3, "quad"),
                (12, 1, 1, "TL"), (36, 3, 3, "quad")]


@pytest.mark.parametrize("channels,kh,kw,order", GENERIC_ONLY)
def test_unlisted_shapes_use_generic_kernel(channels, kh, kw, order, rng):
    y, weight = _inputs((2, channels, 2, 3, kh, kw), order, torch.float64, rng)
    assert _dispatch.solve(y, weight, order)[1] == "generic"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_inv_conv2d_batch_independent(dtype, rng):
    """Each sample is solved on its own: the batched result equals per-sample results."""
    y, weight = _inputs((21, 12, 3, 4, 3, 3), "TL", dtype, rng)
    x = inverseflow.inv_conv2d(y, weight, "TL")
    for b in (0, 7, 15, 16, 20):
        xb = inverseflow.inv_conv2d(y[b:b + 1], weight, "TL")
        assert oracle.rel_err(x[b:b + 1], xb) <= (1e-12 if dtype == torch.float64 else 1e-6)
