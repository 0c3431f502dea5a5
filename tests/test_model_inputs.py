"""Model-level argument checks (issue 12, items 9 and 10) and the InvConv2d growth
statistic and stability bound (item 12), against the dense oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inverseflow.models import ConvFlow, from_preset
from inverseflow.nn import InvConv2d

import oracle


@pytest.fixture(scope="module", params=["inverseflow", "convflow"])
def model(request):
    torch.manual_seed(0)
    if request.param == "convflow":
        return ConvFlow((1, 8, 8), blocks=2, steps=1)
    return from_preset("digits", steps=1, coupling_width=16)


def _images(rng, batch=3):
    return torch.rand(batch, 1, 8, 8, generator=rng) * 0.9 + 0.05


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_log_prob_outside_unit_interval_raises(model, bad, rng):
    x = _images(rng)
    assert torch.isfinite(model.log_prob(x)).all()
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"pixel values in \[0, 1\]"):
        model.log_prob(x)


@pytest.mark.parametrize("bad", [-0.2, 1.2, float("nan"), float("inf")])
def test_encode_outside_the_logit_domain_raises(model, bad, rng):
    """encode is a bijection on the logit's domain (slightly wider than [0, 1], so that
    encode(decode(z)) works); outside it the logit is NaN, which used to pass silently."""
    x = _images(rng)
    x[0, 0, 0, 0] = -0.01                            # inside the domain: fine
    assert torch.isfinite(model.encode(x)[0]).all()
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"pixel values in \[0, 1\] \(encode accepts"):
        model.encode(x)


def test_float64_batch_into_float32_model_is_named_at_model_level(model, rng):
    with pytest.raises(TypeError, match="x is torch.float64 but the model's parameters are "
                                        "torch.float32"):
        model.log_prob(_images(rng).double())
    with pytest.raises(TypeError, match="z is torch.float64"):
        model.decode(torch.zeros(2, model.dim, dtype=torch.float64))


@pytest.mark.parametrize("n", [np.int64(2), np.int32(2), torch.tensor(2), 2])
def test_sample_takes_integer_like_counts(model, n):
    assert model.sample(n, 0.5).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("n,error", [(2.0, TypeError), ("2", TypeError), (True, TypeError),
                                     (0, ValueError), (np.int64(-1), ValueError)])
def test_sample_rejects_other_counts(model, n, error):
    with pytest.raises(error, match="n must be a positive integer"):
        model.sample(n)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), 0.0, -0.5])
def test_sample_temperature_finite_and_positive(model, temperature):
    with pytest.raises(ValueError, match="temperature must be finite and positive"):
        model.sample(2, temperature)


@pytest.mark.parametrize("options", [dict(kernel_size=5), dict(solve_on="sampling"),
                                     dict(order="TL"), dict(layer="finc")])
def test_glow_rejects_k_by_k_options(options):
    name, value = next(iter(options.items()))
    with pytest.raises(ValueError, match=rf"Glow has no k×k .*{name}={value!r}"):
        from_preset("digits", model="glow", **options)


def test_glow_records_no_k_by_k_options_and_rebuilds():
    from inverseflow.models import build_model

    glow = from_preset("digits", model="glow", steps=1, coupling_width=16)
    assert glow.config["kernel_size"] is None and glow.config["solve_on"] is None
    assert glow.config["order"] is None
    rebuilt = build_model(glow.config)
    assert rebuilt.config == glow.config


# ------------------------------------------------------------- growth and stability

@pytest.mark.parametrize("order", ["TL", "quad"])
def test_growth_statistic_matches_the_oracle(order, rng):
    layer = InvConv2d(8, 3, order=order).double()
    with torch.no_grad():
        layer.weight.copy_(oracle.random_weight(8, 3, 3, order, rng, scale=0.3))
    y = torch.randn(2, 8, 5, 6, generator=rng, dtype=torch.float64)
    layer(y)
    assert layer.last_growth is None                # off by default
    layer.record_growth = True
    layer(y)
    layer(0.5 * y)                                  # the max over calls is kept
    x = oracle.inv_conv(y, layer.weight.detach(), order)
    expected = x.abs().max() / y.abs().max()
    assert abs(float(layer.last_growth) - float(expected)) <= 1e-12 * float(expected)


@pytest.mark.parametrize("order", ["TL", "BR", "quad"])
def test_stability_bound_holds_when_rho_below_one(order, rng):
    layer = InvConv2d(8, 3, order=order).double()
    with torch.no_grad():
        layer.weight.copy_(oracle.random_weight(8, 3, 3, order, rng, scale=0.01))
    rho = layer.stability_bound()
    assert 0 < rho < 1
    y = torch.randn(2, 8, 12, 12, generator=rng, dtype=torch.float64)
    x = oracle.inv_conv(y, layer.weight.detach(), order)
    masked = oracle.mask(layer.weight.detach(), order)
    norms = []
    for corner, start, cg in oracle.group_layout(order, 8):
        ci, cj = oracle.center_tap(corner, 3, 3)
        l_inv = torch.linalg.inv(masked[start:start + cg, :, ci, cj])
        norms.append(float(l_inv.abs().sum(dim=1).max()))
    bound = max(norms) * float(y.abs().max()) / (1 - rho)
    assert float(x.abs().max()) <= bound


def test_large_off_center_taps_show_large_growth(rng):
    layer = InvConv2d(4, 3, order="TL").double()
    with torch.no_grad():
        layer.weight.copy_(oracle.random_weight(4, 3, 3, "TL", rng, scale=2.0))
    assert layer.stability_bound() > 1
    layer.record_growth = True
    layer(torch.randn(1, 4, 16, 16, generator=rng, dtype=torch.float64))
    assert not float(layer.last_growth) < 1e4       # huge (or inf/NaN), never silent


def test_glow_checkpoint_configs_of_the_previous_release_still_build():
    from inverseflow.models import build_model, from_preset

    glow = from_preset("digits", model="glow", steps=1, coupling_width=16)
    legacy = dict(glow.config, kernel_size=None, solve_on="density", order="quad")
    rebuilt = build_model(legacy)
    assert rebuilt.config == glow.config
    assert set(rebuilt.state_dict()) == set(glow.state_dict())
    with pytest.raises(ValueError, match="order='TL'"):
        build_model(dict(legacy, order="TL"))


def test_log_prob_checks_its_input_once(monkeypatch):
    # The range check is a reduction plus a host sync on the training path: one per call.
    from inverseflow.models import base

    calls = []
    real = base.check_images
    monkeypatch.setattr(base, "check_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = from_preset("digits", steps=1, coupling_width=8)
    model.log_prob(torch.rand(3, 1, 8, 8))
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.log_prob(torch.rand(3, 1, 8, 8) + 1)
