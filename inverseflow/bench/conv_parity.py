"""``inverseflow bench --parity``: how close the ops come to plain convolution (issue 18).

Three sections, every ratio timed side by side in one process, round-robin (one call per
sample with ``torch.utils.benchmark``, medians), so that all sides see the same load:

- ``causal_conv``: ``causal_conv2d`` against ``F.conv2d`` of the same shape (same output
  size and multiply-adds: padding k//2, ``groups=4`` for quad) and against the solve
  ``inv_conv2d``, for every order over a grid of batch, channels and image size;
- ``sampling``: the sampling pass of a preset with the Inverse-Flow placement (a causal
  conv per k×k layer), the FInC placement on the same weights (a solve per layer), and
  Glow (1×1 only);
- ``fwd_bwd``: forward plus backward (input and weight gradients) of ``inv_conv2d``
  against ``F.conv2d``'s, with the peak memory that each backward allocates;
- ``forms``: every equal form of the causal conv, its adjoint and the weight gradient, in
  every order of 1-D, 2-D and 3-D, side by side, with the fixed rule's choice and its ratio
  to the fastest (:mod:`.forms`, DESIGN §16).

Every case records the form the op ran: the rule's by default, or in benchmark mode
(``inverseflow.backends.benchmark``) the measured one.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import from_preset
from ..models.timing import timer
from .. import backends
from ..ops import _autotune, _form_rules, _geometry, causal_conv2d, inv_conv2d
from . import forms as forms_section
from .environment import environment, write_json

ORDERS = ("TL", "TR", "BL", "BR", "quad")
GRID = {"batch": (1, 100), "channels": (4, 12, 48), "size": (4, 8, 16, 32)}
QUICK_GRID = {"batch": (1, 100), "channels": (4, 12), "size": (4, 16)}
KERNEL = 3
PRESETS = ("digits", "mnist")
FWD_BWD_SHAPES = ((64, 12, 16), (16, 48, 32))    # (batch, channels, H = W)
TARGETS = {"causal_over_conv": 1.0, "causal_over_conv_bar": 1.2,
           "sampling_inverseflow_over_glow": 1.1, "sampling_inverseflow_over_glow_bar": 1.3,
           "fwd_bwd_inv_over_conv": 1.2, "fwd_bwd_inv_over_conv_bar": 1.3}


def round_robin(stmts: dict, rounds: int, seed: int = 0, budget_s: float = 30.0,
                min_rounds: int = 5) -> dict:
    """Median ms per call of each statement; each round times one call of every
    statement (after its warm-up), so slow spells of a shared machine hit all.

    The order is shuffled every round, and each sample starts after a short sleep: on a
    loaded machine the statement that follows a long one was otherwise preempted far
    more often (measured: one conv 14 ms after a solve, 1.9 ms after a conv). Slow
    statements stop after ``min_rounds`` once ``budget_s`` is spent.
    """
    timers = {name: timer(fn) for name, fn in stmts.items()}
    samples = {name: [] for name in stmts}
    order = list(timers)
    shuffle = random.Random(seed).shuffle
    start = time.perf_counter()
    for done in range(rounds):
        if done >= min_rounds and time.perf_counter() - start > budget_s:
            break
        shuffle(order)
        for name in order:
            time.sleep(0.002)   # yield, so the sample starts on a fresh time slice
            samples[name].append(timers[name].timeit(1).median * 1e3)
    return {name: {"median_ms": statistics.median(values), "min_ms": min(values),
                   "rounds": len(values)} for name, values in samples.items()}


def _weight(channels: int, order: str, gen, dtype=torch.float32) -> torch.Tensor:
    cg = channels // 4 if order == "quad" else channels
    return 0.1 / KERNEL * torch.randn(channels, cg, KERNEL, KERNEL, generator=gen, dtype=dtype)


def causal_conv_case(batch, channels, size, order, rounds, device="cpu") -> dict:
    gen = torch.Generator().manual_seed(0)
    weight = _weight(channels, order, gen).to(device)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    groups = 4 if order == "quad" else 1
    with torch.no_grad():
        t = round_robin({
            "causal_conv2d": lambda: causal_conv2d(x, weight, order),
            "conv2d": lambda: F.conv2d(x, weight, padding=KERNEL // 2, groups=groups),
            "inv_conv2d": lambda: inv_conv2d(x, weight, order)}, rounds)
    med = {k: v["median_ms"] for k, v in t.items()}
    low = {k: v["min_ms"] for k, v in t.items()}
    weight_m = _geometry.masked_weight(weight, order)
    return {"shape": [batch, channels, size, size], "kernel": KERNEL, "order": order,
            "form": form_ran("causal_conv", order, _geometry.sampling_forms(order, 2, True),
                             (x, weight_m)),
            "times": t,
            "ratios": {"causal_over_conv": med["causal_conv2d"] / med["conv2d"],
                       "causal_over_solve": med["causal_conv2d"] / med["inv_conv2d"],
                       "causal_over_conv_of_minima": low["causal_conv2d"] / low["conv2d"]}}


def sampling_case(preset: str, batch: int, rounds: int, device="cpu") -> dict:
    """Sampling-pass times of one set of weights in both placements, and of Glow."""
    torch.manual_seed(0)
    inverse = from_preset(preset).to(device).eval()
    finc = from_preset(preset).to(device).eval()
    glow = from_preset(preset, model="glow").to(device).eval()
    with torch.no_grad():  # ActNorm's data-dependent init, so the passes are realistic
        images = torch.randint(0, 256, (16, *inverse.image_shape), dtype=torch.uint8).to(device)
        inverse(images)
        glow(images)
    finc.load_state_dict(inverse.state_dict())
    finc.set_solve_on("sampling")
    with torch.no_grad():
        t = round_robin({"inverseflow": lambda: inverse.sample(batch),
                         "finc": lambda: finc.sample(batch),
                         "glow": lambda: glow.sample(batch)}, rounds)
    med = {k: v["median_ms"] for k, v in t.items()}
    return {"preset": preset, "batch": batch, "times": t,
            "ratios": {"sampling_inverseflow_over_glow": med["inverseflow"] / med["glow"],
                       "sampling_finc_over_inverseflow": med["finc"] / med["inverseflow"]}}


def backward_peak_bytes(fn, device="cpu") -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was live when it started."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def fwd_bwd_case(batch, channels, size, order, rounds, device="cpu") -> dict:
    gen = torch.Generator().manual_seed(0)
    weight = _weight(channels, order, gen).to(device).requires_grad_()
    y = torch.randn(batch, channels, size, size, generator=gen).to(device).requires_grad_()
    grad = torch.randn(batch, channels, size, size, generator=gen).to(device)
    groups = 4 if order == "quad" else 1

    def inverse():
        return torch.autograd.grad(inv_conv2d(y, weight, order), (y, weight), grad)

    def conv():
        out = F.conv2d(y, weight, padding=KERNEL // 2, groups=groups)
        return torch.autograd.grad(out, (y, weight), grad)

    t = round_robin({"inv_conv2d_fwd_bwd": inverse, "conv2d_fwd_bwd": conv}, rounds)
    x = inv_conv2d(y, weight, order)
    out = F.conv2d(y, weight, padding=KERNEL // 2, groups=groups)
    bchw_bytes = y.numel() * y.element_size()
    memory = {
        "inv_conv2d_backward_peak_over_bchw": backward_peak_bytes(
            lambda: torch.autograd.grad(x, (y, weight), grad, retain_graph=True), device) / bchw_bytes,
        "conv2d_backward_peak_over_bchw": backward_peak_bytes(
            lambda: torch.autograd.grad(out, (y, weight), grad, retain_graph=True), device) / bchw_bytes}
    med = {k: v["median_ms"] for k, v in t.items()}
    return {"shape": [batch, channels, size, size], "kernel": KERNEL, "order": order, "times": t,
            "memory": memory,
            "weight_grad_form": form_ran("conv_weight_grad", order,
                                         _geometry.weight_grad_forms(order), (y, grad)),
            "ratios": {"fwd_bwd_inv_over_conv": med["inv_conv2d_fwd_bwd"] / med["conv2d_fwd_bwd"],
                       "backward_peak_inv_over_conv": (memory["inv_conv2d_backward_peak_over_bchw"]
                                                       / memory["conv2d_backward_peak_over_bchw"])}}


def form_ran(op: str, order: str, candidates, args) -> str:
    """The form the op ran on ``args``: benchmark mode's remembered choice, else the rule's."""
    if backends.benchmark_active():
        key = _autotune.choice_key(op, order, candidates, args)
        if key in _autotune.choices():
            return _autotune.choices()[key]
    return _form_rules.pick(op, order, candidates, args)


def run(device: str = "cpu", quick: bool = False, log=print, sections=None) -> dict:
    sections = sections or ("causal_conv", "sampling", "fwd_bwd", "forms")
    grid = QUICK_GRID if quick else GRID
    rounds = 5 if quick else 15
    result = {"environment": environment(device), "targets": TARGETS,
              "form_choice": backends.mode()}
    if "causal_conv" in sections:
        result["causal_conv"] = []
        for batch in grid["batch"]:
            for channels in grid["channels"]:
                for size in grid["size"]:
                    for order in ORDERS:
                        r = causal_conv_case(batch, channels, size, order, rounds, device)
                        result["causal_conv"].append(r)
                        log(_causal_line(r))
    if "sampling" in sections:
        result["sampling"] = []
        for preset in (PRESETS[:1] if quick else PRESETS):
            for batch in (1, 100):
                # A batch-100 MNIST pass takes seconds: fewer rounds there.
                big = preset != "digits" and batch > 1
                r = sampling_case(preset, batch, 3 if big or quick else 4 * rounds // 3, device)
                result["sampling"].append(r)
                log(_sampling_line(r))
    if "fwd_bwd" in sections:
        result["fwd_bwd"] = []
        for batch, channels, size in (FWD_BWD_SHAPES[:1] if quick else FWD_BWD_SHAPES):
            for order in ORDERS:
                r = fwd_bwd_case(batch, channels, size, order, rounds, device)
                result["fwd_bwd"].append(r)
                log(_fwd_bwd_line(r))
    if "forms" in sections:
        result["forms"] = forms_section.run(quick, device, log)
        result["mode_cost"] = []
        for preset in (PRESETS[:1] if quick else PRESETS):
            r = forms_section.mode_cost(preset, 100, 3 if quick else 7, device)
            result["mode_cost"].append(r)
            log(f"mode cost {preset} batch 100: default/benchmark "
                + ", ".join(f"{k} {v:.2f}" for k, v in r["default_over_benchmark"].items()))
    result["summary"] = summarize(result)
    return result


def summarize(result: dict) -> dict:
    out = {}
    if result.get("causal_conv"):
        over_conv = [r["ratios"]["causal_over_conv"] for r in result["causal_conv"]]
        over_solve = [r["ratios"]["causal_over_solve"] for r in result["causal_conv"]]
        out["causal_conv"] = {
            "cases": len(over_conv), "median_causal_over_conv": statistics.median(over_conv),
            "max_causal_over_conv": max(over_conv),
            "cases_within_target": sum(r <= TARGETS["causal_over_conv"] for r in over_conv),
            "cases_within_bar": sum(r <= TARGETS["causal_over_conv_bar"] for r in over_conv),
            "cases_slower_than_solve": sum(r > 1 for r in over_solve),
            "median_causal_over_conv_of_minima": statistics.median(
                r["ratios"]["causal_over_conv_of_minima"] for r in result["causal_conv"])}
    if result.get("forms"):
        out["forms"] = forms_section.summarize(result["forms"])
    if result.get("mode_cost"):
        out["default_over_benchmark"] = {f"{r['preset']} batch {r['batch']}":
                                         r["default_over_benchmark"] for r in result["mode_cost"]}
    for key in ("sampling", "fwd_bwd"):
        if result.get(key):
            out[key] = {f"{_label(r)}": r["ratios"] for r in result[key]}
    return out


def _label(r) -> str:
    if "preset" in r:
        return f"{r['preset']} batch {r['batch']}"
    return f"{'x'.join(map(str, r['shape']))} {r['order']}"


def _causal_line(r) -> str:
    t, q = r["times"], r["ratios"]
    return (f"causal {_label(r):>18}: {t['causal_conv2d']['median_ms']:.3f} ms = "
            f"{q['causal_over_conv']:.2f}x conv ({t['conv2d']['median_ms']:.3f}), "
            f"{q['causal_over_solve']:.2f}x solve ({t['inv_conv2d']['median_ms']:.3f})")


def _sampling_line(r) -> str:
    t, q = r["times"], r["ratios"]
    return (f"sampling {_label(r)}: IF {t['inverseflow']['median_ms']:.2f} ms, FInC "
            f"{t['finc']['median_ms']:.2f} ms, Glow {t['glow']['median_ms']:.2f} ms; IF/Glow "
            f"{q['sampling_inverseflow_over_glow']:.2f}, FInC/IF "
            f"{q['sampling_finc_over_inverseflow']:.2f}")


def _fwd_bwd_line(r) -> str:
    t, q, m = r["times"], r["ratios"], r["memory"]
    return (f"fwd+bwd {_label(r)}: inv {t['inv_conv2d_fwd_bwd']['median_ms']:.3f} ms, conv "
            f"{t['conv2d_fwd_bwd']['median_ms']:.3f} ms = {q['fwd_bwd_inv_over_conv']:.2f}x; "
            f"backward peak {m['inv_conv2d_backward_peak_over_bchw']:.2f} vs "
            f"{m['conv2d_backward_peak_over_bchw']:.2f} BCHW; weight grad {r['weight_grad_form']}")


def write(result: dict, out: Path) -> Path:
    return write_json(result, out, "parity.json")
