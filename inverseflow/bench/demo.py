"""``inverseflow demo``: the inverse, the round trip, and timing against ``F.conv2d``."""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from ..models.timing import timings_ms
from ..ops import _dispatch, _geometry, causal_conv2d, inv_conv2d

# What the dispatcher reports when no specialization ran (or, for an empty input, nothing).
GENERIC_NAMES = ("generic", "none")


def run(batch: int = 64, channels: int = 12, size: int = 16, kernel: int = 3,
        order: str = "TL", device: str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(0)
    cg = channels // 4 if order == "quad" else channels
    weight = (0.1 / kernel * torch.randn(channels, cg, kernel, kernel, generator=gen)).to(device)
    y = torch.randn(batch, channels, size, size, generator=gen).to(device)
    x = inv_conv2d(y, weight, order)
    round_trip = (causal_conv2d(x, weight, order) - y).abs().max().item()
    weight64, y64 = weight.double(), y.double()
    round_trip64 = (causal_conv2d(inv_conv2d(y64, weight64, order), weight64, order)
                    - y64).abs().max().item()
    padded = F.pad(y, _geometry.padding("TL" if order == "quad" else order, (kernel, kernel)))
    dense_weight = weight if order != "quad" else torch.randn(
        channels, channels, kernel, kernel, generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn):
        return statistics.median(timings_ms(fn, 50, sync))

    conv_ms = timed(lambda: F.conv2d(padded, dense_weight, groups=1))
    inv_ms = timed(lambda: inv_conv2d(y, weight, order))
    kernel_name = _dispatch.solve(y, weight, order)[1]
    specialized = kernel_name not in GENERIC_NAMES
    # Without a specialization for this shape the generic kernel ran already: timing it
    # again and calling the first figure "specialized" would compare it with itself.
    generic_ms = timed(lambda: _dispatch.solve(y, weight, order, force_generic=True)
                       ) if specialized else None
    return {"shape": [batch, channels, size, size], "kernel": kernel, "order": order,
            "device": device, "kernel_used": kernel_name, "specialized": specialized,
            "round_trip_max_abs_err_float32": round_trip,
            "round_trip_max_abs_err_float64": round_trip64,
            "conv2d_ms": conv_ms, "inv_conv2d_ms": inv_ms, "generic_ms": generic_ms,
            "inv_over_conv": inv_ms / conv_ms,
            "generic_over_specialized": generic_ms / inv_ms if specialized else None}


def format_report(r: dict) -> str:
    b, c, h, w = r["shape"]
    lines = [
        f"inverse of a {r['kernel']}x{r['kernel']} {r['order']} convolution on {b}x{c}x{h}x{w} "
        f"({r['device']}, kernel {r['kernel_used']})",
        f"  round trip causal_conv2d(inv_conv2d(y)) - y: max |err| "
        f"{r['round_trip_max_abs_err_float32']:.2e} (float32), "
        f"{r['round_trip_max_abs_err_float64']:.2e} (float64)",
        f"  F.conv2d (same shape)   {r['conv2d_ms']:8.3f} ms",
    ]
    if not r["specialized"]:
        return "\n".join(lines + [
            f"  inv_conv2d generic      {r['inv_conv2d_ms']:8.3f} ms  "
            f"({r['inv_over_conv']:.2f}x conv; no specialized kernel for this shape)"])
    return "\n".join(lines + [
        f"  inv_conv2d specialized  {r['inv_conv2d_ms']:8.3f} ms  ({r['inv_over_conv']:.2f}x conv)",
        f"  inv_conv2d generic      {r['generic_ms']:8.3f} ms  "
        f"({r['generic_over_specialized']:.2f}x the specialized kernel)",
    ])
