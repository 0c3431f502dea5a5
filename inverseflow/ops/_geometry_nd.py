"""Corner geometry, the mask M and the causal convolution in d = 1, 2 or 3 dimensions
(docs/nd-design.md), as differentiable torch code.

It serves the 1-D and 3-D ops. Written for any d (the dimension is the weight's rank minus
2), it equals the 2-D geometry of :mod:`._geometry` for d = 2 (tested), but the 2-D ops keep
that module, whose ``quad`` forms are tuned for the sampling pass (DESIGN §15).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _autotune, _weight_cache
from ._validate import CORNERS_BY_DIMS, GROUP_PATTERN

# True for the letter of an axis's last-index ("far") side: N/T/L name index 0.
_FAR = {"N": False, "F": True, "T": False, "B": True, "L": False, "R": True}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def far_sides(corner: str) -> tuple[bool, ...]:
    """Per axis, in tensor order: whether the corner is on the axis's last-index side."""
    return tuple(_FAR[letter] for letter in corner)


def padding(corner: str, kernel) -> tuple[int, ...]:
    """The ``F.pad`` tuple (last axis first): k_i − 1 zeros before a near axis, after a far
    one (nd-design rule 1)."""
    pads: list[int] = []
    for far, k in reversed(list(zip(far_sides(corner), kernel))):
        pads += [0, k - 1] if far else [k - 1, 0]
    return tuple(pads)


def center(corner: str, kernel) -> tuple[int, ...]:
    """The tap aligned with the output position: k_i − 1 on a near axis, 0 on a far one."""
    return tuple(0 if far else k - 1 for far, k in zip(far_sides(corner), kernel))


def groups(order: str, channels: int, dims: int) -> list[tuple[str, slice]]:
    """``(corner, channel slice)`` per channel group: one, or 2^d for the group pattern
    (group g solved from corner g)."""
    if order != GROUP_PATTERN[dims]:
        return [(order, slice(0, channels))]
    size = channels // 2 ** dims
    return [(corner, slice(g * size, (g + 1) * size))
            for g, corner in enumerate(CORNERS_BY_DIMS[dims])]


def _build_center_parts(shape, order, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols, kernel = shape[0], shape[1], shape[2:]
    keep = torch.ones(shape, dtype=torch.bool, device=device)
    identity = torch.zeros(shape, dtype=dtype, device=device)
    strict_lower = torch.ones(cols, cols, dtype=torch.bool, device=device).tril(-1)
    eye = torch.eye(cols, dtype=dtype, device=device)
    for corner, part in groups(order, rows, len(kernel)):
        index = (part, slice(None)) + center(corner, kernel)
        keep[index] = strict_lower
        identity[index] = eye
    return keep, identity


_cached_center_parts = functools.lru_cache(maxsize=128)(_build_center_parts)


def _center_parts(weight: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, identity): keep is False where M overrides the weight; identity is M there.
    Cached for eager calls; built fresh under tracing and torch.func transforms (as in
    :func:`._geometry._center_parts`, whose reasons apply unchanged)."""
    key = (tuple(weight.shape), order, weight.dtype, weight.device)
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or type(weight) is not torch.Tensor and not isinstance(weight, torch.nn.Parameter)):
        return _build_center_parts(*key)
    return _cached_center_parts(*key)


def masked_weight(weight: torch.Tensor, order: str) -> torch.Tensor:
    """M(W): each group's centre tap becomes unit lower triangular (``where``, so values
    stored at masked entries, inf and NaN included, never reach a result, and their
    gradient is exactly 0). Computed once per weight version when no derivative is wanted."""
    return _weight_cache.derived(("masked_nd", order), (weight,),
                                 lambda: _apply_mask(weight, order))


def _apply_mask(weight: torch.Tensor, order: str) -> torch.Tensor:
    keep, identity = _center_parts(weight, order)
    return torch.where(keep, weight, identity)


def mask_gradient(grad: torch.Tensor, order: str) -> torch.Tensor:
    """``grad`` with the entries that M fixes set to exactly 0."""
    keep, _ = _center_parts(grad, order)
    return torch.where(keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


def _is_empty(x: torch.Tensor) -> bool:
    return any(n == 0 for n in x.shape[2:])


def causal_conv(x: torch.Tensor, weight_m: torch.Tensor, order: str,
                unit_center: bool = False) -> torch.Tensor:
    """``convNd`` with corner padding, on an already masked weight (``unit_center``: as in
    :func:`._geometry.causal_conv`, a real M(W), so the generated kernel may run)."""
    dims = weight_m.dim() - 2
    if _is_empty(x):
        # conv rejects an empty signal; the result is empty, as the solve's is. The sum
        # keeps the weight in the graph (its gradient is then an exact zero).
        return x + 0 * weight_m.sum()
    if _weight_cache.plain_eager(x, weight_m):
        # Sampling and evaluation take the fastest form for the shape, the generated kernel
        # (DESIGN §15) among them; autograd, tracing and export take the torch forms below
        # (plain pads, convolutions and a concatenation).
        forms = sampling_forms(order, dims, unit_center and x.dtype in KERNEL_DTYPES)
        if len(forms) > 1:
            # Its own tag: the 2-D module times other forms under "causal_conv_quad".
            tag = f"causal_conv{dims}d_nd_{order}" + ("" if "kernel" in forms else "_torch")
            form = _autotune.fastest(tag, forms, x, weight_m)
            return forms[form](x, weight_m)
    if order != GROUP_PATTERN[dims]:
        return _padded_conv(x, weight_m, order)
    return _per_group(x, weight_m)


def _padded_conv(x: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    return CONV[weight_m.dim() - 2](F.pad(x, padding(order, weight_m.shape[2:])), weight_m)


def _generated_kernel(x: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    """The generator's causal-conv kernel (direction ``conv``): one call for any order."""
    from . import _dispatch   # imported late: _dispatch is above the geometry modules

    return _dispatch.solve(x, weight_m, order, _dispatch.CONV)[0]


def _per_group(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """Each channel group padded at its corner and convolved on its own."""
    dims, kernel = weight_m.dim() - 2, weight_m.shape[2:]
    parts = [CONV[dims](F.pad(x[:, part], padding(corner, kernel)), weight_m[part])
             for corner, part in groups(GROUP_PATTERN[dims], x.shape[1], dims)]
    return torch.cat(parts, dim=1)


def _grouped(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """One grouped convolution padded by k_i − 1 on both sides of every axis, then each
    group's window: it starts at k_i − 1 on an axis where the group's corner is far, at 0
    where it is near (DESIGN §15's quad window, in d axes)."""
    dims, kernel = weight_m.dim() - 2, tuple(weight_m.shape[2:])
    full = CONV[dims](x, weight_m, padding=tuple(k - 1 for k in kernel), groups=2 ** dims)
    parts = []
    for corner, part in groups(GROUP_PATTERN[dims], x.shape[1], dims):
        window = tuple(slice(k - 1, k - 1 + n) if far else slice(0, n)
                       for far, k, n in zip(far_sides(corner), kernel, x.shape[2:]))
        parts.append(full[(slice(None), part) + window])
    return torch.cat(parts, dim=1)


# The kernels take float32 and float64 (bfloat16/float16 reach here only as float32 copies).
KERNEL_DTYPES = (torch.float32, torch.float64)
GROUP_FORMS = {"per_group": _per_group, "grouped": _grouped}


@functools.lru_cache(maxsize=None)
def sampling_forms(order: str, dims: int, with_kernel: bool) -> dict:
    """An order's equal forms of the causal conv, name -> fn(x, weight_m): the group
    pattern's GROUP_FORMS, or a corner's pad and convolution; with the generated kernel
    when ``with_kernel``."""
    forms = dict(GROUP_FORMS) if order == GROUP_PATTERN[dims] else {
        "padded_conv": functools.partial(_padded_conv, order=order)}
    if with_kernel:
        forms["kernel"] = functools.partial(_generated_kernel, order=order)
    return forms


def causal_conv_adjoint(u: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    """The adjoint of :func:`causal_conv` in its input: ``conv_transposeNd`` per group,
    cropped to the unpadded signal."""
    dims, kernel = weight_m.dim() - 2, weight_m.shape[2:]
    if _is_empty(u):
        return u + 0 * weight_m.sum()
    parts = []
    for corner, part in groups(order, u.shape[1], dims):
        full = CONV_TRANSPOSE[dims](u[:, part], weight_m[part])
        before = padding(corner, kernel)[::-1][1::2]   # zeros before each axis, axis order
        crop = tuple(slice(b, b + n) for b, n in zip(before, u.shape[2:]))
        parts.append(full[(slice(None), slice(None)) + crop])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def conv_weight_grad(inp: torch.Tensor, grad_out: torch.Tensor, weight_shape,
                     order: str) -> torch.Tensor:
    """d<grad_out, causal_conv(inp, W)>/dW, unmasked: the standard ``convNd`` weight
    gradient of the corner-padded input (``aten.convolution_backward``, oneDNN/cuDNN),
    per group; a forward conv with batch and channels swapped when a spatial size is
    symbolic (Inductor's lowering of convolution_backward fails there, as in 2-D)."""
    dims, kernel = len(weight_shape) - 2, tuple(weight_shape[2:])
    if _is_empty(inp):   # no position, no gradient (conv rejects it)
        return grad_out.new_zeros(tuple(weight_shape))
    symbolic = not all(isinstance(size, int) for size in inp.shape[2:])
    ones, zeros = [1] * dims, [0] * dims
    parts = []
    for corner, part in groups(order, inp.shape[1], dims):
        padded = F.pad(inp[:, part], padding(corner, kernel))
        if symbolic:
            parts.append(CONV[dims](padded.transpose(0, 1),
                                    grad_out[:, part].transpose(0, 1)).transpose(0, 1))
            continue
        rows = part.stop - part.start
        shape_only = grad_out.new_zeros(()).expand(rows, weight_shape[1], *kernel)
        parts.append(torch.ops.aten.convolution_backward(
            grad_out[:, part], padded, shape_only, None, ones, zeros, ones, False, zeros, 1,
            (False, True, False))[1])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


@torch.no_grad()
def stability_bound(weight: torch.Tensor, order: str) -> float:
    """ρ = Σ_t ‖L⁻¹ W_t‖_∞ over the off-centre taps (per channel group, the largest), for
    any dimension; ρ < 1 guarantees ``max|x| ≤ ‖L⁻¹‖_∞ max|y| / (1 − ρ)`` at any size."""
    dims, kernel = weight.dim() - 2, tuple(weight.shape[2:])
    w = _apply_mask(weight.detach().double(), order)
    bounds = []
    for corner, part in groups(order, w.shape[0], dims):
        taps = w[part]
        index = (slice(None), slice(None)) + center(corner, kernel)
        folded = torch.einsum("ab,bc...->ac...", torch.linalg.inv(taps[index]), taps)
        folded[index] = 0
        bounds.append(folded.abs().sum(dim=1).amax(dim=0).sum())   # Σ_t ‖·‖_∞
    return float(max(bounds))
