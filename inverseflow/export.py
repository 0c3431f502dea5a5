"""Exporting a trained sampler (DESIGN §13): noise → image in [0, 1] as a ``torch.export``
program (``.pt2``) or an ONNX model, runnable without this package.

With ``solve_on="density"`` (the Inverse-Flow placement, Nagar & Varma, AISTATS 2025) the
sampling pass has no triangular solve: the k×k layer is a corner-padded ``conv2d``. So the
exported program is plain ATen (or ONNX) operators, and ``torch.export.load`` or
onnxruntime runs it with no custom op. With ``solve_on="sampling"`` (FInC/Emerging) the
sampler calls ``torch.ops.inverseflow.inv_conv2d``: a ``.pt2`` then loads only where
``import inverseflow`` works, and ONNX, which has no such operator, is refused.

The exported function is deterministic: it takes one standard-normal tensor per latent
(:func:`noise_shapes`; the caller draws the noise) and applies the temperature, the
learned priors (split and top-level mean and scale) and every inverse layer inside.
Layers whose eager inverse loops until convergence get a fixed count proven enough
(:class:`SmoothLeakyReLUInverse`, :class:`ConvExpInverse`). A layer this module does not
know is refused by name, and every export is checked against the model's own ``decode``
before it is kept.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
import secrets
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Transform
from zuko.transforms import MonotonicRQSTransform

from .models import ConvFlow, ImageFlow, InverseFlow
from .models.flow import FlowStep
from .models.inputs import check_temperature, positive_count
from .nn import (ActNorm, AffineCoupling, ConvExp2d, Dequantize, EmergingConv2d, InvConv2d,
                 InvertibleConv1x1, LogitTransform, SmoothLeakyReLU, SplineActivation, Split,
                 Squeeze)
from .ops._geometry import causal_conv, masked_weight
from .train.preflight import prepare_output_file
from .train.quoting import clip

FORMATS = ("pt2", "onnx")
# The largest |exported − decode| / max |decode| accepted (float32 rounding, with room).
TOLERANCE = 1e-5

# Layers whose ``inverse`` is already a fixed sequence of plain tensor operations (and
# Dequantize, which the sampling pass does not call).
_PLAIN = (Dequantize, ActNorm, AffineCoupling, LogitTransform, Split, Squeeze, FlowStep, nn.ModuleList, nn.Sequential, nn.Conv2d, nn.ReLU)


class ExportError(ValueError):
    """A model, or a layer of it, that cannot be exported in the format asked for."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_sampler` wrote: the file, its format, its inputs' names and
    per-image noise shapes ``(C, H, W)``, the batch (None: any), the temperature, whether the
    program calls ``torch.ops.inverseflow`` (solve on sampling), and its largest relative
    error against the model's ``decode`` on fresh noise."""

    path: Path
    format: str
    input_names: tuple[str, ...]
    noise_shapes: tuple[tuple[int, int, int], ...]   # per image: (C, H, W) of each input
    batch: int | None                                # None: any batch (--dynamic-batch)
    temperature: float
    needs_inverseflow: bool     # the program calls torch.ops.inverseflow (solve on sampling)
    max_rel_error: float        # against the model's decode, on fresh noise (see _check_parity)


def noise_shapes(model: ImageFlow) -> list[tuple[int, int, int]]:
    """(C, H, W) of each input of the exported sampler, in order. InverseFlow and Glow:
    the factored-out half of every level but the last, then the top latent (the order of
    ``model.encode``'s flat ``z``). ConvFlow: one tensor, the last block's output."""
    if isinstance(model, InverseFlow):
        return [tuple(s) for s in model.latent_shapes]
    if isinstance(model, ConvFlow):
        return [tuple(model.latent_shape)]
    raise ExportError(f"model must be an InverseFlow, Glow or ConvFlow, got {type(model).__name__}")


class Conv1x1Inverse(nn.Module):
    """Glow's 1×1 conv, inverted once at export: its inverse weight is a buffer."""

    def __init__(self, layer: InvertibleConv1x1):
        super().__init__()
        with torch.no_grad():    # the computation of the layer's own inverse
            inverse = torch.linalg.inv(layer.matrix())     # column-major: made row-major
            self.register_buffer("weight", inverse[:, :, None, None].contiguous())

    def inverse(self, z):
        return F.conv2d(z, self.weight)


class CausalConvInverse(nn.Module):
    """An Inverse-Flow k×k layer's sampling direction, ``causal_conv2d``, with the mask
    applied once: corner padding and ``conv2d`` only (no ``inverseflow`` op in the graph)."""

    def __init__(self, layer: InvConv2d):
        super().__init__()
        self.order = layer.order
        with torch.no_grad():
            self.register_buffer("weight", masked_weight(layer.weight, layer.order).clone())

    def inverse(self, z):
        return causal_conv(z, self.weight, self.order)


class _SplineWithKnots(MonotonicRQSTransform):
    """zuko's rational-quadratic spline built from its knots (zuko's own constructor
    derives them from the raw parameters); the spline's maths stays zuko's."""

    def __init__(self, horizontal, vertical, derivatives):
        Transform.__init__(self)
        self.horizontal, self.vertical, self.derivatives = horizontal, vertical, derivatives


class SplineInverse(nn.Module):
    """A :class:`~inverseflow.nn.SplineActivation`'s inverse (zuko's bin search, a count of
    knots below the value, and its quadratic root) with the knots computed once, by the
    eager layer, as buffers: the exported graph then has no softmax, cumsum or exp of the
    parameters, whose rounding differs between runtimes (and scales with the tail bound)."""

    def __init__(self, layer: SplineActivation):
        super().__init__()
        with torch.no_grad():
            transform = layer._transform()
        for name in ("horizontal", "vertical", "derivatives"):
            self.register_buffer(name, getattr(transform, name).detach().contiguous())

    def inverse(self, y):
        return _SplineWithKnots(self.horizontal, self.vertical, self.derivatives).inv(y)


def smooth_leaky_relu_newton_steps(alpha: float, dtype: torch.dtype) -> int:
    """Newton steps that bring :class:`SmoothLeakyReLUInverse` within half of ``dtype``'s
    epsilon (absolute, in exact arithmetic) of the root from every y. Proof:

    f(x) = αx + (1−α) softplus(x) is increasing and convex, with α < f' < 1 and
    f'' ≤ M = (1−α)/4. Started right of the root x* (f(x₀) ≥ y), Newton's iterates stay
    right of it, and by the mean value theorem the error e = x − x* obeys
    e' = e (1 − f'(ξ)/f'(x)) ≤ min((1−α) e, (M/α) e²). The start x₀ = min(y, y/α) is right
    of x* with e₀ ≤ (1−α) log 2 / α for y < 0 (then x* < 0, softplus(x*) < log 2) and
    e₀ ≤ (1−α) softplus((1−α) log 2 / α) for y ≥ 0 (then x* ≥ f⁻¹(0) ≥ −(1−α) log 2 / α).
    Iterating the bound from the larger start gives the count (α = 0.3: 7 for float32,
    8 for float64); rounding adds only the last step's own error, which the tests measure.
    """
    shift = (1 - alpha) * math.log(2) / alpha
    error = max(shift, (1 - alpha) * math.log1p(math.exp(shift)))
    quadratic, target, steps = (1 - alpha) / 4 / alpha, torch.finfo(dtype).eps / 2, 0
    while error > target:
        error, steps = min((1 - alpha) * error, quadratic * error * error), steps + 1
    return steps


class SmoothLeakyReLUInverse(nn.Module):
    """The smooth leaky ReLU's inverse as a fixed number of Newton steps, without the
    eager inverse's data-dependent stopping test (which no exported graph can hold):
    :func:`smooth_leaky_relu_newton_steps` gives the count and its proof. ±inf map to
    themselves, and a y whose preimage y/α overflows to −inf stays there, as in the eager
    layer; the eager layer's error on NaN cannot be raised by a graph (NaN stays NaN)."""

    def __init__(self, layer: SmoothLeakyReLU, dtype: torch.dtype):
        super().__init__()
        self.layer, self.alpha = layer, layer.alpha
        self.steps = smooth_leaky_relu_newton_steps(layer.alpha, dtype)

    def inverse(self, y):
        x = torch.minimum(y, y / self.alpha)
        active = torch.isfinite(x)
        safe = torch.where(active, x, 0)
        for _ in range(self.steps):
            value = self.layer.value(safe)
            slope = self.alpha + (1 - self.alpha) * torch.sigmoid(safe)
            safe = safe - (value - y) / slope
        return torch.where(active, safe, x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, steps={self.steps}"


def conv_exp_series_terms(bound: float, dtype: torch.dtype) -> int:
    """Terms of the exp(−M) series after which its sum is within half of ``dtype``'s
    epsilon of exp(−M) z, relative, for every z, given ``bound`` ≥ ‖M‖. Proof: the tail
    after n terms is at most Σ_{k>n} bᵏ/k! ‖z‖ ≤ bⁿ⁺¹/(n+1)! / (1 − b/(n+2)) ‖z‖ (for
    b < n + 2), and ‖exp(−M) z‖ ≥ e⁻ᵇ ‖z‖ since ‖exp(M)‖ ≤ eᵇ."""
    target, steps, term = torch.finfo(dtype).eps / 2 * math.exp(-bound), 0, 1.0
    while True:
        following = term * bound / (steps + 1)           # b^(n+1) / (n+1)!
        if bound < steps + 2 and following / (1 - bound / (steps + 2)) <= target:
            return steps
        steps, term = steps + 1, following


class ConvExpInverse(nn.Module):
    """The convolution exponential's inverse exp(−M) z as a fixed number of series terms
    (:func:`conv_exp_series_terms` from the kernel's norm bound Σ_taps ‖M_tap‖_F, which
    bounds ‖M‖ since each tap is a zero-padded shift), instead of the eager layer's
    data-dependent stopping test. The kernel after the norm limit is a buffer."""

    def __init__(self, layer: ConvExp2d, dtype: torch.dtype, name: str):
        super().__init__()
        with torch.no_grad():
            kernel = layer.kernel().detach().clone()
            bound = float(torch.linalg.matrix_norm(kernel.double().permute(2, 3, 0, 1)).sum())
        self.terms = conv_exp_series_terms(bound, dtype)
        if self.terms > layer.max_terms:
            raise ExportError(f"cannot export layer {name} (ConvExp2d): its kernel's norm "
                              f"bound {bound:.3g} needs {self.terms} series terms for {dtype}, "
                              f"more than its max_terms={layer.max_terms}")
        self.padding = layer.padding
        self.register_buffer("kernel", kernel)

    def inverse(self, z):
        result = term = z
        for k in range(1, self.terms + 1):
            term = F.conv2d(F.pad(term, self.padding), self.kernel) * (-1.0 / k)
            result = result + term
        return result

    def extra_repr(self) -> str:
        return f"terms={self.terms}"


def _sampling_solve_reason(name: str, layer: nn.Module) -> str:
    what = ("InvConv2d with solve_on='sampling', the FInC/Emerging placement"
            if isinstance(layer, InvConv2d) else "EmergingConv2d, inverted in the sampling pass")
    return (f"layer {name} ({what}) solves a triangular system in the sampling pass with the "
            "custom op torch.ops.inverseflow.inv_conv2d, which ONNX has no operator for; the "
            "Inverse-Flow placement (layer='inverse', solve_on='density') samples with plain "
            "convolutions and exports to ONNX")


def _make_exportable(module: nn.Module, fmt: str, dtype: torch.dtype, prefix: str = "") -> bool:
    """Replaces, in place, every child whose inverse is not plain tensor code by one that
    is; refuses a layer it does not know. Returns whether a sampling-side solve is left."""
    needs_op = False
    for child_name, child in list(module.named_children()):
        name = f"{prefix}{child_name}"
        kind = type(child)
        replacement = None
        if kind is InvConv2d and child.solve_on == "density":
            replacement = CausalConvInverse(child)
        elif kind in (InvConv2d, EmergingConv2d):     # a solve on the sampling side
            if fmt == "onnx":
                raise ExportError(f"cannot export to ONNX: {_sampling_solve_reason(name, child)}")
            needs_op = True
        elif kind is InvertibleConv1x1:
            replacement = Conv1x1Inverse(child)
        elif kind is SplineActivation:
            replacement = SplineInverse(child)
        elif kind is SmoothLeakyReLU:
            replacement = SmoothLeakyReLUInverse(child, dtype)
        elif kind is ConvExp2d:
            replacement = ConvExpInverse(child, dtype, name)
        elif kind in _PLAIN:
            needs_op |= _make_exportable(child, fmt, dtype, f"{name}.")
        else:
            raise ExportError(f"cannot export layer {name} ({kind.__name__}): no exportable "
                              "inverse is known for it")
        if replacement is not None:
            setattr(module, child_name, replacement)
    return needs_op


class Sampler(nn.Module):
    """``forward(noise_0, …) -> images``: standard-normal noise of :func:`noise_shapes`
    (with a batch dimension) to images in [0, 1], ``model.decode(temperature · noise)``
    clamped, on a CPU copy of ``model`` whose inverses are export-ready."""

    def __init__(self, model: ImageFlow, temperature: float = 1.0, fmt: str = "pt2"):
        super().__init__()
        self.shapes = noise_shapes(model)
        flow = copy.deepcopy(model).cpu().eval().requires_grad_(False)
        uninitialized = [n for n, m in flow.named_modules()
                         if isinstance(m, ActNorm) and not bool(m.initialized)]
        if uninitialized:
            raise ExportError(f"the model's ActNorm layers are not initialised "
                              f"({uninitialized[0]}, …): train it or call "
                              "model.initialize(batch) before exporting")
        self.needs_inverseflow = _make_exportable(flow, fmt, flow.dtype)
        self.flow = flow
        self.temperature = check_temperature(temperature, dtype=flow.dtype)

    def forward(self, *noise):
        """Images (B, C, H, W) in [0, 1] from one standard-normal tensor per latent,
        ``noise_i`` of shape ``(B, *noise_shapes(model)[i])``."""
        z = torch.cat([n.flatten(1) for n in noise], dim=1) * self.temperature
        return self.flow.decode(z).clamp(0, 1)


def reference_images(model: ImageFlow, noise, temperature: float):
    """What the exported sampler must return: the model's own ``decode``, clamped."""
    z = torch.cat([n.flatten(1) for n in noise], dim=1) * temperature
    with torch.no_grad():
        return model.decode(z.to(model.device, model.dtype)).clamp(0, 1).cpu()


def run_exported(path, noise, fmt: str | None = None):
    """Runs an exported sampler file on ``noise`` (CPU tensors): the .pt2 program with
    ``torch.export.load``, an .onnx model with onnxruntime."""
    fmt = fmt or Path(path).suffix.lstrip(".")
    if fmt == "pt2":
        return torch.export.load(str(path)).module()(*noise)
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: n.numpy() for i, n in zip(session.get_inputs(), noise)}
    return torch.from_numpy(session.run(None, feeds)[0])


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("ONNX export and its check need onnxruntime, onnx and onnxscript: "
                          "pip install 'inverseflow[export]'") from None
    return onnxruntime


def _check_format(fmt, out: Path) -> str:
    if fmt is None:
        fmt = out.suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise ValueError(f"format: give pt2 or onnx, or an out file ending in .pt2 or "
                             f".onnx; got out={str(out)!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def export_sampler(model: ImageFlow, out, format: str | None = None, batch: int = 1,
                   dynamic_batch: bool = False, temperature: float = 1.0) -> ExportResult:
    """Exports ``model``'s sampling pass to ``out`` (``format`` "pt2" or "onnx"; by default
    from the file's suffix) and checks the file against the model's ``decode`` on fresh
    noise; a file that differs by more than :data:`TOLERANCE` is not kept.

    The program takes ``len(noise_shapes(model))`` inputs, ``noise_i`` of shape
    ``(batch, *noise_shapes(model)[i])``, standard normal, and returns ``(batch, C, H, W)``
    images in [0, 1]. ``dynamic_batch=True`` accepts any batch size (``batch`` is then
    only the example it is traced with)."""
    out = Path(out)
    fmt = _check_format(format, out)
    batch = positive_count(batch, "batch")
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {dynamic_batch!r}")
    if not isinstance(model, ImageFlow):
        raise TypeError(f"model must be an inverseflow image flow, got {type(model).__name__}")
    if fmt == "onnx":
        _onnxruntime()
    sampler = Sampler(model, temperature, fmt)
    # Before the export (which takes a while): a folder, an unwritable place.
    out = prepare_output_file(out, "out")
    # A traced batch of 1 would be specialised to 1, so a dynamic batch is traced at 2 or more.
    traced = max(batch, 2) if dynamic_batch else batch
    noise = tuple(torch.randn(traced, *s, dtype=model.dtype) for s in sampler.shapes)
    dims = None
    if dynamic_batch:
        batch_dim = torch.export.Dim("batch", min=1)
        dims = (tuple({0: batch_dim} for _ in noise),)     # forward(*noise): one varargs
    names = tuple(f"noise_{i}" for i in range(len(noise)))
    with torch.no_grad():
        program = torch.export.export(sampler, noise, dynamic_shapes=dims)
    # Written beside out under a short name of its own (out's name plus a suffix could pass
    # the file system's limit), then renamed: out is never left half-written.
    temporary = out.with_name(f".export-{os.getpid()}-{secrets.token_hex(4)}.{fmt}")
    onnx_program = _to_onnx(program, noise, names) if fmt == "onnx" else None
    try:
        _write(out, temporary, lambda: torch.export.save(program, str(temporary))
               if fmt == "pt2" else onnx_program.save(str(temporary)))
        check = tuple(torch.randn(batch + 1 if dynamic_batch else batch, *s,
                                  dtype=model.dtype) for s in sampler.shapes)
        error = _check_parity(model, run_exported(temporary, check, fmt), check,
                              sampler.temperature, out)
        _write(out, temporary, lambda: os.replace(temporary, out))
    finally:
        temporary.unlink(missing_ok=True)
    return ExportResult(out, fmt, names, tuple(sampler.shapes), None if dynamic_batch else batch,
                        sampler.temperature, sampler.needs_inverseflow, error)


def _write(out: Path, temporary: Path, write) -> None:
    """``write()``, whose failures are reported as writing ``out`` (the user's path), not
    ``temporary``, with the cause (torch's writer raises a C++ ``enforce fail``)."""
    try:
        write()
    except OSError as exc:
        raise OSError(f"cannot write {out}: {exc.strerror or type(exc).__name__}") from None
    except RuntimeError as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cause = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", cause)
        cause = cause.replace(str(temporary), str(out)).replace(temporary.name, out.name)
        raise OSError(f"cannot write {out}: {clip(cause, 200)} (is the disk full?)") from None


def _check_parity(model, got, noise, temperature: float, out) -> float:
    """The relative error of ``got`` against the model's decode, if within
    :data:`TOLERANCE`. A deep model can be too ill-conditioned for that in float32 (the
    digits CNN flow's own float32 decode is 1e-4 to 6e-4 from its float64 decode, so two
    float32 programs differ as much): then ``got`` must be as close to the float64 decode as
    the model's own float32 decode is, within twice its error (STYLE 14)."""
    expected = reference_images(model, noise, temperature)
    # NaN compares as "no error" with NaN (and the images are clamped, so inf is gone):
    # a check that meets a non-finite value cannot vouch for the file.
    broken = [what for what, images in (("the exported sampler", got),
                                        ("the model's own decode", expected))
              if not torch.isfinite(images).all()]
    if broken:
        raise ExportError(f"{' and '.join(broken)} returned NaN or inf on standard-normal "
                          f"noise at temperature {temperature:g}, so the export cannot be "
                          f"checked (are the model's weights finite?); {out} was not written")
    error = max_rel_error(got, expected)
    if error <= TOLERANCE:
        return error
    exact = reference_images(copy.deepcopy(model).double(), [n.double() for n in noise],
                             temperature)
    own, ours = max_rel_error(expected.double(), exact), max_rel_error(got.double(), exact)
    if ours <= max(TOLERANCE, 2 * own):
        return error
    raise ExportError(f"the exported sampler differs from the model's decode by {error:.3g} "
                      f"(relative), over the tolerance {TOLERANCE}, and from its float64 "
                      f"decode by {ours:.3g}, over twice the model's own float32 error "
                      f"({own:.3g}); {out} was not written")


def _to_onnx(program, noise, names):
    # The exporter logs that torchvision's ops are skipped, and torch warns about its own
    # deprecated pytree use: neither concerns this model.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            return torch.onnx.export(program, noise, input_names=list(names),
                                     output_names=["image"], external_data=False, verbose=False)
    finally:
        registration.setLevel(level)


def max_rel_error(got, expected) -> float:
    """max |got − expected| / max |expected| over the finite values of ``expected``; equal
    values count as no error (NaN where ``expected`` has NaN too), unequal non-finite
    values as an infinite (or NaN) one."""
    got = got.to(expected.dtype)
    same = (got == expected) | (got.isnan() & expected.isnan())
    difference = torch.where(same, 0.0, (got - expected).abs())
    finite = expected[expected.isfinite()].abs()
    scale = finite.max().clamp_min(torch.finfo(expected.dtype).tiny) if finite.numel() else 1.0
    return float(difference.max() / scale) if difference.numel() else 0.0


def export_checkpoint(checkpoint, out, format: str | None = None, batch: int = 1,
                      dynamic_batch: bool = False, temperature: float = 1.0) -> ExportResult:
    """:func:`export_sampler` of a training run's checkpoint (loaded as data only; a bad
    file raises :class:`~inverseflow.train.checkpoint.CheckpointError`)."""
    from .train import load_trained

    _check_format(format, Path(out))     # before the checkpoint, which may take a while
    model, _ = load_trained(str(checkpoint))
    return export_sampler(model, out, format, batch, dynamic_batch, temperature)


__all__ = ["export_sampler", "export_checkpoint", "noise_shapes", "run_exported", "Sampler",
           "ExportError", "ExportResult", "FORMATS", "TOLERANCE"]
