"""Prepares the matrices of one layer and launches :mod:`.kernels` (DESIGN §18).

The host side of the Triton backend, called by :func:`inverseflow.ops._dispatch.solve`
only. It folds the weight into the form the program walks (see :mod:`.kernels`): per
channel group a centre matrix ``B`` (CG×CG) and one matrix ``A_t`` per tap, in float64 and
then cast to the data's dtype (the weight is tiny next to the data). The mask is applied
with ``where``, so NaN or garbage stored at masked entries never reaches a result.

Tiles (``samples``, ``BLOCK_P``; ``BLOCK_C`` and warps come from the launch table that
``python -m codegen`` writes into ``generated/triton/``, or the generic rule below):
- ``BLOCK_C``: the group's channels rounded up to a power of two, at most 32 (more
  channels loop over blocks of output and of input channels).
- ``BLOCK_P``: the lanes of one hyperplane (or of the whole volume, for the conv), rounded
  up to a power of two and capped on a GPU so that the product tile
  ``BLOCK_P × BLOCK_C × BLOCK_C`` (lanes × output × input channels, summed over the input
  channels) holds at most 8192 values: 512 lanes at 4 channels, 32 at 16, 8 at 32.
- ``samples``: small images leave most lanes of a hyperplane empty, so a program takes
  several samples until it has about one warp of lanes (32). The interpreter pays per
  program and per block operation, not per lane, so there a program takes as many samples
  as fill 1024 lanes.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch

from .. import _weight_cache
from .._dispatch import CONV, SOLVE
from .._validate import CORNERS_BY_DIMS, GROUP_PATTERN

DIRECTION_NAMES = ("solve", "transposed", "conv")
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}
GPU_TILE = 8192
INTERPRETER_LANES = 1024
WARP_LANES = 32


def interpreting() -> bool:
    """Whether Triton runs its programs in the numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def launch_table() -> dict:
    """The generated launch table: ``(dims, kernel, group channels, dtype, direction)`` ->
    constexprs. It is looked for inside the package (a wheel) and then in the checkout's
    ``generated/triton/`` (an editable install)."""
    here = Path(__file__).resolve().parent
    for path in (here / "generated" / "launch_table.py",
                 here.parents[2] / "generated" / "triton" / "launch_table.py"):
        if path.is_file():
            spec = importlib.util.spec_from_file_location("inverseflow_triton_launch_table",
                                                          path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return dict(module.LAUNCH_TABLE)
    return {}


def generic_tiles(group_channels: int) -> dict:
    """The generic kernel's channel block and warps: the rule codegen/triton_target.py
    applies per spec (a test keeps the two equal)."""
    block_c = min(next_pow2(group_channels), 32)
    return {"BLOCK_C": block_c, "num_warps": 4 if block_c >= 16 else 2}


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def corner_bits(order: str, dims: int) -> list[int]:
    """Per group: bit 2 far depth, bit 1 far height, bit 0 far width. Group g of the group
    pattern is solved from corner g, whose bits are g itself (_validate.CORNERS_BY_DIMS)."""
    if order == GROUP_PATTERN[dims]:
        return list(range(2 ** dims))
    return [CORNERS_BY_DIMS[dims].index(order)]


def prepare(weight: torch.Tensor, order: str, dims: int, direction: int, dtype):
    """``(B, A, corners)`` for the program: B (G, CG, CG), A (G, taps, CG, CG) with the
    centre tap zero, corners int32 (G,). All groups at once (batched over G)."""
    corners = corner_bits(order, dims)
    groups, group_channels = len(corners), weight.shape[1]
    kernel = (1,) * (3 - dims) + tuple(weight.shape[2:])
    taps = kernel[0] * kernel[1] * kernel[2]
    device = weight.device
    # (g, co, ci, kd, kh, kw) -> (g, taps, co, ci)
    per_tap = weight.detach().to(torch.float64).reshape(
        groups, group_channels, group_channels, taps).permute(0, 3, 1, 2)
    # Per group, the centre tap: index K − 1 on a near axis, 0 on a far one.
    centre_taps = []
    for bits in corners:
        far = ((bits >> 2) & 1, (bits >> 1) & 1, bits & 1)
        index = [0 if f else k - 1 for f, k in zip(far, kernel)]
        centre_taps.append((index[0] * kernel[1] + index[1]) * kernel[2] + index[2])
    centre_taps = torch.tensor(centre_taps, device=device)
    eye = torch.eye(group_channels, dtype=torch.float64, device=device)
    strictly_lower = torch.ones_like(eye, dtype=torch.bool).tril(-1)
    lower = torch.where(strictly_lower, per_tap[torch.arange(groups, device=device),
                                                centre_taps], eye)
    # The centre tap is zeroed, not skipped by multiplying: NaN × 0 would be NaN.
    is_centre = torch.arange(taps, device=device)[None, :] == centre_taps[:, None]
    per_tap = torch.where(is_centre[:, :, None, None], 0.0, per_tap)
    if direction == CONV:
        centre, tap_matrix = lower, per_tap
    else:
        inverse = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False,
                                                unitriangular=True)
        if direction == SOLVE:
            centre, tap_matrix = inverse, -(inverse[:, None] @ per_tap)
        else:
            # Tᵀ reads the opposite neighbours with transposed matrices: the solve from the
            # opposite corner, each axis's taps reversed.
            reversed_taps = per_tap.reshape(groups, *kernel, group_channels,
                                            group_channels).flip(1, 2, 3).reshape(
                groups, taps, group_channels, group_channels)
            centre = inverse.transpose(1, 2)
            tap_matrix = -(centre[:, None] @ reversed_taps.transpose(2, 3))
            corners = [bits ^ 0b111 for bits in corners]
    return (centre.to(dtype).contiguous(), tap_matrix.to(dtype).contiguous(),
            torch.tensor(corners, dtype=torch.int32, device=device))


def tiles(lanes_per_sample: int, batch: int, block_c: int) -> tuple[int, int]:
    """``(samples per program, BLOCK_P)`` for a walk whose step has ``lanes_per_sample``
    lanes per sample (see the module docstring)."""
    want = INTERPRETER_LANES if interpreting() else WARP_LANES
    samples = max(1, min(batch, want // max(lanes_per_sample, 1)))
    cap = INTERPRETER_LANES if interpreting() else max(4, GPU_TILE // (block_c * block_c))
    return samples, min(next_pow2(samples * lanes_per_sample), cap)


def run(y: torch.Tensor, weight: torch.Tensor, order: str, direction: int, dims: int,
        force_generic: bool = False) -> tuple[torch.Tensor, str]:
    """The Triton walk on contiguous ``y`` (rank dims + 2); returns ``(out, kernel name)``."""
    batch, channels = y.shape[:2]
    depth, height, width = (1,) * (3 - dims) + tuple(y.shape[2:])
    group_channels = weight.shape[1]
    # Once per weight version where no derivative is recorded (sampling, evaluation, and
    # inside the autograd Functions): a prepare is a dozen small ops, the hit one compare.
    centre, tap_matrix, corner = _weight_cache.derived(
        ("triton_walk", order, dims, direction, y.dtype), (weight,),
        lambda: prepare(weight, order, dims, direction, y.dtype))
    key = (dims, tuple(weight.shape[2:]), group_channels, DTYPE_NAMES[y.dtype],
           DIRECTION_NAMES[direction])
    entry = None if force_generic else launch_table().get(key)
    recurrent = direction != CONV
    lanes_per_sample = depth * height if recurrent else depth * height * width
    config = entry or generic_tiles(group_channels)
    samples, block_p = tiles(lanes_per_sample, batch, config["BLOCK_C"])
    kernel = [1] * (3 - dims) + list(weight.shape[2:])
    args = (y.reshape(batch, channels, depth, height, width), centre, tap_matrix, corner,
            kernel, recurrent, entry is not None, samples, block_p, config["BLOCK_C"],
            config["num_warps"])
    if y.is_cuda:   # Triton launches on the current device (a tensor on cuda:1 with cuda:0)
        with torch.cuda.device(y.device):
            out = walk_op()(*args)
    else:
        out = walk_op()(*args)
    return out.reshape(y.shape), f"triton:{entry['name']}" if entry else "triton:generic"


@functools.lru_cache(maxsize=None)
def walk_op():
    """``inverseflow::triton_walk``, registered on first use (Triton is imported then).

    A ``torch.library.triton_op`` launching through ``wrap_triton``, so that on a GPU a
    graph that calls it shows Inductor the Triton program. The public ops stay opaque
    custom ops around it (their fake kernels, autograd and vmap rules are the same for
    every backend), so under ``torch.compile`` Inductor sees ``inv_conv2d``, not this
    op. Under the interpreter (CPU tensors) the op runs eagerly only: Dynamo cannot trace
    an interpreted program with fake tensors."""
    import triton

    from . import kernels

    # torch < 2.6 has no triton_op: there the walk is a plain function (opaque to Inductor).
    wrap = getattr(torch.library, "wrap_triton", lambda kernel: kernel)

    def triton_walk(y: torch.Tensor, centre: torch.Tensor, taps: torch.Tensor,
                    corner: torch.Tensor, kernel: list[int], recurrent: bool,
                    specialized: bool, samples: int, block_p: int, block_c: int,
                    num_warps: int) -> torch.Tensor:
        batch, channels, depth, height, width = y.shape
        group_channels = centre.shape[1]
        out = torch.empty_like(y)
        grid = (triton.cdiv(batch, samples), corner.shape[0])
        common = (out, out if recurrent else y, y, centre, taps, corner, batch, channels,
                  depth, height, width, samples)
        if specialized:
            wrap(kernels.walk_specialized)[grid](
                *common, KD=kernel[0], KH=kernel[1], KW=kernel[2], CG=group_channels,
                RECURRENT=recurrent, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
        else:
            wrap(kernels.walk_generic)[grid](
                *common, *kernel, group_channels, RECURRENT=recurrent, BLOCK_P=block_p,
                BLOCK_C=block_c, num_warps=num_warps)
        return out

    if not hasattr(torch.library, "triton_op"):
        return triton_walk
    torch.library.triton_op("inverseflow::triton_walk", mutates_args={})(triton_walk)
    return torch.ops.inverseflow.triton_walk
