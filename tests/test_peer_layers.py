"""The peer layers of the paper's comparison (DESIGN §10): exact log-det against the dense
Jacobian, round trips, gradcheck, and clear errors on bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import oracle
from inverseflow.nn import (ConvergenceError, ConvExp2d, EmergingConv2d, SmoothLeakyReLU,
                            SplineActivation)

SHAPE = (2, 3, 3)        # C, H, W: small enough for a dense (18×18) Jacobian


def _perturb(layer, rng, scale=0.3):
    """Moves every parameter off its initial value (zero inits would hide log-det terms)."""
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=rng, dtype=p.dtype))
    return layer


def _layers(rng):
    return {
        "emerging": _perturb(EmergingConv2d(SHAPE[0], kernel_size=2), rng, 0.2),
        "conv-exp": _perturb(ConvExp2d(SHAPE[0], kernel_size=3), rng),
        "conv-exp-even": _perturb(ConvExp2d(SHAPE[0], kernel_size=2), rng),
        "smooth-leaky-relu": SmoothLeakyReLU(0.3).double(),
        "spline": _perturb(SplineActivation(SHAPE, bins=5, bound=3.0), rng, 1.0),
    }


LAYERS = ["emerging", "conv-exp", "conv-exp-even", "smooth-leaky-relu", "spline"]


def _inputs(batch, rng):
    return 2.0 * torch.randn(batch, *SHAPE, generator=rng, dtype=torch.float64)


@pytest.mark.parametrize("name", LAYERS)
def test_logdet_matches_dense_jacobian(name, rng):
    layer = _layers(rng)[name]
    x = _inputs(3, rng)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (3,)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda v: layer(v.reshape(1, *SHAPE))[0].flatten(), x[i].flatten())
        sign, expected = torch.linalg.slogdet(jac)
        assert sign > 0
        assert abs(logdet[i].item() - expected.item()) < 1e-9, (name, logdet[i], expected)


@pytest.mark.parametrize("name", LAYERS)
def test_round_trip(name, rng):
    layer = _layers(rng)[name]
    x = _inputs(4, rng)
    assert torch.allclose(layer.inverse(layer(x)[0]), x, atol=1e-10, rtol=0)
    y = _inputs(4, rng)
    assert torch.allclose(layer(layer.inverse(y))[0], y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_gradcheck_forward_and_inverse(name, rng):
    layer = _layers(rng)[name]
    params = list(layer.parameters())
    x = _inputs(2, rng).requires_grad_()

    def forward(x, *ps):
        return layer(x)

    def inverse(x, *ps):
        return layer.inverse(x)

    assert torch.autograd.gradcheck(forward, (x, *params), atol=1e-6)
    assert torch.autograd.gradcheck(inverse, (x, *params), atol=1e-6)


def test_emerging_is_two_opposite_causal_convs(rng):
    layer = _layers(rng)["emerging"]
    x = _inputs(2, rng)
    expected = oracle.causal_conv(oracle.causal_conv(x, layer.first.weight.detach(), "TL"),
                                  layer.second.weight.detach(), "BR")
    assert torch.allclose(layer(x)[0], expected, atol=1e-12, rtol=0)


def test_conv_exp_matches_matrix_exponential(rng):
    layer = _layers(rng)["conv-exp"]
    c, h, w = SHAPE
    n = c * h * w
    m = layer.kernel().detach()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *SHAPE)
    dense = F.conv2d(basis, m, padding=1).reshape(n, n).T       # column j = M e_j
    x = _inputs(2, rng)
    expected = (torch.linalg.matrix_exp(dense) @ x.reshape(2, n).T).T.reshape(x.shape)
    assert torch.allclose(layer(x)[0], expected, atol=1e-12, rtol=0)


def test_conv_exp_kernel_norm_is_limited(rng):
    layer = ConvExp2d(3, kernel_size=3, max_norm=0.5).double()
    with torch.no_grad():
        layer.weight.mul_(100)
    dense = F.conv2d(torch.eye(3 * 16, dtype=torch.float64).reshape(-1, 3, 4, 4),
                     layer.kernel().detach(), padding=1).reshape(48, 48)
    assert torch.linalg.matrix_norm(dense, ord=2) <= 0.5 + 1e-12


def test_conv_exp_series_that_does_not_converge_raises(rng):
    layer = ConvExp2d(2, kernel_size=3, max_norm=None, max_terms=8).double()
    with torch.no_grad():
        layer.weight.normal_(0, 3.0, generator=rng)
    with pytest.raises(ConvergenceError, match="did not converge"):
        layer(_inputs(2, rng))


@pytest.mark.parametrize("largest_tap", [20.0, 40.0])
def test_conv_exp_float32_overflow_raises_or_matches_float64(rng, largest_tap):
    # A large kernel without the norm limit: float32's terms (or their norms) overflow
    # where the float64 series still converges. The float32 layer must give the float64
    # answer or raise; it used to take the NaN ratio for convergence and return a partial
    # sum off by orders of magnitude.
    layer = ConvExp2d(2, kernel_size=3, max_norm=None, max_terms=400)
    with torch.no_grad():
        layer.weight.normal_(0, 1.0, generator=rng)
        layer.weight.mul_(largest_tap / layer.weight.abs().max())
    x = torch.randn(2, 2, 6, 6, generator=rng)
    reference = ConvExp2d(2, kernel_size=3, max_norm=None, max_terms=400).double()
    reference.load_state_dict(layer.state_dict())
    expected = reference(x.double())[0]
    assert torch.isfinite(expected).all()
    try:
        got = layer(x)[0]
    except ConvergenceError as exc:
        assert "overflow" in str(exc)
        return
    error = torch.linalg.vector_norm(got.double() - expected) / torch.linalg.vector_norm(expected)
    assert error < 1e-2


def test_conv_exp_nan_propagates(rng):
    layer = ConvExp2d(2, kernel_size=3).double()
    x = _inputs(1, rng)[:, :2]
    x[0, 0, 1, 1] = float("nan")
    assert torch.isnan(layer(x)[0]).any()


def test_smooth_leaky_relu_inverse_of_extreme_values(rng):
    layer = SmoothLeakyReLU(0.3).double()
    x = torch.tensor([-1e4, -50.0, -1e-8, 0.0, 1e-8, 40.0, 1e4], dtype=torch.float64)
    back = layer.inverse(layer(x[None])[0])[0]
    assert torch.allclose(back, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smooth_leaky_relu_inverse_at_the_ends_of_the_dtype(rng, dtype):
    # Alone or in a batch, the same answer: the preimage, or -inf where it is beyond the
    # dtype's range. It used to be NaN alone and a RuntimeError in a batch.
    alpha = 0.3
    layer = SmoothLeakyReLU(alpha).to(dtype)
    info = torch.finfo(dtype)
    extremes = torch.tensor([info.min, info.min / 2, alpha * info.min / 2, -1e30, info.max,
                             info.max / 3], dtype=torch.float64)
    # Far from 0 the function is y = αx (x < 0) or y = x (x > 0) to within softplus(-|x|),
    # far below the dtype's resolution; float64 division, rounded to dtype, is the oracle.
    y = extremes.to(dtype)
    expected = torch.where(extremes < 0, y.double() / alpha, y.double()).to(dtype)
    ordinary = 3 * torch.randn(5, generator=rng, dtype=torch.float64).to(dtype)
    batch = layer.inverse(torch.cat([ordinary, y])[None])[0]
    for i, value in enumerate(y):
        alone = layer.inverse(value.reshape(1, 1))[0, 0]
        torch.testing.assert_close(alone, expected[i])
        torch.testing.assert_close(batch[len(ordinary) + i], alone)
    torch.testing.assert_close(layer(batch[:len(ordinary)][None])[0][0], ordinary)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smooth_leaky_relu_inverse_converges_for_every_alpha(rng, alpha, dtype):
    # With a small alpha the residual of the old one-form value lost digits for x << 0
    # (alpha=0.1, y=-7.56: Newton never met its tolerance and raised). Oracle: float64
    # bisection on the forward function, which is increasing.
    layer = SmoothLeakyReLU(alpha).to(dtype)
    y = torch.cat([torch.tensor([-7.56, -59.28, -1e3, 1e3]),
                   60 * torch.randn(64, generator=rng, dtype=torch.float64).float()]).to(dtype)
    # f(x) > x and f(x) < αx + (1 − α)(log 2 + max(x, 0)) bracket the preimage.
    lo = torch.minimum(y.double() - 1, (y.double() - 1) / alpha)
    hi = y.double()
    def f64(x):   # softplus as logaddexp(0, x): no threshold where it drops log1p(e^-x)
        return alpha * x + (1 - alpha) * torch.logaddexp(torch.zeros_like(x), x)
    for _ in range(200):
        mid = (lo + hi) / 2
        below = f64(mid) < y.double()
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    x = layer.inverse(y[None])[0]
    tol = 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(x.double(), (lo + hi) / 2, rtol=tol, atol=tol)
    # and the forward is that function to the dtype's precision (torch's softplus returns x
    # past 20, an error of e^-20 ≈ 2e-9 that float64 sees)
    torch.testing.assert_close(layer(x[None])[0][0].double(), f64(x.double()), rtol=tol, atol=tol)


def test_spline_starts_as_identity(rng):
    layer = SplineActivation(SHAPE).double()
    x = _inputs(2, rng)
    y, logdet = layer(x)
    assert torch.allclose(y, x, atol=1e-12) and torch.allclose(logdet, torch.zeros(2, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("make,kwargs,match", [
    (SmoothLeakyReLU, dict(alpha=0.0), "alpha"),
    (SmoothLeakyReLU, dict(alpha=1.5), "alpha"),
    (ConvExp2d, dict(channels=0), "channels"),
    (ConvExp2d, dict(channels=2, max_norm=-1.0), "max_norm"),
    (ConvExp2d, dict(channels=2, tolerance=2.0), "tolerance"),
    (EmergingConv2d, dict(channels=0), "channels"),
    (SplineActivation, dict(shape=(2, -1)), "shape"),
    (SplineActivation, dict(shape=(2,), bins=1), "bins"),
])
def test_bad_arguments(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_bad_inputs(rng):
    with pytest.raises(ValueError, match="NaN"):
        SmoothLeakyReLU().inverse(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="shape"):
        SplineActivation((2, 3, 3))(torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="shape"):
        SplineActivation((2, 3, 3)).inverse(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        ConvExp2d(2)(torch.zeros(1, 3, 4, 4))
