"""Density-pass and sampling-pass timings of a model, for both k×k placements."""

from __future__ import annotations

import statistics

import torch

from ..nn import InvConv2d


def timer(fn):
    """A ``torch.utils.benchmark.Timer`` for ``fn()`` at the caller's torch thread count
    (the Timer's own default is one thread, which is not how the ops run)."""
    from torch.utils import benchmark   # 0.1 s to import: only when timing

    return benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def timings_ms(fn, repeats: int, sync=None) -> list[float]:
    """ms of each of ``repeats`` single calls of ``fn()``, timed by ``torch.utils.benchmark``
    (warm-up calls before each, the thread count pinned, the accelerator synchronised).

    One call per sample, not ``blocked_autorange``'s blocks: on a shared CPU a block's mean
    absorbs every preemption, and its block size flips between runs (docs/benchmarks.md,
    "Timing method"), while the median of single calls stays put. ``sync`` is unused (the
    Timer synchronises); it is kept for callers written against the earlier helper.
    """
    measure = timer(fn)
    return [measure.timeit(1).median * 1e3 for _ in range(repeats)]


def _median_ms(fn, repeats: int) -> float:
    return statistics.median(timings_ms(fn, repeats))


@torch.no_grad()
def pass_timings(model, batch: int, repeats: int = 5) -> dict:
    """Median ms of the density pass (encode) and the sampling pass on one batch."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *model.image_shape, generator=gen).to(device) * 0.9 + 0.05
    return {"batch": batch,
            "density_ms": _median_ms(lambda: model.encode(x), repeats),
            "sampling_ms": _median_ms(lambda: model.sample(batch, generator=None), repeats)}


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
