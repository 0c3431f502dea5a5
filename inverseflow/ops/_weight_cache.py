"""Tensors derived from weights (the masked k×k weight, the 1×1 inverse), computed once per
weight version when no derivative is wanted (evaluation, sampling).

A cached value is reused only while every source tensor is the same object, with the
same version counter (every in-place update bumps it, so optimizer steps and
``load_state_dict`` invalidate), storage and layout, and equal contents: writes through
``tensor.data`` bypass the version counter (``gradcheck``'s numerical perturbation does
exactly that), so a snapshot of each source is compared too. The sources are weights
(C×C×k×k at most), so the comparison is one small op where the derived value costs
several (block-diagonal and embedded weights, the 1×1 inverse).

A cached value is always an ordinary tensor: one computed inside ``torch.inference_mode``
is computed with inference mode off (its sources are ordinary tensors), so that a later
call outside inference mode can save it for backward. Nothing is cached, or served, under
``torch.jit.trace``, ``torch.compile``, torch.func transforms, for tensor subclasses or
inference-tensor sources, or while a derivative is recorded (:func:`cacheable`): a trace
must record the computation, not bake a value in as a constant. docs/guides/limits.md
states this for users.
"""

from __future__ import annotations

import weakref

import torch
import torch.autograd.forward_ad as _forward_ad

_entries: dict[tuple, tuple] = {}


def _stamp(t: torch.Tensor) -> tuple:
    return (t._version, t.data_ptr(), t.shape, t.stride(), t.dtype, t.device)


def plain_eager(*tensors: torch.Tensor) -> bool:
    """No derivative to record (no graph, no forward-mode tangent), no tracing (Dynamo or
    ``torch.jit.trace``), no torch.func transform, and plain tensors (no subclass such as
    a fake tensor). The callers take their fast forms (compiled kernels writing into
    preallocated outputs, cached weights) only then: ``torch.jit.trace`` records torch ops
    alone, so a kernel's output would be traced as the ``empty_like`` it was written into."""
    # Tracing first: Dynamo must not meet the C-level queries below (graph breaks).
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch._C._is_fwd_grad_enabled() and _forward_ad._current_level >= 0:
        return False
    return all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)


def cacheable(*tensors: torch.Tensor) -> bool:
    """Whether a value derived from ``tensors`` may come from (and go to) the cache:
    :func:`plain_eager`, and versioned (inference tensors have no version counter)."""
    return plain_eager(*tensors) and not any(t.is_inference() for t in tensors)


def derived(tag, tensors: tuple, compute):
    """``compute()``, or its value from the last call with the same ``tag`` and unchanged
    ``tensors``. Entries go away with their first source tensor."""
    if not cacheable(*tensors):
        return compute()
    key = (tag, *(id(t) for t in tensors))
    stamps = tuple(_stamp(t) for t in tensors)
    entry = _entries.get(key)
    if entry is not None:
        refs, old_stamps, snapshots, value = entry
        if (all(r() is t for r, t in zip(refs, tensors)) and old_stamps == stamps
                and all(torch.equal(s, t) for s, t in zip(snapshots, tensors))):
            return value
    # Inference mode off: a value made under it would be an inference tensor, which a later
    # call outside inference mode cannot save for backward (the sources are not inference
    # tensors here, so this computes from ordinary tensors into ordinary tensors).
    with torch.inference_mode(False), torch.no_grad():
        value = compute()
        snapshots = tuple(t.detach().clone() for t in tensors)
    _entries[key] = (tuple(weakref.ref(t) for t in tensors), stamps, snapshots, value)
    if entry is None:   # one finalizer per key, not one per weight version
        weakref.finalize(tensors[0], _entries.pop, key, None)
    return value
