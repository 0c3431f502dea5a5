"""Empty images and the demo's kernel labels (issue 12, item 13)."""

from __future__ import annotations

import pytest
import torch

import inverseflow
from inverseflow.bench import demo

import oracle


@pytest.mark.parametrize("order", ["TL", "BR", "quad"])
@pytest.mark.parametrize("hw", [(0, 5), (5, 0), (0, 0)], ids=["H0", "W0", "H0W0"])
def test_causal_conv2d_on_an_empty_image_is_empty(hw, order, rng):
    weight = oracle.random_weight(8, 3, 2, order, rng).requires_grad_(True)
    x = torch.randn(2, 8, *hw, dtype=torch.float64, requires_grad=True)
    for fn in (inverseflow.causal_conv2d, inverseflow.inv_conv2d):
        out = fn(x, weight, order)
        assert out.shape == x.shape and out.numel() == 0
        grad_x, grad_w = torch.autograd.grad(out.sum(), (x, weight))
        assert grad_x.shape == x.shape
        assert grad_w.shape == weight.shape and (grad_w == 0).all()


def test_demo_does_not_call_the_generic_kernel_specialized():
    # 5 channels has no specialization in any manifest (they are multiples of 4).
    result = demo.run(batch=2, channels=5, size=4, kernel=3, order="TL")
    assert result["kernel_used"] == "generic" and not result["specialized"]
    assert result["generic_ms"] is None
    report = demo.format_report(result)
    assert "specialized" not in report.replace("no specialized kernel", "")
    assert "no specialized kernel for this shape" in report


def test_demo_labels_a_specialized_kernel():
    result = demo.run(batch=2, channels=12, size=4, kernel=3, order="TL")
    if result["kernel_used"] == "generic":
        pytest.skip("this build has no C12 k3x3 TL specialization")
    assert result["specialized"] and result["generic_ms"] > 0
    assert "inv_conv2d specialized" in demo.format_report(result)
