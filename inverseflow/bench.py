"""Op-level CPU/GPU benchmark of the targets in the core-ops issue, written as JSON.

Every ratio is measured side by side in one run: the inverse against ``F.conv2d`` on the
same padded shape, forward+backward against conv's forward+backward, and the specialized
kernel against the generic one.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from . import _dispatch, _geometry
from .memory import LargestAllocation
from .ops import inv_conv2d


def timings_ms(fn, repeats: int, sync) -> list[float]:
    for _ in range(max(3, repeats // 10)):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def summary(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4)
    return {"median_ms": statistics.median(samples), "q1_ms": q[0], "q3_ms": q[2],
            "min_ms": min(samples), "repeats": len(samples)}


def op_case(batch, channels, size, kernel, order="TL", dtype=torch.float32, device="cpu",
            repeats=100) -> dict:
    gen = torch.Generator().manual_seed(0)
    cg = channels // 4 if order == "quad" else channels
    weight = (0.1 / kernel * torch.randn(channels, cg, kernel, kernel, generator=gen,
                                         dtype=dtype)).to(device)
    y = torch.randn(batch, channels, size, size, generator=gen, dtype=dtype).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    corner = "TL" if order == "quad" else order
    padded = F.pad(y, _geometry.padding(corner, kernel, kernel))
    groups = 4 if order == "quad" else 1
    conv_weight = weight

    conv = summary(timings_ms(lambda: F.conv2d(padded, conv_weight, groups=groups), repeats, sync))
    spec = summary(timings_ms(lambda: _dispatch.solve(y, weight, order), repeats, sync))
    generic = summary(timings_ms(lambda: _dispatch.solve(y, weight, order, force_generic=True),
                                 repeats, sync))

    y_req = y.clone().requires_grad_()
    w_req = weight.clone().requires_grad_()
    padded_req = padded.clone().requires_grad_()

    def conv_fwd_bwd():
        F.conv2d(padded_req, w_req, groups=groups).sum().backward()

    def inv_fwd_bwd():
        inv_conv2d(y_req, w_req, order).sum().backward()

    conv_fb = summary(timings_ms(conv_fwd_bwd, max(10, repeats // 2), sync))
    inv_fb = summary(timings_ms(inv_fwd_bwd, max(10, repeats // 2), sync))

    x = inv_conv2d(y_req, w_req, order)
    grad = torch.randn_like(x)
    with LargestAllocation() as largest:
        x.backward(grad)
    return {
        "shape": [batch, channels, size, size], "kernel": kernel, "order": order,
        "dtype": str(dtype).removeprefix("torch."), "device": device,
        "kernel_used": _dispatch.solve(y, weight, order)[1],
        "conv2d": conv, "inv_conv2d": spec, "inv_conv2d_generic": generic,
        "conv2d_fwd_bwd": conv_fb, "inv_conv2d_fwd_bwd": inv_fb,
        "ratio_inv_over_conv": spec["median_ms"] / conv["median_ms"],
        "ratio_fwd_bwd_inv_over_conv": inv_fb["median_ms"] / conv_fb["median_ms"],
        "ratio_generic_over_specialized": generic["median_ms"] / spec["median_ms"],
        "backward_largest_buffer_over_bchw": largest.numel / y.numel(),
        "backward_largest_buffer_op": largest.op,
    }


def environment(device: str) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "processor": platform.processor(),
           "threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env
