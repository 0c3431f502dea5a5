"""Which of several equivalent implementations is fastest for a shape, timed once per
shape on first use, the way ``torch.backends.cudnn.benchmark`` picks conv algorithms.

Used where the fastest form depends on the machine's convolution library, not on the
math: quad's causal conv (DESIGN §15) is one grouped convolution, one dense convolution
with a block-diagonal weight, or four convolutions, and which wins changed with channels,
batch and CPU (oneDNN's grouped kernel took 23 ms where four dense ones took 3 ms).
"""

from __future__ import annotations

import time

import torch

REPEATS = 3
_choices: dict[tuple, str] = {}


def fastest(tag: str, candidates: dict, *args: torch.Tensor) -> str:
    """Name of the fastest of ``candidates`` (name -> fn) on ``args``; measured on the
    first call for a shape (each candidate once to warm up, then the best of
    ``REPEATS``), remembered after."""
    first = args[0]
    key = (tag, first.device, first.dtype, torch.get_num_threads(),
           *(tuple(a.shape) for a in args))
    choice = _choices.get(key)
    if choice not in candidates:   # first use, or a tag reused with other candidates
        choice = _choices[key] = _measure(candidates, args, first.device)
    return choice


def _measure(candidates: dict, args, device: torch.device) -> str:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = dict.fromkeys(candidates, float("inf"))
    with torch.no_grad():
        for fn in candidates.values():
            fn(*args)
        for _ in range(REPEATS):
            for name, fn in candidates.items():
                sync()
                start = time.perf_counter()
                fn(*args)
                sync()
                best[name] = min(best[name], time.perf_counter() - start)
    return min(best, key=best.get)


def choices() -> dict:
    """What was chosen so far (for benchmarks and bug reports)."""
    return dict(_choices)
