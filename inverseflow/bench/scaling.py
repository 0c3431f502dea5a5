"""``inverseflow bench --scaling``: how one training step of an inverse-convolution stack
scales with the image size (the paper's Figure 4).

One step is the forward and backward pass of four inverse convolutions in a row, orders
TL, TR, BL, BR (C channels, k×k, batch B), with loss ``Σ x²``, over image sides 8..128
(n = side² pixels), for three ways of computing the inverse and its gradients:

- ``ours``: :func:`inverseflow.inv_conv2d` (the compiled solve; its backward is one
  transposed solve plus a standard conv weight gradient);
- ``dense``: the O(n³) way, Gaussian elimination: build each layer's dense (C·n)×(C·n)
  matrix from the weight and let autograd differentiate ``torch.linalg.solve`` (an LU
  factorisation), while it fits in ``dense_max`` rows;
- ``sequential``: one pixel at a time in raster order, forward and backward (the
  transposed solve run pixel by pixel in the opposite corner), pure PyTorch.

With ``dims=3`` (``bench --scaling --dims 3``) the same study runs on cubes m×m×m
(n = m³ voxels): a stack of eight inverse convolutions, one per corner NTL … FBR, k×k×k,
``ours`` being :func:`inverseflow.inv_conv3d` and the two baselines those of
:mod:`inverseflow.bench.baselines_nd`. Each row records the solve's dependent steps, D + H +
W − 2 for a cube (the CUDA wavefront's planes; the CPU kernel solves in raster order with
the samples in SIMD lanes), against the sequential solver's n.

A method is dropped for larger sides once one step takes longer than ``max_step_s``. Each
method's slope is the least-squares fit of log(time) against log(n) over its largest
``fit_points`` sides (small sides measure fixed overheads, not growth).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.timing import timings_ms
from ..ops import _geometry, inv_conv2d, inv_conv3d
from ..ops._validate import CORNERS_BY_DIMS
from . import baselines, baselines_nd
from .environment import environment

ORDERS = ("TL", "TR", "BL", "BR")
SIDES = (8, 12, 16, 24, 32, 48, 64, 96, 128)
SIDES_3D = (4, 6, 8, 12, 16, 24)
OPPOSITE = {"TL": "BR", "TR": "BL", "BL": "TR", "BR": "TL"}


class _SequentialInverse(torch.autograd.Function):
    """``x = T⁻¹ y`` by raster-order substitution, with a backward of the same kind:
    ``g_y = T⁻ᵀ g`` (DESIGN §2). Tᵀ of a corner's causal conv is the causal conv of the
    opposite corner with the flipped, channel-transposed kernel; reversing the channel
    order makes its centre unit *lower* triangular again, so the same solver runs it."""

    @staticmethod
    def forward(ctx, y, weight, order):
        x = baselines.sequential_solve(y, weight, order)
        ctx.save_for_backward(x, weight)
        ctx.order = order
        return x

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        order = ctx.order
        kh, kw = weight.shape[2:]
        wm = _geometry.masked_weight(weight, order)
        adjoint = wm.flip(0, 1, 2, 3).transpose(0, 1)     # channels reversed, taps flipped
        g_y = baselines.sequential_solve(grad.flip(1), adjoint, OPPOSITE[order]).flip(1)
        g_w = -torch.nn.grad.conv2d_weight(F.pad(x, _geometry.padding(order, (kh, kw))),
                                           weight.shape, g_y)
        return g_y, _geometry.mask_gradient(g_w, order), None


def sequential_inv_conv2d(y, weight, order="TL"):
    """Differentiable pixel-by-pixel inverse (single corners only): the slow baseline."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} for the sequential baseline, got {order!r}")
    return _SequentialInverse.apply(y, weight, order)


def dense_inv_conv2d(y, weight, order="TL"):
    """Differentiable dense inverse: the (C·H·W)² matrix built from ``weight`` and solved by
    LU (Gaussian elimination); autograd's backward is the O(n³)-per-factorisation one."""
    matrix = baselines.dense_matrix(weight, order, tuple(y.shape[1:]))
    return torch.linalg.solve(matrix, y.reshape(y.shape[0], -1).T).T.reshape(y.shape)


METHODS = {"ours": inv_conv2d, "dense": dense_inv_conv2d, "sequential": sequential_inv_conv2d}
METHODS_3D = {"ours": inv_conv3d, "dense": baselines_nd.dense_inv_conv,
              "sequential": baselines_nd.sequential_inv_conv}
# Per dimension: the stack's orders (every corner), the methods and the default sides.
SETUPS = {2: (ORDERS, METHODS, SIDES), 3: (CORNERS_BY_DIMS[3], METHODS_3D, SIDES_3D)}


def training_step(method, y, weights, orders=ORDERS) -> None:
    """Forward and backward of the stack (one layer per order); leaves the gradients in
    ``weights``."""
    x = y
    for weight, order in zip(weights, orders):
        x = method(x, weight, order)
    loss = x.square().sum()
    for w in weights:
        w.grad = None
    loss.backward()


def _case(side, batch, channels, kernel, device, dtype, seed=0, dims=2):
    gen = torch.Generator().manual_seed(seed + side)
    # 0.1/k per tap in 2-D; 0.1/k² in 3-D keeps the 26-tap stack's growth bound below 1.
    scale = 0.1 / kernel ** (dims - 1)
    weights = [(scale * torch.randn(channels, channels, *(kernel,) * dims, generator=gen,
                                    dtype=dtype)).to(device).requires_grad_()
               for _ in SETUPS[dims][0]]
    y = torch.randn(batch, channels, *(side,) * dims, generator=gen, dtype=dtype).to(device)
    return y, weights


def fit_slope(points: list[tuple[int, float]], fit_points: int) -> float | None:
    """Least-squares slope of log(ms) against log(n) over the ``fit_points`` largest n."""
    points = sorted(points)[-fit_points:]
    if len(points) < 2:
        return None
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def run(device: str = "cpu", sides=None, batch: int = 4, channels: int = 2, kernel: int = 3,
        methods=tuple(METHODS), repeats: int = 7, dense_max: int = 4608,
        max_step_s: float = 20.0, fit_points: int = 4, progress=print, dims: int = 2) -> dict:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    if dims not in SETUPS:
        raise ValueError(f"dims must be one of {sorted(SETUPS)}, got {dims!r}")
    orders, method_table, default_sides = SETUPS[dims]
    sides = default_sides if sides is None else sides
    for name in methods:
        if name not in method_table:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_table)}")
    dtype = torch.float32
    results = {name: [] for name in methods}
    skipped = {name: None for name in methods}
    for side in sorted(sides):
        y, weights = _case(side, batch, channels, kernel, device, dtype, dims=dims)
        n = side ** dims
        for name in methods:
            if skipped[name]:
                continue
            if name == "dense" and channels * n > dense_max:
                skipped[name] = f"C·n = {channels * n} > dense_max = {dense_max} rows"
                continue
            step = lambda: training_step(method_table[name], y, weights, orders)   # noqa: E731
            first = timings_ms(step, 1)[0]
            samples = [first] if first > 1e3 else timings_ms(step, repeats)
            ms = statistics.median(samples)
            results[name].append({"side": side, "n": n, "median_ms": ms,
                                  "repeats": len(samples),
                                  # the wavefront's planes; the sequential solver takes n
                                  "dependent_steps": dims * (side - 1) + 1})
            progress(f"side {side:4d}  {name:10s} {ms:12.2f} ms")
            if ms > max_step_s * 1e3:
                skipped[name] = f"one step took {ms / 1e3:.1f} s > max_step_s = {max_step_s} s"
    slopes = {name: fit_slope([(r["n"], r["median_ms"]) for r in rows], fit_points)
              for name, rows in results.items()}
    return {"environment": environment(device), "device": device, "dims": dims, "batch": batch,
            "channels": channels, "kernel": kernel, "orders": list(orders), "dtype": "float32",
            "results": results, "slopes_vs_n": slopes, "over_ours": over_ours(results),
            "fit_points": fit_points, "stopped": skipped}


def over_ours(results: dict) -> dict:
    """Per baseline, its time over ours at every side both measured."""
    ours = {r["side"]: r["median_ms"] for r in results.get("ours", [])}
    return {name: [{"side": r["side"], "ratio": r["median_ms"] / ours[r["side"]]}
                   for r in rows if r["side"] in ours]
            for name, rows in results.items() if name != "ours"}


def plot(result: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, rows in result["results"].items():
        if not rows:
            continue
        slope = result["slopes_vs_n"][name]
        label = f"{name} (slope {slope:.2f})" if slope is not None else name
        ax.loglog([r["n"] for r in rows], [r["median_ms"] for r in rows], "o-", label=label)
    dims = result.get("dims", 2)
    ax.set_xlabel("n = image side² (pixels)" if dims == 2 else "n = cube side³ (voxels)")
    ax.set_ylabel("one training step (fwd + bwd), ms")
    ax.set_title(f"{len(result['orders'])} inverse convs ({', '.join(result['orders'])}), "
                 f"C={result['channels']}, k={result['kernel']}, B={result['batch']}, "
                 f"{result['device']}", **({"fontsize": 9} if dims == 3 else {}))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(result: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = "scaling" if result.get("dims", 2) == 2 else f"scaling_{result['dims']}d"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # The JSON holds every figure; a long run must not end in a traceback for the plot.
        print("bench --scaling: matplotlib is missing, so no plot was drawn; "
              "pip install 'inverseflow[bench]' to get scaling.png", file=sys.stderr)
        return [json_path]
    return [json_path, plot(result, out / f"{stem}.png")]
