"""CUDA kernels against the CPU kernels (DESIGN.md §1: the CPU kernel is the GPU's oracle).

Skipped without a CUDA device. Small shapes are also checked against the dense oracle, so
that a bug shared by both backends cannot hide.
"""

from __future__ import annotations

import pytest
import torch

import inverseflow
from inverseflow.ops import _backends, _dispatch

import oracle
from test_ops_oracle import CASES, SPECIALIZED_SHAPES

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

DTYPES = (torch.float64, torch.float32)
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
ORACLE_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _inputs(shape, order, dtype, rng, scale=None):
    batch, channels, height, width, kh, kw = shape
    weight = oracle.random_weight(channels, kh, kw, order, rng, dtype=dtype, scale=scale)
    y = torch.randn(batch, channels, height, width, generator=rng, dtype=torch.float64).to(dtype)
    return y, weight


def _run(fn, y, weight, order):
    if fn == "inv_conv2d_transposed":
        return torch.ops.inverseflow.inv_conv2d_transposed(y, weight, order)
    return getattr(inverseflow, fn)(y, weight, order)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape,order", CASES)
@pytest.mark.parametrize("fn", ["inv_conv2d", "inv_conv2d_transposed", "causal_conv2d"])
def test_forward_parity(fn, shape, order, dtype, rng):
    y, weight = _inputs(shape, order, dtype, rng)
    out_cpu = _run(fn, y, weight, order)
    out_cuda = _run(fn, y.cuda(), weight.cuda(), order)
    assert out_cuda.device.type == "cuda" and out_cuda.dtype == dtype
    err = oracle.rel_err(out_cuda.cpu(), out_cpu)
    assert err <= TOL[dtype], f"{fn} {shape} {order} {dtype}: cuda vs cpu rel err {err:.3e}"
    ref = {"inv_conv2d": oracle.inv_conv, "inv_conv2d_transposed": oracle.inv_conv_transposed,
           "causal_conv2d": oracle.causal_conv}[fn](y.double(), weight.double(), order)
    err = oracle.rel_err(out_cuda.cpu(), ref)
    assert err <= ORACLE_TOL[dtype], f"{fn} {shape} {order} {dtype}: cuda vs oracle {err:.3e}"


@needs_cuda
@pytest.mark.parametrize("direction", [0, 1], ids=["solve", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SPECIALIZED_SHAPES,
                         ids=["B{}C{}H{}W{}k{}x{}".format(*s) for s in SPECIALIZED_SHAPES])
@pytest.mark.parametrize("order", ["TL", "quad"])
def test_specialized_and_generic_cuda_kernels(order, shape, dtype, direction, rng):
    y, weight = _inputs(shape, order, dtype, rng)
    x_cpu, _ = _dispatch.solve(y, weight, order, direction, force_generic=True)
    x_spec, name = _dispatch.solve(y.cuda(), weight.cuda(), order, direction)
    x_gen, gen_name = _dispatch.solve(y.cuda(), weight.cuda(), order, direction,
                                      force_generic=True)
    assert name != "generic" and "cuda" in name.split("_"), name
    assert gen_name == "generic"
    assert oracle.rel_err(x_spec.cpu(), x_cpu) <= TOL[dtype], name
    assert oracle.rel_err(x_gen.cpu(), x_cpu) <= TOL[dtype], gen_name


GRAD_CASES = [("TL", (3, 12, 4, 5, 3, 3)), ("quad", (17, 8, 4, 4, 2, 2)),
              ("BR", (2, 5, 3, 4, 2, 3)), ("TR", (21, 4, 1, 9, 3, 3)),
              ("quad", (3, 16, 3, 3, 3, 2)), ("BL", (1, 8, 9, 1, 2, 2))]


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("order,shape", GRAD_CASES, ids=oracle.param_id)
@pytest.mark.parametrize("fn", ["inv_conv2d", "inv_conv2d_transposed", "causal_conv2d"])
def test_gradient_parity(fn, order, shape, dtype, rng):
    y, weight = _inputs(shape, order, dtype, rng)
    upstream = torch.randn(y.shape, generator=rng, dtype=torch.float64).to(dtype)

    def grads(device):
        y_leaf = y.to(device).requires_grad_(True)
        w_leaf = weight.to(device).requires_grad_(True)
        _run(fn, y_leaf, w_leaf, order).backward(upstream.to(device))
        return y_leaf.grad.cpu(), w_leaf.grad.cpu()

    gy_cpu, gw_cpu = grads("cpu")
    gy_cuda, gw_cuda = grads("cuda")
    assert oracle.rel_err(gy_cuda, gy_cpu) <= TOL[dtype]
    assert oracle.rel_err(gw_cuda, gw_cpu) <= TOL[dtype]
    masked = oracle.masked_positions(weight.shape, order)
    assert (gw_cuda[masked] == 0).all()


# Sizes whose padded sample does not fit in shared memory (the global-memory fallback),
# and large batches. Every shape is compared with the CPU kernel only.
LARGE_CASES = [
    ("TL", (2, 12, 128, 128, 3, 3)),
    ("quad", (2, 12, 128, 128, 3, 3)),
    ("TL", (1, 12, 256, 256, 3, 3)),
    ("BR", (1, 12, 256, 256, 2, 3)),
    ("quad", (1, 48, 96, 96, 2, 2)),
    ("TL", (256, 12, 16, 16, 3, 3)),
    ("quad", (256, 8, 8, 8, 2, 2)),
    ("TR", (256, 5, 7, 9, 2, 3)),
]


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("order,shape", LARGE_CASES, ids=oracle.param_id)
def test_large_parity(order, shape, dtype, rng):
    y, weight = _inputs(shape, order, dtype, rng)
    for direction in (_dispatch.SOLVE, _dispatch.TRANSPOSED):
        x_cpu, _ = _dispatch.solve(y, weight, order, direction)
        x_cuda, name = _dispatch.solve(y.cuda(), weight.cuda(), order, direction)
        assert torch.isfinite(x_cpu).all()
        err = oracle.rel_err(x_cuda.cpu(), x_cpu)
        assert err <= TOL[dtype], f"{shape} {order} {dtype} {direction=} {name}: {err:.3e}"
    # Gradients through the public function.
    upstream = torch.randn(y.shape, generator=rng, dtype=torch.float64).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        y_leaf = y.to(device).requires_grad_(True)
        w_leaf = weight.to(device).requires_grad_(True)
        inverseflow.inv_conv2d(y_leaf, w_leaf, order).backward(upstream.to(device))
        results.append((y_leaf.grad.cpu(), w_leaf.grad.cpu()))
    (gy_cpu, gw_cpu), (gy_cuda, gw_cuda) = results
    assert oracle.rel_err(gy_cuda, gy_cpu) <= TOL[dtype]
    assert oracle.rel_err(gw_cuda, gw_cpu) <= TOL[dtype]


@needs_cuda
def test_cuda_respects_current_stream_and_noncontiguous(rng):
    y, weight = _inputs((17, 12, 6, 7, 3, 3), "TL", torch.float64, rng)
    expected = inverseflow.inv_conv2d(y, weight, "TL")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y_cuda = y.cuda().to(memory_format=torch.channels_last)
        w_cuda = weight.cuda().transpose(0, 1).contiguous().transpose(0, 1)
        x = inverseflow.inv_conv2d(y_cuda, w_cuda, "TL")
    stream.synchronize()
    assert oracle.rel_err(x.cpu(), expected) <= 1e-12


@needs_cuda
def test_cuda_mixed_devices_rejected():
    y = torch.randn(2, 4, 3, 3, dtype=torch.float64, device="cuda")
    weight = torch.randn(4, 4, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="weight"):
        inverseflow.inv_conv2d(y, weight, "TL")


# ------------------------------------------------------------ without a CUDA device

@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without CUDA")
def test_unsupported_device_raises_clear_error():
    with pytest.raises(RuntimeError, match="no kernel"):
        _backends.module_for("mps")


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without CUDA")
def test_missing_cuda_backend_raises_clear_error():
    if _backends.import_error("_cuda") is None:
        pytest.skip("the CUDA backend module is built here (no device to run it, though)")
    with pytest.raises(RuntimeError, match="CUDA") as info:
        _backends.module_for("cuda")
    assert "rebuild" in str(info.value)
