"""Corner geometry and the mask M of DESIGN.md §2, as differentiable torch code."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _autotune, _weight_cache

QUAD_CORNERS = ("TL", "TR", "BL", "BR")


def padding(corner: str, kh: int, kw: int) -> tuple[int, int, int, int]:
    """``F.pad`` tuple (left, right, top, bottom) for a corner."""
    left = kw - 1 if corner in ("TL", "BL") else 0
    top = kh - 1 if corner in ("TL", "TR") else 0
    return left, kw - 1 - left, top, kh - 1 - top


def center(corner: str, kh: int, kw: int) -> tuple[int, int]:
    return (kh - 1 if corner in ("TL", "TR") else 0, kw - 1 if corner in ("TL", "BL") else 0)


def groups(order: str, channels: int) -> list[tuple[str, slice]]:
    """``(corner, channel slice)`` for each channel group of an order."""
    if order != "quad":
        return [(order, slice(0, channels))]
    cg = channels // 4
    return [(corner, slice(g * cg, (g + 1) * cg)) for g, corner in enumerate(QUAD_CORNERS)]


def _build_center_parts(shape, order, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols, kh, kw = shape
    keep = torch.ones(shape, dtype=torch.bool, device=device)
    identity = torch.zeros(shape, dtype=dtype, device=device)
    strict_lower = torch.ones(cols, cols, dtype=torch.bool, device=device).tril(-1)
    eye = torch.eye(cols, dtype=dtype, device=device)
    for corner, part in groups(order, rows):
        ci, cj = center(corner, kh, kw)
        keep[part, :, ci, cj] = strict_lower
        identity[part, :, ci, cj] = eye
    return keep, identity


_cached_center_parts = functools.lru_cache(maxsize=128)(_build_center_parts)


def _center_parts(weight: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, identity): keep is False where M overrides the weight; identity is M there.

    Eager calls reuse cached constants (building them is ~20 small ops, which dominated
    a batch-1 sampling pass); traced calls (torch.compile, fake tensors) and calls under
    torch.func transforms (whose tensors made inside one must not outlive it) build fresh ones.
    """
    key = (tuple(weight.shape), order, weight.dtype, weight.device)
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or type(weight) is not torch.Tensor and not isinstance(weight, torch.nn.Parameter)):
        return _build_center_parts(*key)
    return _cached_center_parts(*key)


def masked_weight(weight: torch.Tensor, order: str) -> torch.Tensor:
    """M(W): the center tap becomes unit lower triangular.

    ``where`` rather than a multiply, so inf/NaN stored at masked positions is ignored and
    the gradient there is exactly 0. Without a derivative to record (evaluation,
    sampling) it is computed once per weight version.
    """
    return _weight_cache.derived(("masked", order), (weight,),
                                 lambda: _apply_mask(weight, order))


def _apply_mask(weight: torch.Tensor, order: str) -> torch.Tensor:
    keep, identity = _center_parts(weight, order)
    return torch.where(keep, weight, identity)


def mask_gradient(grad: torch.Tensor, order: str) -> torch.Tensor:
    keep, _ = _center_parts(grad, order)
    return torch.where(keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


def causal_conv(x: torch.Tensor, weight_m: torch.Tensor, order: str,
                unit_center: bool = False) -> torch.Tensor:
    """conv2d with corner padding, on an already masked weight.

    ``unit_center=True`` says that ``weight_m`` is a masked weight M(W) (its centre unit
    lower triangular), not a masked tangent or gradient (centre diagonal 0): only then may
    the generated kernel, which applies M itself, be among the forms.
    """
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    if x.shape[2] == 0 or x.shape[3] == 0:
        # conv2d rejects an empty image; the result is empty, as inv_conv2d's is. The sum
        # keeps the weight in the graph (its gradient is then an exact zero).
        return x + 0 * weight_m.sum()
    if _weight_cache.plain_eager(x, weight_m):
        # Sampling and evaluation take the fastest form for the shape: the generated kernel
        # (DESIGN §15) or a torch convolution. Autograd, tracing and export take the torch
        # form below (plain pads and convolutions, which they see through).
        forms = sampling_forms(order, unit_center and x.dtype in KERNEL_DTYPES)
        if len(forms) > 1:
            tag = f"causal_conv_{order}" + ("" if "kernel" in forms else "_torch")
            form = _autotune.fastest(tag, forms, x, weight_m)
            return forms[form](x, weight_m)
    if order != "quad":
        return _padded_conv(x, weight_m, order)
    return _quad_per_group(x, weight_m)


def _padded_conv(x: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    return F.conv2d(F.pad(x, padding(order, kh, kw)), weight_m)


def _generated_kernel(x: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    """The causal conv as the generator emits it beside the solve (direction ``conv``):
    one call for every order, quad's four groups included, from the solve's data layout
    without its recurrence. It masks the weight itself (masking twice changes nothing)."""
    from . import _dispatch   # _dispatch imports the validation this module's users share

    return _dispatch.solve(x, weight_m, order, _dispatch.CONV)[0]


def _quad_per_group(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """Each channel group padded at its corner and convolved on its own (four dense
    convolutions of C/4 channels): the form for autograd, tracing and export."""
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    parts = [F.conv2d(F.pad(x[:, part], padding(corner, kh, kw)), weight_m[part])
             for corner, part in groups("quad", x.shape[1])]
    return torch.cat(parts, dim=1)


def _quad_grouped(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """One ``groups=4`` convolution with conv's own padding, then each group's window."""
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    full = F.conv2d(x, weight_m, padding=(kh - 1, kw - 1), groups=4)
    return _group_windows(full, "quad", 1, (x.shape[2], x.shape[3]), adjoint=False)


def _quad_block_diagonal(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """One dense convolution with the block-diagonal C×C weight, then each group's window:
    4× the multiply-adds, but at small C and batch 1 the dense path (im2col and one GEMM)
    costs less than a grouped convolution's set-up."""
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    dense = _weight_cache.derived("block_diagonal", (weight_m,), lambda: block_diagonal(weight_m))
    full = F.conv2d(x, dense, padding=(kh - 1, kw - 1))
    return _group_windows(full, "quad", 1, (x.shape[2], x.shape[3]), adjoint=False)


def block_diagonal(weight_g: torch.Tensor) -> torch.Tensor:
    """(C, C/4, kh, kw) grouped weight -> (C, C, kh, kw) dense weight, zero off its blocks
    (built by padding, not by a product, so an inf in one group never reaches another)."""
    cg = weight_g.shape[1]
    return torch.cat([F.pad(weight_g[part], (0, 0, 0, 0, g * cg, (3 - g) * cg))
                      for g, (_, part) in enumerate(groups("quad", weight_g.shape[0]))], dim=0)


def _quad_embedded(x: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    """One dense "same" convolution whose (2k_h−1)×(2k_w−1) kernel holds each group's taps
    in that group's corner: no window, no copy, a single op (what counts at batch 1 on
    tiny images), at ~11× the grouped multiply-adds for k=3."""
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    dense = _weight_cache.derived("embedded", (weight_m,), lambda: embedded(weight_m))
    return F.conv2d(x, dense, padding=(kh - 1, kw - 1))


def embedded(weight_g: torch.Tensor) -> torch.Tensor:
    """(C, C/4, kh, kw) quad weight -> (C, C, 2kh−1, 2kw−1): group g's taps in its block,
    shifted down by kh−1 for a bottom corner and right by kw−1 for a right one."""
    cg, kh, kw = weight_g.shape[1], weight_g.shape[2], weight_g.shape[3]
    blocks = []
    for g, (_, part) in enumerate(groups("quad", weight_g.shape[0])):
        down, right = (g // 2) * (kh - 1), (g % 2) * (kw - 1)
        blocks.append(F.pad(weight_g[part], (right, kw - 1 - right, down, kh - 1 - down,
                                             g * cg, (3 - g) * cg)))
    return torch.cat(blocks, dim=0)


# The kernels take float32 and float64 (bfloat16/float16 reach here only as float32 copies).
KERNEL_DTYPES = (torch.float32, torch.float64)
QUAD_FORMS = {"per_group": _quad_per_group, "grouped": _quad_grouped,
              "block_diagonal": _quad_block_diagonal, "embedded": _quad_embedded}


@functools.lru_cache(maxsize=None)
def sampling_forms(order: str, with_kernel: bool) -> dict:
    """An order's equal forms of the causal conv, name -> fn(x, weight_m): quad's four, or a
    corner's pad and convolution; with the generated kernel when ``with_kernel``."""
    forms = dict(QUAD_FORMS) if order == "quad" else {
        "padded_conv": functools.partial(_padded_conv, order=order)}
    if with_kernel:
        forms["kernel"] = functools.partial(_generated_kernel, order=order)
    return forms


def causal_conv_adjoint(u: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    """The adjoint of :func:`causal_conv` in its input (``Tᵀu``, forward-mode AD of the
    transposed solve): ``conv_transpose2d``, each group cropped to the unpadded image.

    Quad has the forward's equal forms, transposed (DESIGN §15): four calls, one
    ``groups=4`` call with a window per group, one dense call with the block-diagonal
    weight, or one "same" call with the embedded (2k−1)² kernel and no window. Plain eager
    calls take the fastest for the shape; tracing and torch.func take the per-group form.
    """
    if order == "quad" and _tunable(u, weight_m):
        form = _autotune.fastest("causal_conv_adjoint_quad", ADJOINT_QUAD_FORMS, u, weight_m)
        return ADJOINT_QUAD_FORMS[form](u, weight_m)
    return _adjoint_per_group(u, weight_m, order)


def _tunable(*tensors: torch.Tensor) -> bool:
    """Eager plain tensors (derivatives may be recorded): not traced, no torch.func."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)


def _adjoint_per_group(u: torch.Tensor, weight_m: torch.Tensor, order: str) -> torch.Tensor:
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    parts = []
    for corner, part in groups(order, u.shape[1]):
        left, right, top, bottom = padding(corner, kh, kw)
        full = F.conv_transpose2d(u[:, part], weight_m[part])
        parts.append(full[:, :, top:full.shape[2] - bottom, left:full.shape[3] - right])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _group_windows(full: torch.Tensor, order: str, dim: int, size: tuple[int, int],
                   adjoint: bool) -> torch.Tensor:
    """Each channel group's ``size`` window of a result computed with conv's own k−1
    padding on every side (DESIGN §15), groups along ``dim`` (1 for images, 0 for weight
    gradients). Group g's window starts at row 0 for a top corner (k_h−1 for a bottom
    one) and column 0 for a left corner (k_w−1 for a right one); the adjoint's, whose
    padding is at the opposite corner, at the other end."""
    rows, cols = size
    row_step, col_step = full.shape[2] - rows, full.shape[3] - cols
    parts = []
    for corner, part in groups(order, full.shape[dim]):
        left, _, top, _ = padding(corner, row_step + 1, col_step + 1)
        r0, c0 = (top, left) if adjoint else (row_step - top, col_step - left)
        window = full[:, :, r0:r0 + rows, c0:c0 + cols]
        parts.append(window.narrow(dim, part.start, part.stop - part.start))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _adjoint_grouped(u: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    full = F.conv_transpose2d(u, weight_m, groups=4)
    return _group_windows(full, "quad", 1, (u.shape[2], u.shape[3]), adjoint=True)


def _adjoint_block_diagonal(u: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    full = F.conv_transpose2d(u, block_diagonal(weight_m))
    return _group_windows(full, "quad", 1, (u.shape[2], u.shape[3]), adjoint=True)


def _adjoint_embedded(u: torch.Tensor, weight_m: torch.Tensor) -> torch.Tensor:
    kh, kw = weight_m.shape[2], weight_m.shape[3]
    return F.conv_transpose2d(u, embedded(weight_m), padding=(kh - 1, kw - 1))


ADJOINT_QUAD_FORMS = {"per_group": lambda u, w: _adjoint_per_group(u, w, "quad"),
                      "grouped": _adjoint_grouped, "block_diagonal": _adjoint_block_diagonal,
                      "embedded": _adjoint_embedded}

# Above this many input bytes the weight gradient runs over the batch in chunks (at least
# two, each of about this size), so its scratch (a padded copy, oneDNN's reordered copies
# of the input and of grad_out) is a chunk's rather than the whole batch's: the backward's
# peak memory then stays at or below conv's own (issue 18), and a chunk that fits in L2
# runs no slower.
WEIGHT_GRAD_CHUNK_BYTES = 512 * 1024
# Beyond this many chunks the scratch is already an eighth of the whole batch's; more would
# only add calls (kernel launches on a GPU, whose batches run to many MiB).
WEIGHT_GRAD_MAX_CHUNKS = 8


def conv_weight_grad(inp: torch.Tensor, grad_out: torch.Tensor, weight_shape, order: str):
    """d<grad_out, causal_conv(inp, W)>/dW, unmasked (the standard conv weight gradient).

    Plain eager calls (the backward of ``inv_conv2d``) take the fastest of the
    equal forms for the shape (:data:`WEIGHT_GRAD_FORMS`), over the batch in chunks of
    :data:`WEIGHT_GRAD_CHUNK_BYTES`. Tracing, torch.func and a recorded double backward
    take the per-group padded form; symbolic H or W a forward-conv form.
    """
    kh, kw = weight_shape[2], weight_shape[3]
    if inp.shape[2] == 0 or inp.shape[3] == 0:   # no pixel, no gradient (conv rejects it)
        return grad_out.new_zeros(tuple(weight_shape))
    if not all(isinstance(size, int) for size in inp.shape[2:]):
        parts = [_weight_grad_as_conv(F.pad(inp[:, part], padding(corner, kh, kw)),
                                      grad_out[:, part])
                 for corner, part in groups(order, inp.shape[1])]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    if not _weight_cache.plain_eager(inp, grad_out):
        return _weight_grad_padded(inp, grad_out, weight_shape, order)
    forms = {name: functools.partial(_in_batch_chunks, form, weight_shape=tuple(weight_shape),
                                     order=order)
             for name, form in WEIGHT_GRAD_FORMS.items() if order == "quad" or name in _CORNER}
    form = _autotune.fastest(f"conv_weight_grad_{order}_{kh}x{kw}", forms, inp, grad_out)
    return forms[form](inp, grad_out)


def _in_batch_chunks(form, inp: torch.Tensor, grad_out: torch.Tensor, weight_shape, order):
    """``form`` summed over chunks of the batch (:func:`_batch_chunks`)."""
    chunks = _batch_chunks(form, inp, order)
    if chunks == 1:
        return form(inp, grad_out, weight_shape, order)
    total = None
    for inp_part, grad_part in zip(inp.tensor_split(chunks), grad_out.tensor_split(chunks)):
        part = form(inp_part, grad_part, weight_shape, order)
        total = part if total is None else total.add_(part)   # parts are ours to reuse
    return total


def _batch_chunks(form, inp: torch.Tensor, order: str) -> int:
    """One chunk up to WEIGHT_GRAD_CHUNK_BYTES of input; above, at least two, of about the
    bytes each call of ``form`` handles at once: a quarter of the channels for quad's
    per-group padded form (so 4× the bytes per chunk: every chunk costs it four calls), all
    C for its dense block-diagonal form, whose reorders cover 4× the channels (so ¼)."""
    size = inp.numel() * inp.element_size()
    if size <= WEIGHT_GRAD_CHUNK_BYTES:
        return 1
    per_chunk = WEIGHT_GRAD_CHUNK_BYTES
    if order == "quad" and form is _weight_grad_padded:
        per_chunk *= 4
    elif form is _weight_grad_block_diagonal:
        per_chunk = max(1, per_chunk // 4)
    return min(inp.shape[0], WEIGHT_GRAD_MAX_CHUNKS, max(2, -(-size // per_chunk)))


def _convolution_weight_grad(grad_out, inp, shape, pad, groups_):
    """``aten.convolution_backward``'s weight gradient, given the weight's shape as a
    zero-stride tensor: ``torch.nn.grad.conv2d_weight`` does the same, but its ``expand``
    of a Python-int shape broke backward under ``torch.compile(dynamic=True)``."""
    shape_only = grad_out.new_zeros(()).expand(*shape)
    return torch.ops.aten.convolution_backward(
        grad_out, inp, shape_only, None, [1, 1], list(pad), [1, 1], False, [0, 0], groups_,
        (False, True, False))[1]


def _weight_grad_padded(inp, grad_out, weight_shape, order):
    """Each group's input padded at its corner (a copy), then conv's k×k weight gradient."""
    kh, kw = weight_shape[2], weight_shape[3]
    parts = [_convolution_weight_grad(grad_out[:, part],
                                      F.pad(inp[:, part], padding(corner, kh, kw)),
                                      (part.stop - part.start, weight_shape[1], kh, kw),
                                      (0, 0), 1)
             for corner, part in groups(order, inp.shape[1])]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _weight_grad_conv_padding(inp, grad_out, weight_shape, order):
    """No copy: conv's own k−1 padding on every side gives a (2k−1)² weight gradient (each
    group in one ``groups=4`` call for quad), and each group takes its k×k window."""
    kh, kw = weight_shape[2], weight_shape[3]
    full = _convolution_weight_grad(grad_out, inp, (weight_shape[0], weight_shape[1],
                                                    2 * kh - 1, 2 * kw - 1),
                                    (kh - 1, kw - 1), 4 if order == "quad" else 1)
    return _group_windows(full, order, 0, (kh, kw), adjoint=False)


def _weight_grad_block_diagonal(inp, grad_out, weight_shape, order):
    """Quad in one dense call with conv's own padding (4× the multiply-adds, but the dense
    kernel beats the grouped one at small C), then each group's block and window."""
    kh, kw = weight_shape[2], weight_shape[3]
    channels, cg = inp.shape[1], weight_shape[1]
    full = _convolution_weight_grad(grad_out, inp, (channels, channels, 2 * kh - 1, 2 * kw - 1),
                                    (kh - 1, kw - 1), 1)
    diagonal = torch.cat([full[part, part.start:part.stop]
                          for _, part in groups("quad", channels)], dim=0)
    return _group_windows(diagonal, order, 0, (kh, kw), adjoint=False)


WEIGHT_GRAD_FORMS = {"padded": _weight_grad_padded, "conv_padding": _weight_grad_conv_padding,
                     "block_diagonal": _weight_grad_block_diagonal}
_CORNER = ("padded", "conv_padding")


def _weight_grad_as_conv(padded: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The same weight gradient as one forward conv with batch and channels swapped
    (grad_out is the kernel). Used when H or W is symbolic (torch.compile(dynamic=True)):
    Inductor's lowering of convolution_backward fails there ("Invalid ranges")."""
    return F.conv2d(padded.transpose(0, 1), grad_out.transpose(0, 1)).transpose(0, 1)
