"""Issue 28's GPU check of the Triton backend, in one run (DESIGN §18).

- parity: Triton against the CUDA kernel against the CPU kernel, every direction, for TL
  and quad (B=256, C=12, 16x16, k=3, float32), and float64 on a small batch;
- timing: the Triton solve and conv against the CUDA kernel and against cuDNN's conv2d of
  the same shape, medians of CUDA-event timings, the forms interleaved round by round.

Writes JSON to --out. ``--device cpu`` (with TRITON_INTERPRET=1) is a dry run of the same
code on tiny shapes, without the CUDA module and without timings.

    python scripts/triton_gpu_check.py --out $OUT/triton_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from inverseflow.ops import _backends, _dispatch, _geometry

DIRECTIONS = {"solve": _dispatch.SOLVE, "transposed": _dispatch.TRANSPOSED,
              "conv": _dispatch.CONV}


def on(backend, fn):
    _backends.set_backend(backend)
    try:
        return fn()
    finally:
        _backends.set_backend(None)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def parity(device, shape, order, dtype, backends):
    batch, channels, height, width = shape
    g = torch.Generator().manual_seed(28)
    groups = 4 if order == "quad" else 1
    weight = (0.1 / 3 * torch.randn(channels, channels // groups, 3, 3, generator=g)).to(dtype)
    data = torch.randn(batch, channels, height, width, generator=g).to(dtype)
    out = {}
    for name, direction in DIRECTIONS.items():
        ref = on("cpu", lambda: _dispatch.solve(data, weight, order, direction)[0])
        results = {b: on(b, lambda: _dispatch.solve(data.to(device), weight.to(device), order,
                                                    direction)) for b in backends}
        out[name] = {b: {"kernel": kname, "rel_err_vs_cpu": rel_err(x.cpu(), ref)}
                     for b, (x, kname) in results.items()}
        if "cuda" in results:
            out[name]["rel_err_triton_vs_cuda"] = rel_err(results["triton"][0],
                                                         results["cuda"][0])
    return out


def timings(shape, order, rounds=30):
    batch, channels, height, width = shape
    groups = 4 if order == "quad" else 1
    weight = 0.1 / 3 * torch.randn(channels, channels // groups, 3, 3, device="cuda")
    data = torch.randn(*shape, device="cuda")
    weight_m = _geometry.masked_weight(weight, order)
    forms = {
        "triton_solve": lambda: on("triton", lambda: _dispatch.solve(data, weight, order)),
        "cuda_solve": lambda: on("cuda", lambda: _dispatch.solve(data, weight, order)),
        "triton_conv": lambda: on("triton", lambda: _dispatch.solve(data, weight, order,
                                                                    _dispatch.CONV)),
        "cuda_conv": lambda: on("cuda", lambda: _dispatch.solve(data, weight, order,
                                                                _dispatch.CONV)),
        "cudnn_conv2d": lambda: F.conv2d(F.pad(data, (2, 0, 2, 0)), weight_m, groups=groups),
    }
    times = {name: [] for name in forms}
    for fn in forms.values():   # compile and warm up
        fn(); fn()
    for _ in range(rounds):
        for name, fn in forms.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"median_ms": med, "rounds": rounds,
            "triton_solve_over_cuda_solve": med["triton_solve"] / med["cuda_solve"],
            "triton_solve_over_cudnn": med["triton_solve"] / med["cudnn_conv2d"],
            "cuda_solve_over_cudnn": med["cuda_solve"] / med["cudnn_conv2d"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    gpu = args.device == "cuda"
    report = {"device": torch.cuda.get_device_name() if gpu else "cpu (Triton interpreter)",
              "torch": torch.__version__, "triton": _backends.triton_version()}
    backends = ("triton", "cuda") if gpu else ("triton",)
    big, small = ((256, 12, 16, 16), (8, 12, 16, 16)) if gpu else ((2, 4, 3, 4), (1, 4, 3, 3))
    for order in ("TL", "quad"):
        report[f"parity_{order}_f32"] = parity(args.device, big, order, torch.float32, backends)
        report[f"parity_{order}_f64"] = parity(args.device, small, order, torch.float64,
                                               backends)
        if gpu:
            report[f"timing_{order}_f32"] = timings(big, order)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
