"""The fixed rule that picks one of an op's equal forms (DESIGN §16), like cuDNN's heuristics
with ``torch.backends.cudnn.benchmark = False``: from what is known without a clock (the op,
whether the order is a corner or a group pattern, the dimension, the device, the dtype, the
shapes, whether a specialized kernel is built for the layer, and the CPU's instruction set).
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
    specialized: bool     # a specialized kernel (built or JIT-compiled) serves the layer
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


# The table. Sources: "forms grid" is `inverseflow bench --parity`'s forms section
# (docs/benchmarks.md, "Issue 25"), "issue 18" the backward-forms table measured then; both
# on an AMD EPYC (Zen 4, AVX-512), 2 cores. No GPU has been lent: the CUDA rows are reasoned,
# not measured, and say so.
RULES: tuple[Rule, ...] = (
    # -- the causal convolution (the sampling pass) --
    Rule("causal_conv", False, "padded_conv",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): cuDNN's convolution, the plain torch form"),
    Rule("causal_conv", True, "grouped",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): one grouped cuDNN call rather than 2^d launches"),
    Rule("causal_conv", None, "kernel",
         lambda c: c.dtype == torch.float64 and (c.specialized or c.dims < 3),
         "forms grid: oneDNN's float64 convolution is a slow path; the generated kernel won "
         "the float64 rows (up to 7x at 100x12x16x16)"),
    Rule("causal_conv", True, "kernel",
         lambda c: c.specialized or c.dims < 3,
         "forms grid: one pass for every group beats 2^d convolutions and a concatenation "
         "in 1-D and 2-D (quad at 100x12x16x16: 0.9 ms against 5.6 per group)"),
    Rule("causal_conv", True, "per_group", _always,
         "forms grid: for volumes without a specialized kernel oneDNN's 2^d conv3d calls win "
         "(8x48x8x8x8 oct: 7.3 ms against 8.3 for the generic kernel)"),
    Rule("causal_conv", False, "kernel",
         lambda c: c.specialized and c.group_channels <= 12 and c.dims < 3,
         "forms grid: the specialized kernel beats a padded copy and oneDNN's convolution up "
         "to 12 channels (100x4x32x32 TL 1.4 ms against 6.4; 100x12x8x8 0.39 against 0.83)"),
    Rule("causal_conv", False, "kernel",
         lambda c: c.batch * c.positions <= 1024 and c.dims < 3,
         "forms grid: up to 1024 pixels a call (batch 1) the kernel's call is cheaper than "
         "a pad and a convolution, specialized or not"),
    Rule("causal_conv", False, "padded_conv", _always,
         "forms grid: at 48 channels, and for larger unlisted shapes, oneDNN's convolution "
         "wins (100x48x8x8 TL 5.4 ms against 8.6)"),
    # -- its adjoint (forward-mode AD of the transposed solve); corners have one form --
    Rule("causal_conv_adjoint", True, "grouped",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): one grouped cuDNN call rather than 2^d launches"),
    Rule("causal_conv_adjoint", True, "grouped",
         lambda c: c.batch > 1 and c.group_channels <= 8,
         "forms grid: over a batch, with up to 8 channels a group, one grouped call beats "
         "2^d (100x12x16x16 quad 8.1 ms against 12.4)"),
    Rule("causal_conv_adjoint", True, "per_group", _always,
         "forms grid: at batch 1, and with more channels a group, 2^d dense transposed "
         "convolutions win"),
    # -- the weight gradient (the backward of every solve); corners have one form --
    Rule("conv_weight_grad", True, "padded",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): the form with the fewest multiply-adds"),
    Rule("conv_weight_grad", True, "block_diagonal",
         lambda c: c.dims == 2 and c.group_channels <= 4 and c.batch > 1,
         "issue 18 (2 threads): at small C the dense kernel beats 2^d small ones despite "
         "2^d x the multiply-adds (64x4x8x8 quad 1.10 -> 0.40 ms, 64x16x8x8 1.52 -> 0.92)"),
    Rule("conv_weight_grad", None, "padded", _always,
         "issue 18 and forms grid: the padded copy per group is the fastest at C >= 12 "
         "(64x12x16x16 quad 2.34 ms against 8.62 block-diagonal; 16x48x32x32 12 against 69)"),
)


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
    dims = data.dim() - 2
    kernel = tuple(args[1].shape[2:]) if op != "conv_weight_grad" else None
    return Case(op=op, group_pattern=is_group_pattern(order), dims=dims,
                device=data.device.type, dtype=data.dtype, batch=int(data.shape[0]),
                channels=int(data.shape[1]), positions=math.prod(int(n) for n in data.shape[2:]),
                specialized=(kernel is not None
                             and _specialized(data.device.type, kernel, int(data.shape[1]), order,
                                              data.dtype)),
                isa=_isa())


def _specialized(device_type: str, kernel: tuple, channels: int, order: str, dtype) -> bool:
    from . import _dispatch

    return _dispatch.is_specialized(device_type, kernel, channels, order, dtype)


@functools.lru_cache(maxsize=None)
def _isa() -> str:
    return torch.backends.cpu.get_cpu_capability()
