"""The generated causal-conv kernel (direction ``conv``) against the torch forms, the solve
and a plain ``F.conv2d`` of the same shape, on issue 18's grid (k = 3; B in {1, 100};
C in {4, 12, 48}; H = W in {4, 8, 16, 32}; TL and quad). Round robin, minima of
``--repeats`` calls (the machine is shared: minima move least). Writes JSON.

    python scripts/bench_conv_kernel.py --threads 1 --out conv-kernel.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from inverseflow.ops import _dispatch, _geometry


def _minima_us(fns: dict, repeats: int) -> dict:
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():   # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds * 1e6 for name, seconds in best.items()}


def case(batch: int, channels: int, size: int, order: str, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    dense = 0.1 * torch.randn(channels, channels, 3, 3, generator=gen)
    weight = dense if order == "TL" else dense[:, :channels // 4].contiguous()
    weight_m = _geometry.masked_weight(weight, order)
    torch_form = (_geometry._grouped if order == "quad"
                  else lambda a, w: _geometry._padded_conv(a, w, order))
    with torch.no_grad():
        times = _minima_us({
            "kernel": lambda: _dispatch.solve(x, weight_m, order, _dispatch.CONV),
            "torch_form": lambda: torch_form(x, weight_m),
            "solve": lambda: _dispatch.solve(x, weight_m, order),
            "conv2d": lambda: F.conv2d(x, dense, padding=1)}, repeats)
    return {"shape": [batch, channels, size, size], "order": order, "min_us": times,
            "kernel_over_conv2d": times["kernel"] / times["conv2d"],
            "kernel_over_solve": times["kernel"] / times["solve"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [case(b, c, s, order, args.repeats) for b in (1, 100) for c in (4, 12, 48)
            for s in (4, 8, 16, 32) for order in ("TL", "quad")]
    for row in rows:
        t = row["min_us"]
        print(f"{'x'.join(map(str, row['shape']))} {row['order']}: kernel {t['kernel']:.0f} us, "
              f"torch form {t['torch_form']:.0f}, solve {t['solve']:.0f}, "
              f"conv2d {t['conv2d']:.0f}")
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
