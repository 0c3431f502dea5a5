"""Density-pass and sampling-pass timings of a model, for both k×k placements."""

from __future__ import annotations

import statistics
import time

import torch

from ..nn import InvConv2d


def timings_ms(fn, repeats: int, sync) -> list[float]:
    """Wall times in ms of ``repeats`` calls after a warm-up, with ``sync`` after each."""
    for _ in range(max(1, repeats // 10)):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def _median_ms(fn, device, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return statistics.median(timings_ms(fn, repeats, sync))


@torch.no_grad()
def pass_timings(model, batch: int, repeats: int = 5) -> dict:
    """Median ms of the density pass (encode) and the sampling pass on one batch."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *model.image_shape, generator=gen).to(device) * 0.9 + 0.05
    return {"batch": batch,
            "density_ms": _median_ms(lambda: model.encode(x), device, repeats),
            "sampling_ms": _median_ms(lambda: model.sample(batch, generator=None), device,
                                      repeats)}


def placement_timings(model, batch: int, repeats: int = 5) -> dict:
    """Times both placements on the same parameters; restores the model's placement."""
    if not getattr(model, "switchable_placement", True):
        # Glow (no k×k layer), or a layer with one fixed placement (emerging, conv-exp).
        return {model.config.get("layer") or "glow": pass_timings(model, batch, repeats)}
    if not any(isinstance(m, InvConv2d) for m in model.modules()):
        return {"glow": pass_timings(model, batch, repeats)}
    original = model.config["solve_on"]
    out = {}
    try:
        for placement in ("density", "sampling"):
            model.set_solve_on(placement)
            out[placement] = pass_timings(model, batch, repeats)
    finally:
        model.set_solve_on(original)
    return out
