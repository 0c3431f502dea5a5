"""``inverseflow bench --jit``: what run-time specialization (inverseflow.jit) costs and buys.

For layer shapes outside ``codegen/specs.toml`` it measures, in one process:
- the compile time of one shape (both dtypes and directions) into an empty cache, on CPU
  and, where nvcc is found, for CUDA (the CUDA module is compiled, not run, without a GPU);
- the solve and transposed solve of the run-time kernel against the generic kernel that
  the shape would otherwise run, timed alternately with ``torch.utils.benchmark`` so that
  both see the same machine load.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import benchmark

from .. import jit
from ..ops import _dispatch
from .environment import environment, write_json

# (channels, order) at batch 64, 16x16, k=3: shapes no build specializes by default.
SHAPES = [(16, "TL"), (20, "quad")]
BATCH, SIZE, KERNEL = 64, 16, 3
TARGET_SPEEDUP = 1.5


def _alternate(stmts: dict, rounds: int, number: int) -> dict:
    """Per-call milliseconds of each statement, timed round-robin; median and quartiles."""
    timers = {name: benchmark.Timer(stmt="f()", globals={"f": f}) for name, f in stmts.items()}
    for f in stmts.values():
        f()  # warm-up (page-in, OpenMP pool)
    samples = {name: [] for name in stmts}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(number).mean * 1e3)
    out = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        out[name] = {"median_ms": statistics.median(values), "q1_ms": q[0], "q3_ms": q[2],
                     "rounds": rounds, "calls_per_round": number}
    return out


def _compile_seconds(kernel: int, channels: int, order: str, device: str) -> dict:
    start = time.perf_counter()
    try:
        names = jit.specialize(kernel, channels, order, device)
    except jit.JitError as exc:
        return {"error": str(exc)}
    return {"seconds": round(time.perf_counter() - start, 2), "kernels": names}


def run(device: str = "cpu", quick: bool = False) -> dict:
    if device != "cpu":
        raise ValueError(f"device: the JIT speed-up bench times CPU kernels, got {device!r} "
                         "(CUDA modules are compiled and their compile time reported)")
    rounds, number = (5, 5) if quick else (15, 10)
    result = {"environment": environment(device), "batch": BATCH, "size": SIZE, "kernel": KERNEL,
              "target_speedup": TARGET_SPEEDUP, "shapes": []}
    saved = os.environ.get(jit.CACHE_ENV)
    with tempfile.TemporaryDirectory(prefix="inverseflow-bench-jit-") as cache:
        os.environ[jit.CACHE_ENV] = cache  # an empty cache: real compile times
        try:
            for channels, order in SHAPES:
                result["shapes"].append(_shape(channels, order, rounds, number))
            channels, order = SHAPES[0]
            result["cuda_compile"] = _compile_seconds(KERNEL, channels, order, "cuda")
        finally:
            if saved is None:
                os.environ.pop(jit.CACHE_ENV, None)
            else:
                os.environ[jit.CACHE_ENV] = saved
    return result


def _shape(channels: int, order: str, rounds: int, number: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    cg = channels // 4 if order == "quad" else channels
    weight = 0.1 / KERNEL * torch.randn(channels, cg, KERNEL, KERNEL, generator=gen)
    y = torch.randn(BATCH, channels, SIZE, SIZE, generator=gen)
    row = {"channels": channels, "order": order,
           "kernel_before": _dispatch.solve(y, weight, order)[1]}
    row["compile"] = _compile_seconds(KERNEL, channels, order, "cpu")
    if "error" in row["compile"]:
        return row
    x_jit, row["kernel_after"] = _dispatch.solve(y, weight, order)
    x_generic, _ = _dispatch.solve(y, weight, order, force_generic=True)
    row["max_abs_difference"] = (x_jit - x_generic).abs().max().item()
    row["timings"] = _alternate({
        "generic_solve": lambda: _dispatch.solve(y, weight, order, force_generic=True),
        "jit_solve": lambda: _dispatch.solve(y, weight, order),
        "generic_transposed": lambda: _dispatch.solve(y, weight, order, _dispatch.TRANSPOSED,
                                                      force_generic=True),
        "jit_transposed": lambda: _dispatch.solve(y, weight, order, _dispatch.TRANSPOSED),
    }, rounds, number)
    t = row["timings"]
    row["speedup_solve"] = t["generic_solve"]["median_ms"] / t["jit_solve"]["median_ms"]
    row["speedup_transposed"] = (t["generic_transposed"]["median_ms"]
                                 / t["jit_transposed"]["median_ms"])
    return row


def format_report(result: dict) -> str:
    lines = [f"run-time specialization, B={result['batch']}, {result['size']}x{result['size']}, "
             f"k={result['kernel']}, float32, {result['environment']['threads']} thread(s) "
             f"({result['environment']['date'][:10]})", "",
             "| shape | compile (s) | kernel | generic solve (ms) | JIT solve (ms) | speed-up "
             "| generic transposed (ms) | JIT transposed (ms) | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["shapes"]:
        shape = f"C={row['channels']} {row['order']}"
        if "error" in row["compile"]:
            lines.append(f"| {shape} | failed: {row['compile']['error']} | | | | | | | |")
            continue
        t = row["timings"]
        lines.append(
            f"| {shape} | {row['compile']['seconds']:.1f} | {row['kernel_after']} "
            f"| {t['generic_solve']['median_ms']:.2f} | {t['jit_solve']['median_ms']:.2f} "
            f"| {row['speedup_solve']:.2f}x | {t['generic_transposed']['median_ms']:.2f} "
            f"| {t['jit_transposed']['median_ms']:.2f} | {row['speedup_transposed']:.2f}x |")
    cuda = result.get("cuda_compile", {})
    lines.append("")
    lines.append(f"CUDA compile (nvcc) of C={SHAPES[0][0]} {SHAPES[0][1]}: "
                 + (f"{cuda['seconds']:.1f} s" if "seconds" in cuda else
                    f"not done ({cuda.get('error')})"))
    return "\n".join(lines)


def write(result: dict, out: Path) -> Path:
    return write_json(result, out, "jit.json")
