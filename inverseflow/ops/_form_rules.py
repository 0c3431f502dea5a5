"""The fixed rule that picks one of an op's equal forms (DESIGN §16), like cuDNN's heuristics
with ``torch.backends.cudnn.benchmark = False``: from what is known without a clock (the op,
whether the order is a corner or a group pattern, the dimension, the device, the dtype, the
shapes, and the CPU's instruction set). Whether a layer shape has a specialized kernel is not
among them: since issue 27 every corner and group pattern of a listed group size is
specialized, and the generic kernel runs within about 1.1× of it (1.07 at 64×12×16², two
threads; docs/benchmarks.md, issue 27).
Same inputs, same form, in every process: so the same command gives the same bits.

The table :data:`RULES` is the whole rule. Its rows are read top to bottom; the first row of
the op and pattern kind whose condition holds and whose form is a candidate wins. Every
(op, kind) ends with an unconditional row. Each row says where it comes from: the
measurement (``inverseflow bench --parity``, section ``forms``, JSON under
docs/results/forms-*) or the reason where nothing was measured (no GPU has been lent).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import torch

# The ops that have equal forms (the names :func:`._autotune.choose` is called with).
OPS = ("causal_conv", "causal_conv_adjoint", "conv_weight_grad")


@dataclasses.dataclass(frozen=True)
class Case:
    """What the rule may look at: no timing, nothing that differs between processes."""

    op: str
    group_pattern: bool   # pair/quad/oct (2^d channel groups) rather than one corner
    dims: int
    device: str           # "cpu" or "cuda"
    dtype: torch.dtype
    batch: int
    channels: int
    positions: int        # pixels (voxels) per channel: the product of the spatial sizes
    isa: str              # the CPU's vector instruction set as oneDNN sees it ("AVX512")

    @property
    def group_channels(self) -> int:
        return self.channels // (2 ** self.dims if self.group_pattern else 1)

    @property
    def bytes(self) -> int:
        return self.batch * self.channels * self.positions * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class Rule:
    op: str
    group_pattern: bool | None   # None: either kind
    form: str
    when: Callable[[Case], bool]
    source: str


def _always(case: Case) -> bool:
    return True


# The table. "Grid" is `inverseflow bench --parity`'s forms section, measured 2026-12-05 on
# an AMD EPYC (Zen 4, AVX-512, 2 cores) with the machine quiet, 2 threads, float32 unless
# said (docs/results/forms-2026-12-05/, docs/benchmarks.md "Issue 25"); ratios are medians,
# the losing form over the winning one. No GPU has been lent: the CUDA rows are reasoned, not
# measured, and say so.
RULES: tuple[Rule, ...] = (
    # -- the causal convolution (the sampling pass) --
    Rule("causal_conv", False, "padded_conv",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): cuDNN's convolution, the plain torch form"),
    Rule("causal_conv", True, "grouped",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): one grouped cuDNN call rather than 2^d launches"),
    Rule("causal_conv", True, "kernel", _always,
         "grid: one pass for every group beats 2^d convolutions and a concatenation at "
         "every quad and pair row (100x12x16x16 quad 0.35 ms against 1.15 per group) and "
         "oct (at most 1.03x per group's time at 8x16x16^3)"),
    # (without the kernel: a masked tangent's Ṫx, forward-mode AD of the solve)
    Rule("causal_conv", True, "grouped",
         lambda c: c.batch > 1 and (c.group_channels <= 1 or c.dims == 1),
         "grid, per_group and grouped columns: over a batch one grouped call wins at one "
         "channel a group (100x4x16x16 quad 0.38 ms against 0.77) and for pair (32x16x256 "
         "0.19 against 0.29)"),
    Rule("causal_conv", True, "per_group", _always,
         "grid, per_group and grouped columns: at batch 1 and with more channels a group "
         "the 2^d dense calls win (100x12x16x16 quad 1.15 ms against 1.76)"),
    Rule("causal_conv", False, "kernel",
         lambda c: c.dims == 2 and (c.dtype == torch.float64 or c.group_channels <= 12),
         "grid: in 2-D up to 12 channels the kernel wins or ties (100x4x32x32 0.55-0.71 ms "
         "against 1.06-1.38; 100x12x16x16 1.07-1.10x the padded conv, the worst), and in "
         "float64 everywhere (oneDNN's float64 path: 100x12x16x16 1.0 ms against 3.4)"),
    Rule("causal_conv", False, "padded_conv", _always,
         "grid: at 48 channels oneDNN's convolution wins (1x48x8x8 1.5-2.1x, 100x48x8x8 "
         "1.4x; at 100x48x32x32 it is 1.08x the kernel), and in 1-D and 3-D (1x16x64 L: "
         "1.85x; 8x48x8^3: 3.3x; 32x16x256 L: the kernel 1.17x faster)"),
    # -- its adjoint (forward-mode AD of the transposed solve); corners have one form --
    Rule("causal_conv_adjoint", True, "grouped",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): one grouped cuDNN call rather than 2^d launches"),
    Rule("causal_conv_adjoint", True, "grouped",
         lambda c: c.dims == 3,
         "grid: every oct row (8x16x16^3: 7.3 ms against 18.2 per group)"),
    Rule("causal_conv_adjoint", True, "per_group",
         lambda c: c.batch == 1 and c.channels * c.positions < 8192,
         "grid: at batch 1 below 8192 values the 2^d small calls beat the grouped call's "
         "set-up (1x4x4x4 quad 0.056 ms against 0.103); over a batch they do not (100x4x4x4 "
         "0.49 against 0.16)"),
    Rule("causal_conv_adjoint", True, "per_group",
         lambda c: c.group_channels >= 12 and c.batch * c.positions >= 25600,
         "grid: with 12 channels a group over 25600 pixels oneDNN's grouped transposed "
         "convolution falls behind (100x48x32x32: 20.9 ms per group against 29.5)"),
    Rule("causal_conv_adjoint", True, "grouped", _always,
         "grid: otherwise one grouped call (100x12x16x16 quad 1.7 ms against 2.6)"),
    # -- the weight gradient (the backward of every solve); corners have one form --
    Rule("conv_weight_grad", True, "padded",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): the form with the fewest multiply-adds"),
    Rule("conv_weight_grad", True, "block_diagonal",
         lambda c: c.bytes <= _weight_grad_chunk_bytes(),
         "grid: while the input fits one chunk (512 KiB, no batch chunks) the one dense "
         "call beats 2^d small ones despite 2^d x the multiply-adds (64x4x8x8 quad 0.21 ms "
         "against 0.52, 32x16x256 pair 0.27 against 0.33, 1x16x8^3 oct 0.33 against 0.42)"),
    Rule("conv_weight_grad", None, "padded", _always,
         "grid: above one chunk the padded copy per group wins (64x12x16x16 quad 1.46 ms "
         "against 2.19; 8x48x8^3 oct 3.2 against 12.9)"),
)


def _weight_grad_chunk_bytes() -> int:
    from ._geometry import WEIGHT_GRAD_CHUNK_BYTES   # the geometry imports this module

    return WEIGHT_GRAD_CHUNK_BYTES


def pick(op: str, order: str, candidates, args) -> str:
    """The rule's form for ``op`` on ``args`` among ``candidates``."""
    return rule_for(describe(op, order, args), candidates).form


def rule_for(case: Case, candidates) -> Rule:
    """The first row of :data:`RULES` that applies to ``case`` and names a candidate."""
    for rule in RULES:
        if (rule.op == case.op and rule.group_pattern in (None, case.group_pattern)
                and rule.form in candidates and rule.when(case)):
            return rule
    raise LookupError(f"no rule picks among {sorted(candidates)} for {case}; every op with "
                      "equal forms needs an unconditional row in RULES")


def describe(op: str, order: str, args) -> Case:
    """The :class:`Case` of a call: ``args`` are (data, weight) for the causal conv and its
    adjoint, (input, grad_out) for the weight gradient."""
    from ._geometry import is_group_pattern   # the geometry imports this module

    data = args[0]
    return Case(op=op, group_pattern=is_group_pattern(order), dims=data.dim() - 2,
                device=data.device.type, dtype=data.dtype, batch=int(data.shape[0]),
                channels=int(data.shape[1]), positions=math.prod(int(n) for n in data.shape[2:]),
                isa=_isa())


@functools.lru_cache(maxsize=None)
def _isa() -> str:
    return torch.backends.cpu.get_cpu_capability()
