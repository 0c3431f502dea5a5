"""``inverseflow bench``: op- and model-level benchmarks, as JSON, a markdown table and plots.

Every ratio is measured side by side in one process: the specialized inverse against
``F.conv2d`` on the same padded shape, the generic kernel, the baselines of
:mod:`inverseflow.bench.baselines`, and at model level both placements against Glow.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import from_preset
from ..models.timing import placement_timings, timings_ms
from ..ops import _dispatch, _geometry, inv_conv2d
from . import baselines, fma_peak
from .environment import environment
from .memory import LargestAllocation

OP_SHAPES = [(4, 14, 14), (12, 16, 16), (48, 4, 4), (12, 32, 32), (12, 64, 64)]
KERNELS = (2, 3, 5)
DENSE_MAX = 3072          # largest C·H·W for the O(n³) dense baseline
SEQUENTIAL_MAX_PIXELS = 1024
H200_HBM_BYTES_PER_S = 4.8e12


def summary(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "q1_ms": q[0], "q3_ms": q[2],
            "min_ms": min(samples), "repeats": len(samples)}


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def op_case(batch, channels, size, kernel, order="TL", dtype=torch.float32, device="cpu",
            repeats=30, baseline_repeats=3, width=None) -> dict:
    """One shape: forward and forward+backward of the inverse against conv and baselines."""
    width = width or size
    gen = torch.Generator().manual_seed(0)
    cg = channels // 4 if order == "quad" else channels
    weight = (0.1 / kernel * torch.randn(channels, cg, kernel, kernel, generator=gen,
                                         dtype=dtype)).to(device)
    y = torch.randn(batch, channels, size, width, generator=gen, dtype=dtype).to(device)
    sync, groups = _sync(device), (4 if order == "quad" else 1)
    padded = F.pad(y, _geometry.padding("TL" if order == "quad" else order, (kernel, kernel)))
    t = {}
    t["conv2d"] = summary(timings_ms(lambda: F.conv2d(padded, weight, groups=groups), repeats, sync))
    t["inv_conv2d"] = summary(timings_ms(lambda: _dispatch.solve(y, weight, order), repeats, sync))
    t["inv_conv2d_generic"] = summary(timings_ms(
        lambda: _dispatch.solve(y, weight, order, force_generic=True), repeats, sync))
    t["transposed_solve"] = summary(timings_ms(
        lambda: _dispatch.solve(y, weight, order, _dispatch.TRANSPOSED), repeats, sync))

    y_req, w_req = y.clone().requires_grad_(), weight.clone().requires_grad_()
    p_req = padded.clone().requires_grad_()
    x = inv_conv2d(y_req, w_req, order)
    grad = torch.randn_like(x)
    t["conv2d_fwd_bwd"] = summary(timings_ms(
        lambda: F.conv2d(p_req, w_req, groups=groups).backward(grad), max(5, repeats // 2), sync))
    t["inv_conv2d_fwd_bwd"] = summary(timings_ms(
        lambda: inv_conv2d(y_req, w_req, order).backward(grad), max(5, repeats // 2), sync))
    t["inv_conv2d_bwd"] = summary(timings_ms(
        lambda: torch.autograd.grad(x, (y_req, w_req), grad, retain_graph=True),
        max(5, repeats // 2), sync))

    small = y[: min(batch, 4)]
    if size * width <= SEQUENTIAL_MAX_PIXELS:
        t["sequential_per_pixel"] = summary(timings_ms(
            lambda: baselines.sequential_solve(y, weight, order), baseline_repeats, sync))
    t["per_diagonal"] = summary(timings_ms(
        lambda: baselines.diagonal_solve(y, weight, order), baseline_repeats, sync))
    if channels * size * width <= DENSE_MAX:
        t["dense_lu_4_samples"] = summary(timings_ms(
            lambda: baselines.dense_solve(small, weight, order), baseline_repeats, sync))
        t["inv_conv2d_4_samples"] = summary(timings_ms(
            lambda: _dispatch.solve(small, weight, order), repeats, sync))

    with LargestAllocation() as largest:
        x.backward(grad, retain_graph=True)
    memory = {"backward_largest_buffer_over_bchw": largest.numel / y.numel(),
              "backward_largest_buffer_op": largest.op}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        x.backward(grad, retain_graph=True)
        torch.cuda.synchronize()
        memory["backward_peak_extra_over_bchw_bytes"] = (
            (torch.cuda.max_memory_allocated() - base) / (y.numel() * y.element_size()))

    med = {k: v["median_ms"] for k, v in t.items()}
    ratios = {"inv_over_conv": med["inv_conv2d"] / med["conv2d"],
              "fwd_bwd_inv_over_conv": med["inv_conv2d_fwd_bwd"] / med["conv2d_fwd_bwd"],
              "generic_over_specialized": med["inv_conv2d_generic"] / med["inv_conv2d"],
              "backward_over_forward": med["inv_conv2d_bwd"] / med["inv_conv2d"],
              "per_diagonal_over_specialized": med["per_diagonal"] / med["inv_conv2d"]}
    if "sequential_per_pixel" in med:
        ratios["sequential_over_specialized"] = med["sequential_per_pixel"] / med["inv_conv2d"]
    if "dense_lu_4_samples" in med:
        ratios["dense_over_specialized_4_samples"] = (med["dense_lu_4_samples"]
                                                      / med["inv_conv2d_4_samples"])
    steps = size + width - 1
    floors = {"dependent_steps": steps,
              "specialized_us_per_dependent_step": med["inv_conv2d"] * 1e3 / steps}
    if device == "cuda":
        floors["memory_floor_us"] = 2 * y.numel() * y.element_size() / H200_HBM_BYTES_PER_S * 1e6
        floors["over_memory_floor"] = med["inv_conv2d"] * 1e3 / floors["memory_floor_us"]
    result = {"shape": [batch, channels, size, width], "kernel": kernel, "order": order,
              "dtype": str(dtype).removeprefix("torch."), "device": device,
              "kernel_used": _dispatch.solve(y, weight, order)[1], "times": t,
              "ratios": ratios, "memory": memory, "floors": floors}
    if device == "cpu":   # useful GFLOP/s and the fraction of the CPU's FMA peak (issue 27)
        peak = fma_peak.cpu_peak(dtype)
        flops = fma_peak.useful_flops(batch, channels, (size, width), (kernel, kernel), groups)
        result["useful_rate"] = {name: fma_peak.rate(flops, med[name], peak) for name in
                                 ("inv_conv2d", "inv_conv2d_generic", "transposed_solve",
                                  "conv2d")}
    return result


def model_case(preset: str, batch: int, device: str, repeats: int) -> dict:
    """Density- and sampling-pass times of both placements and of Glow at equal depth."""
    torch.manual_seed(0)
    flow = from_preset(preset).to(device).eval()
    glow = from_preset(preset, model="glow").to(device).eval()
    with torch.no_grad():  # ActNorm's data-dependent init, so the passes are realistic
        images = torch.randint(0, 256, (min(batch, 16), *flow.image_shape), dtype=torch.uint8)
        flow(images.to(device))
        glow(images.to(device))
    timings = placement_timings(flow, batch, repeats)
    timings["glow"] = placement_timings(glow, batch, repeats)["glow"]
    ratios = {
        "sampling_inverseflow_over_glow": timings["density"]["sampling_ms"] / timings["glow"]["sampling_ms"],
        "sampling_finc_over_inverseflow": timings["sampling"]["sampling_ms"] / timings["density"]["sampling_ms"],
        "density_inverseflow_over_finc": timings["density"]["density_ms"] / timings["sampling"]["density_ms"],
    }
    return {"preset": preset, "batch": batch, "device": device, "times_ms": timings,
            "ratios": ratios}


def run(device: str = "cpu", quick: bool = False, log=print) -> dict:
    batch = 256 if device == "cuda" else 64
    repeats = 10 if quick else 30
    shapes = [(12, 16, 16)] if quick else OP_SHAPES
    kernels = (3,) if quick else KERNELS
    ops = []
    for channels, size, width in shapes:
        for kernel in kernels:
            for order in ("TL", "quad") if (channels, size) == (12, 16) else ("TL",):
                r = op_case(batch, channels, size, kernel, order, device=device,
                            repeats=repeats, width=width)
                ops.append(r)
                log(_op_line(r))
    sweeps = {"batch": [], "size": []}
    for b in ((1, 16, batch) if quick else (1, 4, 16, 64, 256)):
        sweeps["batch"].append(_sweep_point(b, 16, device, repeats))
    for s in ((8, 16) if quick else (8, 16, 32, 64)):
        sweeps["size"].append(_sweep_point(batch, s, device, repeats))
    models = []
    presets = ("digits",) if quick else ("mnist", "cifar10")
    for preset in presets:
        for b in (1, 100):
            # Batch-1 passes take milliseconds and vary: they get more repeats.
            m = model_case(preset, b, device, repeats=(3 if quick else 5) * (6 if b == 1 else 1))
            models.append(m)
            log(_model_line(m))
    result = {"environment": environment(device), "ops": ops, "sweeps": sweeps,
              "models": models}
    if device == "cpu":
        result["fma_peak"] = fma_peak.cpu_peak(torch.float32)
    return result


def _sweep_point(batch, size, device, repeats) -> dict:
    gen = torch.Generator().manual_seed(0)
    weight = (0.1 / 3 * torch.randn(12, 12, 3, 3, generator=gen)).to(device)
    y = torch.randn(batch, 12, size, size, generator=gen).to(device)
    padded = F.pad(y, (2, 0, 2, 0))
    sync = _sync(device)
    return {"batch": batch, "size": size,
            "inv_conv2d_ms": summary(timings_ms(lambda: _dispatch.solve(y, weight, "TL"), repeats, sync))["median_ms"],
            "generic_ms": summary(timings_ms(lambda: _dispatch.solve(y, weight, "TL", force_generic=True), repeats, sync))["median_ms"],
            "conv2d_ms": summary(timings_ms(lambda: F.conv2d(padded, weight), repeats, sync))["median_ms"]}


def _op_line(r) -> str:
    b, c, h, w = r["shape"]
    q = r["ratios"]
    extra = "".join(f", {k.split('_over')[0]} {v:.0f}x slower" for k, v in q.items()
                    if k in ("sequential_over_specialized", "per_diagonal_over_specialized"))
    return (f"{b}x{c}x{h}x{w} k={r['kernel']} {r['order']:>4}: inv "
            f"{r['times']['inv_conv2d']['median_ms']:.3f} ms = {q['inv_over_conv']:.2f}x conv, "
            f"fwd+bwd {q['fwd_bwd_inv_over_conv']:.2f}x, generic {q['generic_over_specialized']:.2f}x"
            f"{extra}{_rate_text(r)}; bwd buffer {r['memory']['backward_largest_buffer_over_bchw']:.2f} BCHW")


def _rate_text(r) -> str:
    rate = r.get("useful_rate", {}).get("inv_conv2d")
    if not rate or rate["fraction_of_peak"] is None:
        return ""
    return f", {rate['gflops']:.0f} GFLOP/s = {100 * rate['fraction_of_peak']:.0f}% of FMA peak"


def _model_line(m) -> str:
    t = m["times_ms"]
    return (f"{m['preset']} batch {m['batch']}: sampling IF {t['density']['sampling_ms']:.1f} ms, "
            f"FInC {t['sampling']['sampling_ms']:.1f} ms, Glow {t['glow']['sampling_ms']:.1f} ms; "
            f"density IF {t['density']['density_ms']:.1f} ms, FInC {t['sampling']['density_ms']:.1f} ms")


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"Benchmarks on {env['device']} ({env.get('gpu') or env['processor'] or env['machine']}), "
             f"torch {env['torch']}, {env['date']}, commit {env.get('commit')}", "",
             "| shape | k | order | conv2d ms | inv ms | inv/conv | fwd+bwd ratio | generic/spec | "
             "bwd/fwd | sequential/spec | per-diagonal/spec | dense/spec (4 samples) | bwd buffer/BCHW |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, p=2: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in result["ops"]:
        q, t = r["ratios"], r["times"]
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            "×".join(map(str, r["shape"])), r["kernel"], r["order"],
            fmt(t["conv2d"]["median_ms"], 3), fmt(t["inv_conv2d"]["median_ms"], 3),
            fmt(q["inv_over_conv"]), fmt(q["fwd_bwd_inv_over_conv"]),
            fmt(q["generic_over_specialized"]), fmt(q["backward_over_forward"]),
            fmt(q.get("sequential_over_specialized"), 0), fmt(q["per_diagonal_over_specialized"], 0),
            fmt(q.get("dense_over_specialized_4_samples"), 0),
            fmt(r["memory"]["backward_largest_buffer_over_bchw"])))
    lines += ["", "| preset | batch | IF density ms | IF sampling ms | FInC density ms | "
              "FInC sampling ms | Glow density ms | Glow sampling ms | IF sampling / Glow | "
              "FInC sampling / IF |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        t, q = m["times_ms"], m["ratios"]
        lines.append(f"| {m['preset']} | {m['batch']} | {t['density']['density_ms']:.2f} | "
                     f"{t['density']['sampling_ms']:.2f} | {t['sampling']['density_ms']:.2f} | "
                     f"{t['sampling']['sampling_ms']:.2f} | {t['glow']['density_ms']:.2f} | "
                     f"{t['glow']['sampling_ms']:.2f} | {q['sampling_inverseflow_over_glow']:.2f} | "
                     f"{q['sampling_finc_over_inverseflow']:.2f} |")
    return "\n".join(lines) + "\n"


def plots(result: dict, out: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for key, xlabel in (("size", "image size (H = W)"), ("batch", "batch")):
        points = result["sweeps"][key]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [p[key] for p in points]
        for series, label in (("inv_conv2d_ms", "inv_conv2d (specialized)"),
                              ("generic_ms", "inv_conv2d (generic)"), ("conv2d_ms", "F.conv2d")):
            ax.plot(xs, [p[series] for p in points], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"C=12, k=3, TL, {result['environment']['device']}")
        ax.legend()
        fig.tight_layout()
        path = out / f"time_vs_{key}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    return written


def write(result: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "bench.md").write_text(markdown(result))
    return [str(out / "bench.json"), str(out / "bench.md"), *plots(result, out)]
