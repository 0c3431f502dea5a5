"""Issue 27's check at the default thread count: every corner against TL in each direction,
and the generic kernel against the specialized one, as medians of paired alternating ratios
(each side timed over a few calls, one after the other, so that both see the same load).

    .venv/bin/python scripts/bench_corners.py
"""

import statistics
import time

import torch

from inverseflow.ops import _dispatch

PAIRS = 9
CALLS = 3


def seconds_per_call(fn) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    return (time.perf_counter() - start) / CALLS


def median_ratio(slow, base) -> float:
    return statistics.median(seconds_per_call(slow) / seconds_per_call(base)
                             for _ in range(PAIRS))


def main() -> None:
    print(f"{torch.get_num_threads()} threads")
    for batch, channels, size in ((100, 12, 16), (64, 48, 16)):
        y = torch.randn(batch, channels, size, size)
        w = 0.03 * torch.randn(channels, channels, 3, 3)
        for direction, name in ((_dispatch.SOLVE, "solve"), (_dispatch.TRANSPOSED, "transposed"),
                                (_dispatch.CONV, "conv")):
            ratios = [f"{corner} {median_ratio(lambda: _dispatch.solve(y, w, corner, direction), lambda: _dispatch.solve(y, w, 'TL', direction)):.3f}"
                      for corner in ("TR", "BL", "BR")]
            print(f"{batch}x{channels}x{size}^2 {name}: corner/TL " + ", ".join(ratios))
    for batch, channels, size in ((64, 12, 16), (64, 48, 16)):
        y = torch.randn(batch, channels, size, size)
        w = 0.03 * torch.randn(channels, channels, 3, 3)
        ratio = median_ratio(lambda: _dispatch.solve(y, w, "TL", force_generic=True),
                             lambda: _dispatch.solve(y, w, "TL"))
        print(f"{batch}x{channels}x{size}^2 generic/specialized solve TL: {ratio:.3f}")


if __name__ == "__main__":
    main()
