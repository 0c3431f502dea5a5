"""Corner geometry, the mask M and the causal convolution in d = 1, 2 or 3 dimensions
(DESIGN §2, docs/nd-design.md), as differentiable torch code: one module for every
dimension (the 2-D geometry is this one at d = 2).

Several ops have forms that are equal in exact arithmetic (DESIGN §15, §16): the causal conv
as a padded convolution, per group, as one grouped convolution with a window per group, or
the generated kernel; its adjoint per group or grouped; the weight gradient padded,
with conv's own padding, or dense block-diagonal. Plain eager calls take the form that
:func:`._autotune.choose` names (a fixed rule by default); autograd, tracing, export and
torch.func take the plain torch forms. Every form keeps a non-finite value inside its channel
group (DESIGN §16): forms that mix groups (a dense block-diagonal or embedded weight in the
causal conv or its adjoint, where 0·inf is NaN) are not candidates.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _autotune, _weight_cache
from ._validate import CORNERS_BY_DIMS, GROUP_PATTERN

# True for the letter of an axis's last-index ("far") side: N/T/L name index 0.
_FAR = {"N": False, "F": True, "T": False, "B": True, "L": False, "R": True}
GROUP_DIMS = {pattern: dims for dims, pattern in GROUP_PATTERN.items()}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
# The kernels take float32 and float64 (bfloat16/float16 reach here only as float32 copies).
KERNEL_DTYPES = (torch.float32, torch.float64)


def far_sides(corner: str) -> tuple[bool, ...]:
    """Per axis, in tensor order: whether the corner is on the axis's last-index side."""
    return tuple(_FAR[letter] for letter in corner)


def padding(corner: str, kernel) -> tuple[int, ...]:
    """The ``F.pad`` tuple (last axis first): k_i − 1 zeros before a near axis, after a far
    one (nd-design rule 1). In 2-D: (left, right, top, bottom)."""
    pads: list[int] = []
    for far, k in reversed(list(zip(far_sides(corner), kernel))):
        pads += [0, k - 1] if far else [k - 1, 0]
    return tuple(pads)


def center(corner: str, kernel) -> tuple[int, ...]:
    """The tap aligned with the output position: k_i − 1 on a near axis, 0 on a far one."""
    return tuple(0 if far else k - 1 for far, k in zip(far_sides(corner), kernel))


def is_group_pattern(order: str) -> bool:
    return order in GROUP_DIMS


def groups(order: str, channels: int, dims: int | None = None) -> list[tuple[str, slice]]:
    """``(corner, channel slice)`` per channel group: one, or 2^d for the group pattern
    (``pair``, ``quad``, ``oct``: group g solved from corner g)."""
    if not is_group_pattern(order):
        return [(order, slice(0, channels))]
    corners = CORNERS_BY_DIMS[GROUP_DIMS[order]]
    size = channels // len(corners)
    return [(corner, slice(g * size, (g + 1) * size)) for g, corner in enumerate(corners)]


def _window(corner: str, kernel, sizes, start_far: bool) -> tuple[slice, ...]:
    """The ``sizes`` window of a result padded by k_i − 1 on both sides of every axis: it
    starts at k_i − 1 on an axis whose side is far (``start_far``) or near (otherwise), at
    0 on the others (DESIGN §15's quad window, in d axes)."""
    return tuple(slice(k - 1, k - 1 + n) if far == start_far else slice(0, n)
                 for far, k, n in zip(far_sides(corner), kernel, sizes))


def _build_center_parts(shape, order, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols, kernel = shape[0], shape[1], shape[2:]
    keep = torch.ones(shape, dtype=torch.bool, device=device)
    identity = torch.zeros(shape, dtype=dtype, device=device)
    strict_lower = torch.ones(cols, cols, dtype=torch.bool, device=device).tril(-1)
    eye = torch.eye(cols, dtype=dtype, device=device)
    for corner, part in groups(order, rows):
        index = (part, slice(None)) + center(corner, kernel)
        keep[index] = strict_lower
        identity[index] = eye
    return keep, identity


@functools.lru_cache(maxsize=128)
def _cached_center_parts(shape, order, dtype, device):
    # Built outside inference mode, so that constants cached during a torch.inference_mode()
    # call can be saved for backward by the calls after it (issue 26).
    with torch.inference_mode(False):
        return _build_center_parts(shape, order, dtype, device)


def _center_parts(weight: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, identity): keep is False where M overrides the weight; identity is M there.

    Eager calls reuse cached constants (building them is ~20 small ops, which dominated a
    batch-1 sampling pass); traced calls (torch.compile, torch.jit.trace, fake tensors) and
    calls under torch.func transforms (whose tensors made inside one must not outlive it)
    build fresh ones.
    """
    key = (tuple(weight.shape), order, weight.dtype, weight.device)
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch.jit.is_tracing()
            or type(weight) is not torch.Tensor and not isinstance(weight, torch.nn.Parameter)):
        return _build_center_parts(*key)
    return _cached_center_parts(*key)


def masked_weight(weight: torch.Tensor, order: str) -> torch.Tensor:
    """M(W): each group's centre tap becomes unit lower triangular.

    ``where`` rather than a multiply, so inf/NaN stored at masked positions is ignored and
    the gradient there is exactly 0. Without a derivative to record (evaluation, sampling)
    it is computed once per weight version.
    """
    return _weight_cache.derived(("masked", order), (weight,),
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


def _tunable(*tensors: torch.Tensor) -> bool:
    """Eager plain tensors (derivatives may be recorded): not traced, no torch.func."""
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch.jit.is_tracing()):
        return False
    return all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)


# --- the causal convolution -----------------------------------------------------------------

def causal_conv(x: torch.Tensor, weight_m: torch.Tensor, order: str,
                unit_center: bool = False) -> torch.Tensor:
    """``convNd`` with corner padding, on an already masked weight.

    ``unit_center=True`` says that ``weight_m`` is a masked weight M(W) (its centre unit
    lower triangular), not a masked tangent or gradient (centre diagonal 0): only then may
    the generated kernel, which applies M itself, be among the forms.
    """
    if _is_empty(x):
        # conv rejects an empty signal; the result is empty, as the solve's is. The sum
        # keeps the weight in the graph (its gradient is then an exact zero).
        return x + 0 * weight_m.sum()
    if _weight_cache.plain_eager(x, weight_m):
        # Sampling and evaluation: one of the equal forms (DESIGN §15, §16). Autograd,
        # tracing and export take the torch forms below, which they see through.
        forms = sampling_forms(order, weight_m.dim() - 2,
                               unit_center and x.dtype in KERNEL_DTYPES)
        if len(forms) > 1:
            return forms[_autotune.choose("causal_conv", order, forms, x, weight_m)](
                x, weight_m)
    if is_group_pattern(order):
        return _per_group(x, weight_m)
    return _padded_conv(x, weight_m, order)


def _padded_conv(x: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    return CONV[weight_m.dim() - 2](F.pad(x, padding(order, weight_m.shape[2:])), weight_m)


def _generated_kernel(x: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    """The causal conv as the generator emits it beside the solve (direction ``conv``):
    one call for every order, the group patterns included, from the solve's data layout
    without its recurrence. It masks the weight itself (masking twice changes nothing)."""
    from . import _dispatch   # imported late: _dispatch sits above the geometry

    return _dispatch.solve(x, weight_m, order, _dispatch.CONV)[0]


def _per_group(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """Each channel group padded at its corner and convolved on its own (2^d dense
    convolutions of C/2^d channels): the form for autograd, tracing and export."""
    dims, kernel = weight_m.dim() - 2, weight_m.shape[2:]
    parts = [CONV[dims](F.pad(x[:, part], padding(corner, kernel)), weight_m[part])
             for corner, part in groups(GROUP_PATTERN[dims], x.shape[1])]
    return torch.cat(parts, dim=1)


def _grouped(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """One grouped convolution with conv's own k_i − 1 padding on both sides of every axis,
    then each group's window (it starts at k_i − 1 where the group's corner is far)."""
    dims, kernel = weight_m.dim() - 2, tuple(weight_m.shape[2:])
    full = CONV[dims](x, weight_m, padding=tuple(k - 1 for k in kernel), groups=2 ** dims)
    return torch.cat([full[(slice(None), part) + _window(corner, kernel, x.shape[2:], True)]
                      for corner, part in groups(GROUP_PATTERN[dims], x.shape[1])], dim=1)


GROUP_FORMS = {"per_group": _per_group, "grouped": _grouped}


@functools.lru_cache(maxsize=None)
def sampling_forms(order: str, dims: int, with_kernel: bool) -> dict:
    """An order's equal forms of the causal conv, name -> fn(x, weight_m): the group
    pattern's :data:`GROUP_FORMS`, or a corner's pad and convolution; with the generated
    kernel when ``with_kernel``."""
    forms = dict(GROUP_FORMS) if is_group_pattern(order) else {
        "padded_conv": functools.partial(_padded_conv, order=order)}
    if with_kernel:
        forms["kernel"] = functools.partial(_generated_kernel, order=order)
    return forms


# --- its adjoint ----------------------------------------------------------------------------

def causal_conv_adjoint(u: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    """The adjoint of :func:`causal_conv` in its input (``Tᵀu``, forward-mode AD of the
    transposed solve): ``conv_transposeNd``, each group cropped to the unpadded signal; for
    the group pattern per group or in one grouped call (:data:`ADJOINT_GROUP_FORMS`)."""
    if _is_empty(u):
        return u + 0 * weight_m.sum()
    if is_group_pattern(order) and _tunable(u, weight_m):
        form = _autotune.choose("causal_conv_adjoint", order, ADJOINT_GROUP_FORMS, u, weight_m)
        return ADJOINT_GROUP_FORMS[form](u, weight_m)
    return _adjoint_per_group(u, weight_m, order)


def _adjoint_per_group(u: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    dims, kernel = weight_m.dim() - 2, tuple(weight_m.shape[2:])
    parts = []
    for corner, part in groups(order, u.shape[1]):
        full = CONV_TRANSPOSE[dims](u[:, part], weight_m[part])
        parts.append(full[(slice(None), slice(None))
                          + _window(corner, kernel, u.shape[2:], False)])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _adjoint_grouped(u: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """One grouped ``conv_transposeNd``, then each group's window (the forward's padding is
    at the group's corner, so the window starts at k_i − 1 where the corner is near)."""
    dims, kernel = weight_m.dim() - 2, tuple(weight_m.shape[2:])
    full = CONV_TRANSPOSE[dims](u, weight_m, groups=2 ** dims)
    return torch.cat([full[(slice(None), part) + _window(corner, kernel, u.shape[2:], False)]
                      for corner, part in groups(GROUP_PATTERN[dims], u.shape[1])], dim=1)


ADJOINT_GROUP_FORMS = {"per_group": lambda u, w: _adjoint_per_group(u, w, GROUP_PATTERN[w.dim() - 2]),
                       "grouped": _adjoint_grouped}


# --- the weight gradient --------------------------------------------------------------------

# Above this many input bytes the weight gradient runs over the batch in chunks (at least
# two, each of about this size), so its scratch (a padded copy, oneDNN's reordered copies
# of the input and of grad_out) is a chunk's rather than the whole batch's: the backward's
# peak memory then stays at or below conv's own (issue 18), and a chunk that fits in L2
# runs no slower.
WEIGHT_GRAD_CHUNK_BYTES = 512 * 1024
# Beyond this many chunks the scratch is already an eighth of the whole batch's; more would
# only add calls (kernel launches on a GPU, whose batches run to many MiB).
WEIGHT_GRAD_MAX_CHUNKS = 8


def conv_weight_grad(inp: torch.Tensor, grad_out: torch.Tensor, weight_shape,
                     order: str) -> torch.Tensor:
    """d<grad_out, causal_conv(inp, W)>/dW, unmasked (the standard conv weight gradient).

    Plain eager calls (the backward of the solve) take one of :func:`weight_grad_forms`
    (chosen when there are two), over the batch in chunks of
    :data:`WEIGHT_GRAD_CHUNK_BYTES`. Tracing, torch.func and a
    recorded double backward take the per-group padded form; symbolic sizes a forward-conv
    form (Inductor's lowering of convolution_backward fails there: "Invalid ranges").
    """
    if _is_empty(inp):   # no position, no gradient (conv rejects it)
        return grad_out.new_zeros(tuple(weight_shape))
    if not all(isinstance(size, int) for size in inp.shape[2:]):
        return _weight_grad_as_conv(inp, grad_out, weight_shape, order)
    if not _weight_cache.plain_eager(inp, grad_out):
        return _weight_grad_padded(inp, grad_out, weight_shape, order)
    forms = {name: functools.partial(_in_batch_chunks, form, weight_shape=tuple(weight_shape),
                                     order=order)
             for name, form in weight_grad_forms(order).items()}
    form = (_autotune.choose("conv_weight_grad", order, forms, inp, grad_out)
            if len(forms) > 1 else "padded")
    return forms[form](inp, grad_out)


def _in_batch_chunks(form, inp: torch.Tensor, grad_out: torch.Tensor, weight_shape, order):
    """``form`` summed over chunks of the batch (:func:`batch_chunks`)."""
    chunks = batch_chunks(form, inp, order)
    if chunks == 1:
        return form(inp, grad_out, weight_shape, order)
    total = None
    for inp_part, grad_part in zip(inp.tensor_split(chunks), grad_out.tensor_split(chunks)):
        part = form(inp_part, grad_part, weight_shape, order)
        total = part if total is None else total.add_(part)   # parts are ours to reuse
    return total


def batch_chunks(form, inp: torch.Tensor, order: str) -> int:
    """One chunk up to WEIGHT_GRAD_CHUNK_BYTES of input; above, at least two, of about the
    bytes each call of ``form`` handles at once: 1/G of the channels for the group
    pattern's per-group padded form (so G× the bytes per chunk: every chunk costs it G
    calls), all C for its dense block-diagonal form, whose reorders cover G× the channels
    (so 1/G)."""
    size = inp.numel() * inp.element_size()
    if size <= WEIGHT_GRAD_CHUNK_BYTES:
        return 1
    count = len(groups(order, inp.shape[1]))
    per_chunk = WEIGHT_GRAD_CHUNK_BYTES
    if count > 1 and form is _weight_grad_padded:
        per_chunk *= count
    elif form is _weight_grad_block_diagonal:
        per_chunk = max(1, per_chunk // count)
    return min(inp.shape[0], WEIGHT_GRAD_MAX_CHUNKS, max(2, -(-size // per_chunk)))


def _convolution_weight_grad(grad_out, inp, shape, pad, groups_):
    """``aten.convolution_backward``'s weight gradient, given the weight's shape as a
    zero-stride tensor: ``torch.nn.grad.conv2d_weight`` does the same, but its ``expand``
    of a Python-int shape broke backward under ``torch.compile(dynamic=True)``."""
    dims = inp.dim() - 2
    shape_only = grad_out.new_zeros(()).expand(*shape)
    return torch.ops.aten.convolution_backward(
        grad_out, inp, shape_only, None, [1] * dims, list(pad), [1] * dims, False, [0] * dims,
        groups_, (False, True, False))[1]


def _weight_grad_padded(inp, grad_out, weight_shape, order):
    """Each group's input padded at its corner (a copy), then conv's k×k weight gradient."""
    kernel = tuple(weight_shape[2:])
    parts = [_convolution_weight_grad(grad_out[:, part],
                                      F.pad(inp[:, part], padding(corner, kernel)),
                                      (part.stop - part.start, weight_shape[1], *kernel),
                                      (0,) * len(kernel), 1)
             for corner, part in groups(order, inp.shape[1])]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _weight_grad_windows(full: torch.Tensor, order: str, kernel) -> torch.Tensor:
    """Each group's k-sized window (along the output channels) of a (2k−1)-sized weight
    gradient computed with conv's own k−1 padding on every side."""
    parts = [full[(part, slice(None)) + _window(corner, kernel, kernel, True)]
             for corner, part in groups(order, full.shape[0])]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _weight_grad_block_diagonal(inp, grad_out, weight_shape, order):
    """The group pattern in one dense call with conv's own padding (G× the multiply-adds,
    but the dense kernel beats the grouped one at small C), then each group's block and
    window. The blocks off the diagonal are computed and dropped; a diagonal block reads
    only its own group's input and gradient, so a non-finite value stays in its group."""
    kernel, channels = tuple(weight_shape[2:]), inp.shape[1]
    full = _convolution_weight_grad(grad_out, inp,
                                    (channels, channels, *(2 * k - 1 for k in kernel)),
                                    tuple(k - 1 for k in kernel), 1)
    diagonal = torch.cat([full[part, part.start:part.stop]
                          for _, part in groups(order, channels)], dim=0)
    return _weight_grad_windows(diagonal, order, kernel)


# The copy-free form (conv's own padding, a (2k−1)^d gradient, a window per group) was a
# third: slower than the padded copy at every shape measured with 2 threads (issue 18: 2.8×
# the multiply-adds for k=3), and the batch chunks already bound the copy's memory; it went
# with issue 25, so that the fixed rule chooses among forms that can win.
WEIGHT_GRAD_FORMS = {"padded": _weight_grad_padded,
                     "block_diagonal": _weight_grad_block_diagonal}


def weight_grad_forms(order: str) -> dict:
    """The weight gradient's equal forms for an order: the padded form; for a group pattern
    also the dense block-diagonal one. A corner has one form."""
    if is_group_pattern(order):
        return WEIGHT_GRAD_FORMS
    return {"padded": _weight_grad_padded}


def _weight_grad_as_conv(inp, grad_out, weight_shape, order) -> torch.Tensor:
    """The same weight gradient as one forward conv per group with batch and channels
    swapped (grad_out is the kernel)."""
    dims, kernel = len(weight_shape) - 2, tuple(weight_shape[2:])
    parts = [CONV[dims](F.pad(inp[:, part], padding(corner, kernel)).transpose(0, 1),
                        grad_out[:, part].transpose(0, 1)).transpose(0, 1)
             for corner, part in groups(order, inp.shape[1])]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


@torch.no_grad()
def stability_bound(weight: torch.Tensor, order: str) -> float:
    """ρ = Σ_t ‖L⁻¹ W_t‖_∞ over the off-centre taps (per channel group, the largest), for
    any dimension; ρ < 1 guarantees ``max|x| ≤ ‖L⁻¹‖_∞ max|y| / (1 − ρ)`` at any size."""
    kernel = tuple(weight.shape[2:])
    w = _apply_mask(weight.detach().double(), order)
    bounds = []
    for corner, part in groups(order, w.shape[0]):
        taps = w[part]
        index = (slice(None), slice(None)) + center(corner, kernel)
        folded = torch.einsum("ab,bc...->ac...", torch.linalg.inv(taps[index]), taps)
        folded[index] = 0
        bounds.append(folded.abs().sum(dim=1).amax(dim=0).sum())   # Σ_t ‖·‖_∞
    return float(max(bounds))
