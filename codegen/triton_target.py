"""The Triton target (DESIGN §18): the layers of ``specs.toml`` folded into a launch table.

A Triton program (``inverseflow/ops/_triton/kernels.py``) depends on the dimension, the
kernel sizes, the group's channel count, the dtype and the direction; the corner is a flip
chosen at run time per group (DESIGN §17). So ``tl`` C=12 and ``quad`` C=48 (3×3) are one
entry, and so are ``l``/``r``/``pair`` and the eight 3-D corners and ``oct`` of one group
size. Each entry is one constexpr specialization of ``walk_specialized``; every other shape
runs ``walk_generic``, whose kernel sizes and channels are run-time values.

Tile choices per entry (written into the table, read by ``_triton/launch.py``):
- ``BLOCK_C``: the group channels rounded up to a power of two, at most 32. A step forms
  the product tile lanes × output channels × input channels and sums the input channels
  away; launch.py caps the lanes so that the tile holds at most 8192 values (64 registers
  a thread at 4 warps). More channels loop over blocks.
- ``num_warps``: 2 below 16 channels (4 or 8 channels make small tiles), else 4.
- ``BLOCK_P`` is not a spec constant: it follows the image (the lanes of one hyperplane),
  chosen at launch.
"""

from __future__ import annotations

import dataclasses

from .spec import DTYPE_SHORT, Layer, fold, kernel_name

TEMPLATE = "launch_table_triton.py.j2"
OUTPUT = "triton/launch_table.py"
MAX_BLOCK_C = 32


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class TritonSpec:
    """One launch-table entry: what a Triton program is specialized on."""

    dims: int
    kernel: tuple
    group_channels: int
    dtype: str
    direction: str
    layers: tuple = ()

    @property
    def key(self) -> tuple:
        return (self.dims, self.kernel, self.group_channels, self.dtype, self.direction)

    @property
    def name(self) -> str:
        sizes = "x".join(str(k) for k in self.kernel)
        return (f"walk{self.dims}d_k{sizes}_cg{self.group_channels}_"
                f"{DTYPE_SHORT[self.dtype]}_{self.direction}")

    @property
    def kernel3d(self) -> tuple:
        return (1,) * (3 - self.dims) + self.kernel

    @property
    def block_c(self) -> int:
        return min(next_pow2(self.group_channels), MAX_BLOCK_C)

    @property
    def num_warps(self) -> int:
        return 4 if self.block_c >= 16 else 2


def triton_specs(layers: list[Layer]) -> list[TritonSpec]:
    """The unique entries of ``layers``: the generator's one folding (``spec.fold``, issue
    27), in the order they first appear, each with the names of the layers folded into it."""
    return [TritonSpec(inst.dims, inst.kernel, inst.group_channels, inst.dtype,
                       inst.direction, layers=tuple(layer.name for layer in inst.layers))
            for inst in fold(layers, "triton")]


def render(env, layers: list[Layer]) -> dict[str, str]:
    """``{OUTPUT: text}``: the launch table module."""
    return {OUTPUT: env.get_template(TEMPLATE).render(
        template_name=TEMPLATE, specs=triton_specs(layers), kernel_name=kernel_name)}
