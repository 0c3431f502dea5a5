"""``inverseflow bench --nd``: the 1-D and 3-D solves against ``F.conv1d`` / ``F.conv3d``.

For each shape, timed round-robin in one process (:func:`conv_parity.round_robin`, medians):

- ``conv``: ``F.conv1d`` / ``F.conv3d`` of the same shape (the input padded at the corner
  beforehand, the same weight, ``groups`` = 2^d for the group pattern): the same output
  size and multiply-adds as the causal convolution whose inverse is solved;
- ``op``: the public op :func:`inverseflow.inv_conv1d` / :func:`inverseflow.inv_conv3d`
  (argument checks and dispatch included);
- ``solve``, ``transposed``, ``generic``: the kernel through ``_dispatch.solve``: the
  solve, the transposed solve (the backward's) and the generic run-time-shape kernel.

The layers of codegen/specs.toml that have 1-D and 3-D specializations are measured, and
one shape per dimension that has none (the generic kernel serves it). Each result records
the kernel that ran and the residual ``max |causal_conv(x) − y|`` of the op's output.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..ops import _dispatch, _geometry, causal_conv1d, causal_conv3d, inv_conv1d, inv_conv3d
from ..ops._validate import GROUP_PATTERN
from .conv_parity import round_robin
from .environment import environment, write_json

OPS = {1: (inv_conv1d, causal_conv1d), 3: (inv_conv3d, causal_conv3d)}
# (channels, kernel, order, spatial size): the specialized layers, then one generic shape.
SHAPES = {1: ((8, (3,), "L", (512,)), (8, (3,), "pair", (512,)), (16, (5,), "L", (512,)),
              (12, (4,), "R", (512,))),
          3: ((4, (3, 3, 3), "NTL", (16, 16, 16)), (8, (3, 3, 3), "NTL", (16, 16, 16)),
              (8, (2, 2, 2), "oct", (16, 16, 16)), (6, (3, 3, 3), "FBR", (16, 16, 16)))}
BATCHES = {1: (8, 64), 3: (2, 16)}
QUICK_SHAPES = {1: SHAPES[1][:1] + SHAPES[1][-1:], 3: SHAPES[3][:1] + SHAPES[3][-1:]}
QUICK_BATCHES = {1: (8,), 3: (2,)}
STATEMENTS = ("conv", "op", "solve", "transposed", "generic")


def case(batch, channels, kernel, order, size, rounds, dtype=torch.float32) -> dict:
    dims = len(kernel)
    inverse, causal = OPS[dims]
    gen = torch.Generator().manual_seed(0)
    groups = 2 ** dims if order == GROUP_PATTERN[dims] else 1
    taps = 1
    for k in kernel:
        taps *= k
    # A small per-tap scale keeps the stack's growth bound below 1 (a stable inverse).
    weight = 0.5 / taps * torch.randn(channels, channels // groups, *kernel, generator=gen,
                                      dtype=dtype)
    y = torch.randn(batch, channels, *size, generator=gen, dtype=dtype)
    corner = _geometry.groups(order, channels, dims)[0][0]
    padded = F.pad(y, _geometry.padding(corner, kernel))
    conv = _geometry.CONV[dims]
    with torch.no_grad():
        x = inverse(y, weight, order)
        residual = (causal(x, weight, order) - y).abs().max().item()
        kernel_used = _dispatch.solve(y, weight, order)[1]
        t = round_robin({
            "conv": lambda: conv(padded, weight, groups=groups),
            "op": lambda: inverse(y, weight, order),
            "solve": lambda: _dispatch.solve(y, weight, order),
            "transposed": lambda: _dispatch.solve(y, weight, order, _dispatch.TRANSPOSED),
            "generic": lambda: _dispatch.solve(y, weight, order, force_generic=True)}, rounds)
    return {"dims": dims, "shape": [batch, channels, *size], "kernel": list(kernel),
            "order": order, "dtype": str(dtype).removeprefix("torch."),
            "kernel_used": kernel_used, "residual_max_abs": residual, "times": t,
            "ratios": _ratios({k: v["median_ms"] for k, v in t.items()}),
            # A busy machine preempts whole time slices into single calls; the ratio of
            # minima shows the kernels' own speed where that dominates the medians.
            "ratios_of_minima": _ratios({k: v["min_ms"] for k, v in t.items()})}


def _ratios(ms: dict) -> dict:
    return {"solve_over_conv": ms["solve"] / ms["conv"], "op_over_conv": ms["op"] / ms["conv"],
            "transposed_over_conv": ms["transposed"] / ms["conv"],
            "generic_over_solve": ms["generic"] / ms["solve"]}


def run(quick: bool = False, log=print, dims=(1, 3)) -> dict:
    rounds = 5 if quick else 31
    shapes, batches = (QUICK_SHAPES, QUICK_BATCHES) if quick else (SHAPES, BATCHES)
    cases = []
    for d in dims:
        for channels, kernel, order, size in shapes[d]:
            for batch in batches[d]:
                r = case(batch, channels, kernel, order, size, rounds)
                cases.append(r)
                log(_line(r))
    return {"environment": environment("cpu"), "rounds": rounds, "cases": cases}


def _label(r) -> str:
    return (f"{'x'.join(map(str, r['shape']))} k={'x'.join(map(str, r['kernel']))} "
            f"{r['order']}")


def _line(r) -> str:
    t, q = r["times"], r["ratios"]
    return (f"{_label(r):>32}: solve {t['solve']['median_ms']:.3f} ms = "
            f"{q['solve_over_conv']:.2f}x conv ({t['conv']['median_ms']:.3f} ms; of minima "
            f"{r['ratios_of_minima']['solve_over_conv']:.2f}x), op "
            f"{q['op_over_conv']:.2f}x, transposed {q['transposed_over_conv']:.2f}x, generic "
            f"{q['generic_over_solve']:.2f}x solve [{r['kernel_used']}]")


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"1-D and 3-D solves on {env['device']} ({env['processor'] or env['machine']}, "
             f"threads: {env['threads']}), torch {env['torch']}, {env['date']}; medians of "
             f"{result['rounds']} round-robin rounds", "",
             "(ratio of medians; of minima in brackets)", "",
             "| shape | k | order | kernel | conv ms | solve ms | solve/conv | op/conv | "
             "transposed/conv | generic/solve |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["cases"]:
        t, q, m = r["times"], r["ratios"], r["ratios_of_minima"]
        both = {k: f"{q[k]:.2f} ({m[k]:.2f})" for k in q}
        lines.append(
            f"| {'×'.join(map(str, r['shape']))} | {'×'.join(map(str, r['kernel']))} | "
            f"{r['order']} | {'generic' if r['kernel_used'] == 'generic' else 'specialized'} | "
            f"{t['conv']['median_ms']:.3f} | {t['solve']['median_ms']:.3f} | "
            f"{both['solve_over_conv']} | {both['op_over_conv']} | "
            f"{both['transposed_over_conv']} | {both['generic_over_solve']} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> list[Path]:
    json_path = write_json(result, out, "nd.json")
    md_path = out / "nd.md"
    md_path.write_text(markdown(result))
    return [json_path, md_path]
