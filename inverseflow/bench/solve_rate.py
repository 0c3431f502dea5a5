"""``inverseflow bench --peak``: each CPU solve's useful GFLOP/s and fraction of FMA peak.

For a few shapes (k = 3) it times, side by side in one process, the solve, the transposed
solve and the causal conv of ``TL``, ``BR`` and ``quad`` (which all run specializations since
issue 27), the generic kernel of the same TL calls, and oneDNN's ``F.conv2d`` of the same
shape. Rounds alternate the variants, so that a neighbour's load on a shared machine falls on
all of them; ratios are medians of per-round ratios. The peak and its assumptions come from
:mod:`inverseflow.bench.fma_peak`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..ops import _dispatch, _geometry
from .environment import environment, write_json
from .fma_peak import cpu_peak, rate, useful_flops

SHAPES = [(100, 12, 16, 16), (64, 12, 16, 16), (64, 48, 16, 16), (100, 48, 8, 8)]
KERNEL = 3
ORDERS = ("TL", "BR", "quad")
DIRECTIONS = {"solve": _dispatch.SOLVE, "transposed": _dispatch.TRANSPOSED,
              "conv": _dispatch.CONV}
MIN_ROUND_S = 0.002   # each timed sample loops a call until it has taken this long


def _per_call_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) * 1e3 / calls


def _calls_for(fn) -> int:
    fn()
    calls = 1
    while _per_call_ms(fn, calls) * calls < MIN_ROUND_S * 1e3:
        calls *= 2
    return calls


def _variants(batch, channels, height, width, dtype):
    gen = torch.Generator().manual_seed(0)
    out = {}
    for order in ORDERS:
        groups = 4 if order == "quad" else 1
        weight = 0.1 / KERNEL * torch.randn(channels, channels // groups, KERNEL, KERNEL,
                                            generator=gen, dtype=dtype)
        y = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
        for label, direction in DIRECTIONS.items():
            out[f"{order} {label}"] = (lambda y=y, w=weight, o=order, d=direction:
                                       _dispatch.solve(y, w, o, d), groups, (y, weight, order,
                                                                             direction))
            if order == "TL":
                out[f"TL {label} generic"] = (
                    lambda y=y, w=weight, d=direction: _dispatch.solve(y, w, "TL", d,
                                                                       force_generic=True),
                    groups, None)
        if order == "TL":
            padded = F.pad(y, _geometry.padding("TL", (KERNEL, KERNEL)))
            out["TL oneDNN conv2d"] = (lambda p=padded, w=weight: F.conv2d(p, w), 1, None)
    return out


def measure_shape(batch, channels, height, width, rounds: int, dtype=torch.float32,
                  peak: dict | None = None) -> dict:
    peak = peak or cpu_peak(dtype)
    variants = _variants(batch, channels, height, width, dtype)
    calls = {name: _calls_for(fn) for name, (fn, _, _) in variants.items()}
    samples = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]   # rotate who goes first
        for name in order:
            samples[name].append(_per_call_ms(variants[name][0], calls[name]))
    rows = {}
    for name, (fn, groups, call) in variants.items():
        ms = statistics.median(samples[name])
        flops = useful_flops(batch, channels, (height, width), (KERNEL, KERNEL), groups)
        row = {"median_ms": ms, "min_ms": min(samples[name]), "calls_per_sample": calls[name],
               "useful_mflop": flops / 1e6, **rate(flops, ms, peak)}
        if call is not None:
            row["kernel"] = _dispatch.solve(*call)[1]
        rows[name] = row

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    ratios = {}
    for label in DIRECTIONS:
        ratios[f"BR_over_TL_{label}"] = paired(f"BR {label}", f"TL {label}")
        ratios[f"generic_over_specialized_{label}"] = paired(f"TL {label} generic",
                                                             f"TL {label}")
    ratios["TL_solve_over_oneDNN_conv2d"] = paired("TL solve", "TL oneDNN conv2d")
    return {"shape": [batch, channels, height, width], "kernel": KERNEL,
            "dtype": str(dtype).removeprefix("torch."), "rounds": rounds, "variants": rows,
            "paired_ratios": ratios}


def run(quick: bool = False, log=print) -> dict:
    peak = cpu_peak(torch.float32)
    log(f"FMA peak: {peak['peak_gflops']:.0f} GFLOP/s float32 = {peak['cores']} cores x "
        f"{peak['clock_ghz']:.2f} GHz x {peak['fma_units']} FMA x {peak['lanes']} lanes x 2 "
        f"({peak['cpu']}, {peak['build_vector_bits']}-bit build)")
    shapes = SHAPES[1:3] if quick else SHAPES
    results = []
    for shape in shapes:
        result = measure_shape(*shape, rounds=5 if quick else 21, peak=peak)
        results.append(result)
        for line in _lines(result):
            log(line)
    return {"environment": environment("cpu"), "fma_peak": peak, "shapes": results}


def _lines(result: dict) -> list[str]:
    b, c, h, w = result["shape"]
    lines = [f"{b}x{c}x{h}x{w} k={result['kernel']}:"]
    for name, row in result["variants"].items():
        frac = row["fraction_of_peak"]
        lines.append(f"  {name:<24} {row['median_ms']:8.3f} ms  {row['gflops']:6.1f} GFLOP/s"
                     + (f"  {100 * frac:5.1f}% of peak" if frac is not None else "")
                     + (f"  [{row['kernel']}]" if "kernel" in row else ""))
    lines.append("  paired ratios: " + ", ".join(f"{k} {v:.2f}"
                                                 for k, v in result["paired_ratios"].items()))
    return lines


def markdown(result: dict) -> str:
    peak = result["fma_peak"]
    lines = [f"FMA peak {peak['peak_gflops']:.0f} GFLOP/s ({peak['cpu']}, {peak['cores']} cores, "
             f"{peak['clock_ghz']:.2f} GHz from {peak['clock_source']}, "
             f"{peak['build_vector_bits']}-bit build, {peak['fma_units']} FMA unit(s): "
             f"{peak['fma_units_assumption']})", "",
             "| shape | variant | ms | GFLOP/s | % of peak |", "|---|---|---|---|---|"]
    for shape in result["shapes"]:
        label = "×".join(map(str, shape["shape"]))
        for name, row in shape["variants"].items():
            frac = row["fraction_of_peak"]
            lines.append(f"| {label} | {name} | {row['median_ms']:.3f} | {row['gflops']:.1f} | "
                         + (f"{100 * frac:.1f}" if frac is not None else "—") + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> list[Path]:
    path = write_json(result, Path(out), "solve_rate.json")
    md = Path(out) / "solve_rate.md"
    md.write_text(markdown(result))
    return [path, md]
