"""What the InvConv2d growth statistic (max|x| / max|y| per solve) costs per training step.

``python -m inverseflow.bench.growth_cost [--out FILE.json] [--repeats N]`` times one
optimizer step (forward, backward, Adam) of preset models with the statistic off and on,
plus the monitor's per-step read-out, with ``torch.utils.benchmark``.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils import benchmark

from ..models import from_preset
from ..nn import InvConv2d
from .environment import environment

# (preset, batch, overrides): the quick-start model and the paper's MNIST model.
CASES = [("digits", 64, {}), ("mnist", 16, {})]


def _step_fn(model, batch: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, *model.image_shape), generator=gen, dtype=torch.uint8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.initialize(x, torch.Generator().manual_seed(1))
    layers = [m for m in model.modules() if isinstance(m, InvConv2d)]

    def step(record: bool):
        for layer in layers:
            layer.record_growth = record
        loss = model(x, torch.Generator().manual_seed(2)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if record:   # what the training loop's GrowthMonitor.peak does each step
            values = [layer.last_growth for layer in layers]
            for layer in layers:
                layer.last_growth = None
            float(torch.stack(values).max())
    return step, len(layers)


def _statistic_ms(model, batch: int, repeats: int) -> float:
    """The statistic's own reductions, timed on every solve's real shape and summed: the
    step-to-step noise of a shared CPU is larger than the whole overhead."""
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape))
             for m in model.modules() if isinstance(m, InvConv2d)]
    with torch.no_grad():
        model(torch.zeros(batch, *model.image_shape, dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    total = 0.0
    for shape in shapes:
        y, x = torch.randn(shape), torch.randn(shape)
        timer = benchmark.Timer(
            stmt="x.abs().amax() / y.abs().amax().clamp_min(1e-38)",
            globals={"x": x, "y": y}, num_threads=torch.get_num_threads())
        total += timer.timeit(max(20, repeats * 10)).median * 1e3
    return total


def run(repeats: int = 10) -> dict:
    rows = []
    for preset, batch, overrides in CASES:
        torch.manual_seed(0)
        model = from_preset(preset, **overrides)
        step, n_layers = _step_fn(model, batch)
        step(False)
        step(True)   # warm-up
        medians = {}
        for record in (False, True, False, True):   # interleaved, to share drift
            timer = benchmark.Timer(stmt="step(record)",
                                    globals={"step": step, "record": record},
                                    num_threads=torch.get_num_threads())
            medians.setdefault(record, []).append(timer.timeit(repeats).median * 1e3)
        off, on = min(medians[False]), min(medians[True])
        statistic_ms = _statistic_ms(model, batch, repeats)
        rows.append({"preset": preset, "batch": batch, "invconv_layers": n_layers,
                     "step_ms_off": off, "step_ms_on": on, "overhead_ms": on - off,
                     "overhead_percent": 100 * (on - off) / off,
                     "statistic_alone_ms": statistic_ms,
                     "statistic_alone_percent": 100 * statistic_ms / off})
    return {"environment": environment("cpu"), "repeats": repeats, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="also write the figures as JSON")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int,
                        help="torch threads (on a loaded machine, 1 avoids OpenMP spin-wait "
                             "contention that can slow a step 100x)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.repeats)
    for r in result["rows"]:
        print(f"{r['preset']:>7} batch {r['batch']:3} ({r['invconv_layers']} InvConv2d): "
              f"step {r['step_ms_off']:8.2f} ms off, {r['step_ms_on']:8.2f} ms on "
              f"({r['overhead_percent']:+.1f}%); the statistic alone "
              f"{r['statistic_alone_ms']:.3f} ms ({r['statistic_alone_percent']:.2f}%)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
