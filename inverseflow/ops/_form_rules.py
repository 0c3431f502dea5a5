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


# The table. Measured 2026-12-05 on an AMD EPYC (Zen 4, AVX-512, 2 cores, shared), float32
# unless said, with the forms of this commit; docs/benchmarks.md "Issue 25" has the grid and
# the rule's worst ratio to the fastest form.
RULES: tuple[Rule, ...] = (
    # -- the causal convolution (the sampling pass) --
    Rule("causal_conv", None, "padded_conv",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): cuDNN's convolution, the plain torch form"),
    Rule("causal_conv", None, "grouped",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): one grouped cuDNN call rather than 2^d launches"),
    Rule("causal_conv", None, "kernel",
         lambda c: c.dtype == torch.float64,
         "forms grid: oneDNN's float64 convolution is a slow reference path; the generated "
         "kernel won every float64 row, specialized or generic"),
    Rule("causal_conv", None, "kernel",
         lambda c: c.specialized,
         "forms grid: the specialized generated kernel (no padding copy, every group in one "
         "pass) was the fastest or within 1.2x of it on every specialized float32 row"),
    Rule("causal_conv", False, "kernel",
         lambda c: c.batch * c.positions <= 256,
         "forms grid: at a few hundred pixels a batch the call's set-up dominates, and the "
         "generic kernel's is the smallest"),
    Rule("causal_conv", False, "padded_conv", _always,
         "forms grid: oneDNN's convolution beats the generic kernel on larger unlisted shapes"),
    Rule("causal_conv", True, "kernel",
         lambda c: c.batch * c.positions <= 256,
         "forms grid: at a few hundred pixels a batch the call's set-up dominates"),
    Rule("causal_conv", True, "grouped",
         lambda c: c.group_channels <= 4,
         "forms grid: with few channels a group, one grouped call beats 2^d small ones"),
    Rule("causal_conv", True, "per_group", _always,
         "forms grid and issue 18: oneDNN's grouped kernel is a slow path at C/4 >= 3 "
         "(23 ms against 3 ms for four dense calls at 100x12x16x16)"),
    # -- its adjoint (forward-mode AD of the transposed solve); corners have one form --
    Rule("causal_conv_adjoint", True, "grouped",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): one grouped cuDNN call rather than 2^d launches"),
    Rule("causal_conv_adjoint", True, "grouped",
         lambda c: c.group_channels <= 1,
         "forms grid: at one channel a group the grouped call wins"),
    Rule("causal_conv_adjoint", True, "per_group", _always,
         "forms grid: oneDNN's grouped transposed convolution is a slow path"),
    # -- the weight gradient (the backward of every solve) --
    Rule("conv_weight_grad", None, "padded",
         lambda c: c.device == "cuda",
         "not measured (no GPU lent): the form with the fewest multiply-adds"),
    Rule("conv_weight_grad", True, "block_diagonal",
         lambda c: c.group_channels <= 4 and c.batch > 1,
         "forms grid and issue 18: at small C the dense kernel beats the grouped one "
         "despite 2^d x the multiply-adds (64x16x8x8 quad 1.32 -> 0.92 ms)"),
    Rule("conv_weight_grad", None, "padded", _always,
         "forms grid: the padded copy is cheap next to the gradient itself"),
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
                             and _specialized(data.device.type, kernel, int(data.shape[1]), order)),
                isa=_isa())


def _specialized(device_type: str, kernel: tuple, channels: int, order: str) -> bool:
    from . import _dispatch

    return _dispatch.is_specialized(device_type, kernel, channels, order)


@functools.lru_cache(maxsize=None)
def _isa() -> str:
    return torch.backends.cpu.get_cpu_capability()
