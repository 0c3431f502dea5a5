"""Dense float64 oracle for N-D (1-D, 2-D, 3-D) masked causal convolutions (docs/nd-design.md).

Written from the definitions only (pad on the corner's sides, convolve with the masked
weight), sharing no code with ``inverseflow``: it builds the operator's dense matrix from
unit inputs, so ``tests/test_nd_math.py`` can check every claim of the design note against
``torch.linalg`` before any N-D kernel exists.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

# One letter pair per axis, in tensor order (depth, height, width); the first letter of a
# pair is the side of index 0. A d-D corner is one letter per axis of the last d axes.
AXIS_SIDES = {"D": ("N", "F"), "H": ("T", "B"), "W": ("L", "R")}
AXES = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}
GROUP_PATTERN = {1: "pair", 2: "quad", 3: "oct"}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def corners(d: int) -> list[str]:
    """The 2^d corners of d-D, in group order: bit i of g (axis 0 most significant) picks
    the far side of axis i. 1-D: L, R; 2-D: TL, TR, BL, BR; 3-D: NTL, NTR, ..., FBR."""
    return ["".join(AXIS_SIDES[a][bit] for a, bit in zip(AXES[d], bits))
            for bits in itertools.product((0, 1), repeat=d)]


def far_sides(corner: str) -> tuple[bool, ...]:
    """Per axis: True when the corner is on the far (last-index) side of that axis."""
    d = len(corner)
    return tuple(letter == AXIS_SIDES[a][1] for a, letter in zip(AXES[d], corner))


def padding(corner: str, kernel: tuple[int, ...]) -> tuple[int, ...]:
    """The ``F.pad`` tuple: k_i − 1 zeros before axis i for a near corner, after it for a far
    one (``F.pad`` lists the last axis first)."""
    pads = []
    for far, k in reversed(list(zip(far_sides(corner), kernel))):
        pads += [0, k - 1] if far else [k - 1, 0]
    return tuple(pads)


def center(corner: str, kernel: tuple[int, ...]) -> tuple[int, ...]:
    """The tap aligned with the output position: k_i − 1 on a near axis, 0 on a far one."""
    return tuple(0 if far else k - 1 for far, k in zip(far_sides(corner), kernel))


def offsets(corner: str, kernel: tuple[int, ...]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Tap → the offset it reads, ``x[p + offset]``."""
    c = center(corner, kernel)
    return {tap: tuple(t - ci for t, ci in zip(tap, c))
            for tap in itertools.product(*(range(k) for k in kernel))}


def groups(pattern: str, channels: int, d: int) -> list[tuple[str, slice]]:
    """(corner, channel slice) per group: one group, or 2^d for the group pattern."""
    if pattern != GROUP_PATTERN[d]:
        return [(pattern, slice(0, channels))]
    size = channels // 2 ** d
    return [(corner, slice(g * size, (g + 1) * size)) for g, corner in enumerate(corners(d))]


def mask(weight: torch.Tensor, pattern: str) -> torch.Tensor:
    """M(W): each group's centre tap becomes unit lower triangular over its channels."""
    d = weight.dim() - 2
    kernel = tuple(weight.shape[2:])
    out = weight.clone()
    cg = weight.shape[1]
    lower = torch.ones(cg, cg, dtype=torch.bool).tril(-1)
    for corner, part in groups(pattern, weight.shape[0], d):
        idx = (part, slice(None)) + center(corner, kernel)
        out[idx] = torch.where(lower, weight[idx], torch.eye(cg, dtype=weight.dtype))
    return out


def causal_conv(x: torch.Tensor, weight: torch.Tensor, pattern: str) -> torch.Tensor:
    """pad on the corner's sides, then convolve each group with its masked weight."""
    d = weight.dim() - 2
    kernel = tuple(weight.shape[2:])
    w = mask(weight, pattern)
    parts = [CONV[d](F.pad(x[:, part], padding(corner, kernel)), w[part])
             for corner, part in groups(pattern, x.shape[1], d)]
    return torch.cat(parts, dim=1)


def dense(weight: torch.Tensor, pattern: str, shape: tuple[int, ...]) -> torch.Tensor:
    """T as a (C·n × C·n) matrix over (channel, position) in C order (channel outermost,
    then the spatial axes in tensor order), column j = T applied to unit vector j.
    Differentiable in ``weight``."""
    channels = weight.shape[0]
    size = channels * int(torch.tensor(shape).prod())
    basis = torch.eye(size, dtype=weight.dtype).reshape(size, channels, *shape)
    return causal_conv(basis, weight, pattern).reshape(size, size).T


def solve_order(corner: str, channels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The permutation of (channel, position) indices into the corner's order: positions in
    raster order of the corner coordinates q_i (q_i = p_i on a near axis, n_i − 1 − p_i on
    a far one), channels ascending within a position."""
    far = far_sides(corner)
    index = torch.arange(channels * int(torch.tensor(shape).prod())).reshape(channels, *shape)
    index = index.flip([1 + i for i, f in enumerate(far) if f]) if any(far) else index
    return index.movedim(0, -1).reshape(-1)


def wavefront(corner: str, shape: tuple[int, ...]) -> torch.Tensor:
    """s(p) = Σ_i q_i(p): the hyperplane a position belongs to (same shape as the image)."""
    far = far_sides(corner)
    grids = torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij")
    return sum((n - 1 - g) if f else g for g, f, n in zip(grids, far, shape))


def dependency_levels(matrix: torch.Tensor, channels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Longest-path level of every position in the dependency graph of a triangular solve:
    level(p) = 1 + max level(q) over positions q ≠ p with a nonzero block T[p, q]. The
    number of dependent steps of any schedule is the largest level (positions of one level
    can run together: none depends on another)."""
    n = int(torch.tensor(shape).prod())
    blocks = matrix.reshape(channels, n, channels, n).abs().sum(dim=(0, 2)) != 0
    blocks.fill_diagonal_(False)
    level = torch.zeros(n, dtype=torch.long)
    remaining = set(range(n))
    while remaining:   # Kahn-style: a position is ready when all it reads has a level
        ready = [p for p in remaining
                 if not any(q in remaining for q in blocks[p].nonzero()[:, 0].tolist())]
        if not ready:
            raise ValueError("the dependency graph has a cycle: T is not triangular")
        for p in ready:
            deps = blocks[p].nonzero()[:, 0]
            level[p] = 1 + (int(level[deps].max()) if len(deps) else 0)
        remaining -= set(ready)
    return level.reshape(shape)


def wavefront_solve(y: torch.Tensor, weight: torch.Tensor, corner: str) -> tuple[torch.Tensor, int]:
    """x with causal_conv(x, weight, corner) = y, solved one hyperplane s = Σ q_i at a time:
    every position of a plane at once, from the planes before it only,
    ``x[p] = L⁻¹ (y[p] − Σ_{t ≠ centre} W_t x[p + off_t])``. Returns (x, number of
    planes)."""
    d = weight.dim() - 2
    kernel, shape = tuple(weight.shape[2:]), tuple(y.shape[2:])
    w = mask(weight, corner)
    lower = w[(slice(None), slice(None)) + center(corner, kernel)]
    before = [padding(corner, kernel)[2 * (d - 1 - i)] for i in range(d)]   # zeros before axis i
    padded = F.pad(torch.zeros_like(y), padding(corner, kernel))
    plane_of = wavefront(corner, shape)
    taps = {t: off for t, off in offsets(corner, kernel).items() if t != center(corner, kernel)}
    planes = 0
    for s in range(int(plane_of.max()) + 1):
        where = (plane_of == s).nonzero()            # (m, d) positions of the plane
        if not len(where):
            continue
        planes += 1
        rhs = y[(slice(None), slice(None)) + tuple(where.T)]            # (N, C, m)
        for tap, off in taps.items():
            src = tuple(where[:, i] + off[i] + before[i] for i in range(d))
            rhs = rhs - torch.einsum("oc,ncm->nom", w[(slice(None), slice(None)) + tap],
                                     padded[(slice(None), slice(None)) + src])
        solved = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
        dst = tuple(where[:, i] + before[i] for i in range(d))
        padded[(slice(None), slice(None)) + dst] = solved
    crop = tuple(slice(b, b + n) for b, n in zip(before, shape))
    return padded[(slice(None), slice(None)) + crop], planes


def opposite(corner: str) -> str:
    """The corner across every axis (TL ↔ BR, L ↔ R, NTL ↔ FBR)."""
    d = len(corner)
    return "".join(AXIS_SIDES[a][1 - AXIS_SIDES[a].index(letter)]
                   for a, letter in zip(AXES[d], corner))


def transposed_weight(weight: torch.Tensor) -> torch.Tensor:
    """W'[c, c', t] = W[C−1−c', C−1−c, k−1−t]: channels transposed and reversed, taps
    flipped on every axis. Tᵀ = R · T_opposite(W') · R with R the channel reversal."""
    d = weight.dim() - 2
    return weight.transpose(0, 1).flip([0, 1] + [2 + i for i in range(d)])
