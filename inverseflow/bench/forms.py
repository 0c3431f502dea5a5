"""``inverseflow bench --parity``, section ``forms``: every equal form of every op timed side
by side on the parity grid, against the fixed rule's choice (DESIGN §16, issue 25).

For each case the forms are timed by :func:`inverseflow.ops._autotune.measure`, the
measurement of benchmark mode (warm-up, interleaved rounds in a shuffled order, a minimum
time per sample, medians), so the case also shows what benchmark mode would choose. The
figure of merit is ``rule_over_fastest``: the median time of the rule's form over the
fastest form's. The rule must stay within :data:`RULE_BAR` of the fastest on this grid.
"""

from __future__ import annotations

import math
import statistics

import torch

from .. import backends
from ..ops import _autotune, _form_rules, _geometry

RULE_BAR = 1.2
GRID = {"batch": (1, 100), "channels": (4, 12, 48), "size": (4, 8, 16, 32)}
QUICK_GRID = {"batch": (1, 100), "channels": (4, 12), "size": (4, 16)}
ORDERS_2D = ("TL", "TR", "BL", "BR", "quad")
# The 1-D and 3-D orders: a near and a far corner and the group pattern; (batch, channels,
# size) with the size per axis.
ND_CASES = {1: (("L", "R", "pair"), ((1, 16, 64), (32, 16, 256), (32, 48, 64))),
            3: (("NTL", "FBR", "oct"), ((1, 16, 8), (8, 16, 16), (8, 48, 8)))}
WEIGHT_GRAD_SHAPES = ((1, 12, 16), (64, 4, 8), (64, 16, 8), (64, 12, 16), (16, 48, 32))
KERNEL = 3


def _inputs(batch, channels, size, dims, order, dtype, gen):
    groups = 2 ** dims if _geometry.is_group_pattern(order) else 1
    weight = 0.1 / KERNEL * torch.randn(channels, channels // groups, *(KERNEL,) * dims,
                                        generator=gen, dtype=dtype)
    x = torch.randn(batch, channels, *(size,) * dims, generator=gen, dtype=dtype)
    return x, _geometry.masked_weight(weight, order)


def case(op: str, order: str, batch: int, channels: int, size: int, dims: int = 2,
         dtype=torch.float32, device: str = "cpu") -> dict:
    """Every form of ``op`` on one shape: median ms, the fastest, the rule's, benchmark's."""
    gen = torch.Generator().manual_seed(0)
    x, weight_m = _inputs(batch, channels, size, dims, order, dtype, gen)
    x, weight_m = x.to(device), weight_m.to(device)
    if op == "causal_conv":
        forms, args = _geometry.sampling_forms(order, dims, True), (x, weight_m)
    elif op == "causal_conv_adjoint":
        forms, args = _geometry.ADJOINT_GROUP_FORMS, (x, weight_m)
    else:
        shape = tuple(weight_m.shape)
        forms = {name: (lambda a, b, form=form: _geometry._in_batch_chunks(form, a, b, shape,
                                                                            order))
                 for name, form in _geometry.weight_grad_forms(order).items()}
        args = (x, torch.randn(x.shape, generator=gen, dtype=dtype).to(device))
    rule = _form_rules.pick(op, order, forms, args)
    measured, seconds = _autotune.measure(forms, args, prefer=rule)
    ms = {name: s * 1e3 for name, s in seconds.items()}
    fastest = min(ms, key=ms.get)
    return {"op": op, "order": order, "dims": dims, "dtype": str(dtype).removeprefix("torch."),
            "shape": list(x.shape), "median_ms": ms, "rule": rule, "fastest": fastest,
            "benchmark_choice": measured, "rule_over_fastest": ms[rule] / ms[fastest],
            "isa": _form_rules.describe(op, order, args).isa}


def run(quick: bool = False, device: str = "cpu", log=print) -> list[dict]:
    grid = QUICK_GRID if quick else GRID
    cases = []

    def add(*args, **kwargs):
        result = case(*args, device=device, **kwargs)
        cases.append(result)
        log(line(result))

    for batch in grid["batch"]:
        for channels in grid["channels"]:
            for size in grid["size"]:
                for order in ORDERS_2D:
                    add("causal_conv", order, batch, channels, size)
                add("causal_conv_adjoint", "quad", batch, channels, size)
    # (a corner's weight gradient has one form)
    for batch, channels, size in (WEIGHT_GRAD_SHAPES[:2] if quick else WEIGHT_GRAD_SHAPES):
        add("conv_weight_grad", "quad", batch, channels, size)
    for dims, (orders, shapes) in ND_CASES.items():
        for batch, channels, size in (shapes[:1] if quick else shapes):
            for order in orders:
                add("causal_conv", order, batch, channels, size, dims=dims)
            add("conv_weight_grad", orders[-1], batch, channels, size, dims=dims)
            add("causal_conv_adjoint", orders[-1], batch, channels, size, dims=dims)
    if not quick:   # float64: the rule has rows of its own
        for batch, channels, size in ((1, 12, 16), (100, 12, 16), (100, 48, 8)):
            for order in ("TL", "BR", "quad"):
                add("causal_conv", order, batch, channels, size, dtype=torch.float64)
    return cases


def mode_cost(preset: str, batch: int, rounds: int = 7, device: str = "cpu") -> dict:
    """What the default mode gives up against benchmark mode: the sampling pass and a
    training step (forward and backward) of one preset, timed in both modes side by side
    (benchmark mode's choices made first, then the rounds interleave the two modes)."""
    from ..models import from_preset

    torch.manual_seed(0)
    model = from_preset(preset).to(device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, *model.image_shape), dtype=torch.uint8,
                           generator=gen).to(device)
    with torch.no_grad():
        model(images)                       # ActNorm's data-dependent initialisation

    def sampling():
        with torch.no_grad():
            model.sample(batch, generator=torch.Generator().manual_seed(1))

    def training_step():
        model.zero_grad(set_to_none=True)
        model(images, torch.Generator().manual_seed(2)).mean().backward()

    setting = backends.benchmark
    try:
        backends.benchmark = True
        for fn in (sampling, training_step):
            fn()                            # benchmark mode times its forms here
        timed = {}
        for name, fn in (("sampling", sampling), ("training_step", training_step)):
            samples = {"deterministic": [], "benchmark": []}
            for _ in range(rounds):
                for mode in samples:
                    backends.benchmark = mode == "benchmark"
                    start = _autotune.clock()
                    fn()
                    samples[mode].append((_autotune.clock() - start) * 1e3)
            timed[name] = {mode: statistics.median(v) for mode, v in samples.items()}
    finally:
        backends.benchmark = setting
    return {"preset": preset, "batch": batch, "median_ms": timed,
            "default_over_benchmark": {name: t["deterministic"] / t["benchmark"]
                                       for name, t in timed.items()}}


def summarize(cases: list[dict]) -> dict:
    ratios = [c["rule_over_fastest"] for c in cases]
    worst = max(cases, key=lambda c: c["rule_over_fastest"])
    return {"cases": len(cases), "bar": RULE_BAR,
            "cases_within_bar": sum(r <= RULE_BAR for r in ratios),
            "geomean_rule_over_fastest": math.exp(statistics.fmean(math.log(r) for r in ratios)),
            "worst_rule_over_fastest": worst["rule_over_fastest"], "worst_case": _label(worst),
            "rule_is_fastest": sum(c["rule"] == c["fastest"] for c in cases)}


def _label(c: dict) -> str:
    return f"{c['op']} {'x'.join(map(str, c['shape']))} {c['order']} {c['dtype']}"


def line(c: dict) -> str:
    times = ", ".join(f"{name} {ms:.3f}" for name, ms in c["median_ms"].items())
    return (f"forms {_label(c)}: {times} ms; rule {c['rule']} = {c['rule_over_fastest']:.2f}x "
            f"the fastest ({c['fastest']}); benchmark mode picks {c['benchmark_choice']}")
