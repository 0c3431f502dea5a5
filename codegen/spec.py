"""The specialization model: strict parsing of ``specs.toml`` into frozen dataclasses.

A :class:`Layer` is one entry of the spec file (a layer shape). What gets compiled is an
:class:`Instantiation` per backend x dtype x direction, keyed by what the code depends on:
dimension, kernel sizes, group channels (channels / groups of the pattern), dtype and
direction. Layers that reduce to the same instantiation (``tl`` C=12 and ``quad`` C=48)
fold onto one, emitted once (:func:`fold`). Every name (file, symbol, key) is derived
from the fields, always in the axis order kernel, group channels, dtype, direction,
backend. A layer is 1-D, 2-D or 3-D (docs/nd-design.md): its pattern belongs to one
dimension and its kernel has that many sizes (``"5"``, ``"3x3"``, ``"3x3x3"``); every
kernel is compiled as 3-D, with kd = 1 (and kh = 1) for the lower dimensions.
"""

from __future__ import annotations

import dataclasses
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib
from pathlib import Path

# The patterns of each dimension: its corners in group order, then the group pattern.
PATTERNS_BY_DIMS = {
    1: ("l", "r", "pair"),
    2: ("tl", "tr", "bl", "br", "quad"),
    3: ("ntl", "ntr", "nbl", "nbr", "ftl", "ftr", "fbl", "fbr", "oct"),
}
PATTERNS = tuple(p for patterns in PATTERNS_BY_DIMS.values() for p in patterns)
DIMS_OF_PATTERN = {p: d for d, patterns in PATTERNS_BY_DIMS.items() for p in patterns}
GROUPS = {"pair": 2, "quad": 4, "oct": 8}
DTYPES = ("float32", "float64")
# solve: x = T⁻¹y; transposed: x = T⁻ᵀy; conv: the causal convolution y = T x itself.
DIRECTIONS = ("solve", "transposed", "conv")
BACKENDS = ("cpu", "cuda")

# Codes shared with csrc/invconv/common.h (enum Pattern, DType, Direction). A corner of a
# lower dimension is the 3-D corner on the near side of the missing axes, so it shares
# its code (l = tl = ntl = 0); the far-depth corners come after the group patterns.
PATTERN_CODE = {"tl": 0, "tr": 1, "bl": 2, "br": 3, "quad": 4, "pair": 5, "oct": 6,
                "ftl": 7, "ftr": 8, "fbl": 9, "fbr": 10,
                "l": 0, "r": 1, "ntl": 0, "ntr": 1, "nbl": 2, "nbr": 3}
DTYPE_CODE = {d: i for i, d in enumerate(DTYPES)}
DIRECTION_CODE = {d: i for i, d in enumerate(DIRECTIONS)}
DIRECTION_ENUM = {"solve": "kSolve", "transposed": "kTransposed", "conv": "kConv"}
DTYPE_SHORT = {"float32": "f32", "float64": "f64"}
CPP_TYPE = {"float32": "float", "float64": "double"}

MAX_KERNEL = 15
MAX_CHANNELS = 512


class SpecError(ValueError):
    """A spec entry is invalid; the message names the entry and the field."""


@dataclasses.dataclass(frozen=True)
class Instantiation:
    """One compiled function, ``solve<T, CG, KD, KH, KW, Dir>`` on one backend.

    It depends only on the dimension, the kernel sizes, the *group's* channel count, the
    dtype and the direction: the corner is a flip in the packing and the group pattern a
    run-time argument. So one instantiation serves every corner of its dimension with C = CG
    and the dimension's group pattern with C = groups·CG (DESIGN.md §17). Backends render
    from this object; ``layers`` are the spec-file entries that folded onto it (names and
    ``info`` only, never part of the key).
    """

    backend: str
    dims: int
    kd: int
    kh: int
    kw: int
    group_channels: int
    dtype: str
    direction: str
    layers: tuple = dataclasses.field(default=(), compare=False)

    @property
    def kernel(self) -> tuple:
        return (self.kd, self.kh, self.kw)[3 - self.dims:]

    @property
    def stem(self) -> str:
        """The file's name stem; every instantiation of one (kernel, group size) shares it."""
        return instantiation_stem(self.dims, self.kd, self.kh, self.kw, self.group_channels)

    @property
    def symbol(self) -> str:
        return f"{self.stem}_{DTYPE_SHORT[self.dtype]}_{self.direction}_{self.backend}"

    @property
    def key(self) -> tuple:
        """What the compiled code depends on (the Triton backend keys its specs the same way)."""
        return (self.dims, self.kd, self.kh, self.kw, self.group_channels, self.dtype,
                self.direction)

    @property
    def lookup_key(self) -> tuple:
        """The run-time registry key: what dispatch knows of a call (the dimension is not
        needed, since a 1-D kernel of size k is the 2-D kernel 1×k)."""
        return (self.kd, self.kh, self.kw, self.group_channels, self.dtype, self.direction)

    @property
    def filename(self) -> str:
        return source_filename(self.stem, self.backend)

    @property
    def cpp_type(self) -> str:
        return CPP_TYPE[self.dtype]

    @property
    def direction_enum(self) -> str:
        return DIRECTION_ENUM[self.direction]

    @property
    def codes(self) -> dict:
        return {"dtype": DTYPE_CODE[self.dtype], "direction": DIRECTION_CODE[self.direction]}

    def serves(self) -> list[tuple[str, int]]:
        """Every (pattern, channels) of its dimension that runs this instantiation."""
        return layer_shapes_served(self.dims, self.group_channels)


def instantiation_stem(dims: int, kd: int, kh: int, kw: int, group_channels: int) -> str:
    kernel = "x".join(str(k) for k in (kd, kh, kw)[3 - dims:])
    return f"invconv_k{kernel}_g{group_channels}"


# File suffix of each backend's generated sources; a new target (e.g. Triton, issue 28)
# adds its backend to BACKENDS and its suffix here.
SOURCE_SUFFIX = {"cpu": "cpp", "cuda": "cu", "triton": "py"}


def source_filename(stem: str, backend: str) -> str:
    return f"{backend}/{stem}_{backend}.{SOURCE_SUFFIX[backend]}"


def layer_shapes_served(dims: int, group_channels: int) -> list[tuple[str, int]]:
    """The corners of a dimension with C = group_channels, then its group pattern."""
    return [(p, group_channels * GROUPS.get(p, 1)) for p in PATTERNS_BY_DIMS[dims]]


def served_text(dims: int, group_channels: int) -> str:
    """``"tl/tr/bl/br C=12, quad C=48"``: the layer shapes one specialization serves."""
    shapes = layer_shapes_served(dims, group_channels)
    corners = "/".join(p for p, _ in shapes[:-1])
    group, channels = shapes[-1]
    return f"{corners} C={group_channels}, {group} C={channels}"


def fold(layers, backend: str) -> list[Instantiation]:
    """The unique instantiations that ``layers`` need on ``backend``, in the order they
    first appear; each records every layer folded onto it."""
    folded: dict[tuple, list] = {}
    for layer in layers:
        for inst in layer.instantiations(backend):
            folded.setdefault(inst.key, [inst, []])[1].append(layer)
    return [dataclasses.replace(inst, layers=tuple(served)) for inst, served in folded.values()]


def by_file(instantiations) -> dict[str, list[Instantiation]]:
    """Instantiations grouped by the file that holds them (one per kernel and group size),
    each file's in dtype-then-direction order."""
    files: dict[str, list[Instantiation]] = {}
    for inst in instantiations:
        files.setdefault(inst.stem, []).append(inst)
    order = {(d, r): i for i, (d, r) in enumerate((d, r) for d in DTYPES for r in DIRECTIONS)}
    return {stem: sorted(insts, key=lambda i: order[(i.dtype, i.direction)])
            for stem, insts in files.items()}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One ``[[layer]]`` entry: a layer shape, compiled for the listed dtypes/directions."""

    kh: int
    kw: int
    channels: int
    pattern: str
    dtypes: tuple = DTYPES
    directions: tuple = DIRECTIONS
    kd: int = 1

    def __post_init__(self):
        for name in ("kd", "kh", "kw"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_KERNEL:
                raise SpecError(f"kernel: {name}={value} must be in 1..{MAX_KERNEL}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise SpecError(f"channels: {self.channels} must be in 1..{MAX_CHANNELS}")
        if self.pattern not in PATTERNS:
            raise SpecError(f"pattern: {self.pattern!r} must be one of {', '.join(PATTERNS)}")
        dims = DIMS_OF_PATTERN[self.pattern]
        if (dims < 3 and self.kd != 1) or (dims < 2 and self.kh != 1):
            raise SpecError(f"kernel: pattern {self.pattern!r} is {dims}-D, so the kernel "
                            f"has {dims} size(s); got {kernel_name(self, 3)}")
        groups = GROUPS.get(self.pattern, 1)
        if self.channels % groups:
            raise SpecError(f"channels: {self.channels} must be divisible by {groups} for "
                            f"{self.pattern}")
        for field, allowed in (("dtypes", DTYPES), ("directions", DIRECTIONS)):
            values = getattr(self, field)
            if not values or len(set(values)) != len(values):
                raise SpecError(f"{field}: must be a non-empty list without repeats")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise SpecError(f"{field}: {bad[0]!r} must be one of {', '.join(allowed)}")

    @property
    def dims(self) -> int:
        return DIMS_OF_PATTERN[self.pattern]

    @property
    def kernel(self) -> tuple:
        """The kernel sizes of the layer's own dimension, in axis order."""
        return (self.kd, self.kh, self.kw)[3 - self.dims:]

    @property
    def groups(self) -> int:
        return GROUPS.get(self.pattern, 1)

    @property
    def group_channels(self) -> int:
        return self.channels // self.groups

    @property
    def name(self) -> str:
        """The layer shape as written in messages: ``k3x3_c48_quad``."""
        return f"k{kernel_name(self)}_c{self.channels}_{self.pattern}"

    @property
    def stem(self) -> str:
        """The stem of the file holding this layer's instantiations (shared by every layer
        that folds onto them)."""
        return instantiation_stem(self.dims, self.kd, self.kh, self.kw, self.group_channels)

    @property
    def shape_key(self) -> tuple:
        """The layer shape itself: a 1-D ``l`` layer of kernel 5 and a 2-D ``tl`` layer of
        kernel 1x5 are the same shape, and so the same key."""
        return (self.kd, self.kh, self.kw, self.channels, PATTERN_CODE[self.pattern])

    def filename(self, backend: str) -> str:
        return source_filename(self.stem, backend)

    def instantiations(self, backend: str) -> list[Instantiation]:
        return [Instantiation(backend, self.dims, self.kd, self.kh, self.kw,
                              self.group_channels, d, r, (self,))
                for d in self.dtypes for r in self.directions]

    def to_toml(self) -> str:
        lines = ["[[layer]]", f'kernel = "{kernel_name(self)}"',
                 f"channels = {self.channels}", f'pattern = "{self.pattern}"']
        if self.dtypes != DTYPES:
            lines.append("dtypes = [" + ", ".join(f'"{d}"' for d in self.dtypes) + "]")
        if self.directions != DIRECTIONS:
            lines.append("directions = [" + ", ".join(f'"{d}"' for d in self.directions) + "]")
        return "\n".join(lines) + "\n"


def kernel_name(layer, dims: int | None = None) -> str:
    """The kernel as written in names: ``5`` (1-D), ``3x3`` (2-D), ``2x3x3`` (3-D)."""
    sizes = (layer.kd, layer.kh, layer.kw)[3 - (dims or layer.dims):]
    return "x".join(str(k) for k in sizes)


_KERNEL_RE = re.compile(r"^\s*\d+\s*(?:x\s*\d+\s*){0,2}$")
_KERNEL_FORM = {1: "'KW' (e.g. '5')", 2: "'KHxKW' (e.g. '3x3')", 3: "'KDxKHxKW' (e.g. '3x3x3')"}


def parse_kernel(text, dims: int = 2) -> tuple[int, ...]:
    """The kernel sizes of a ``dims``-D layer, in axis order: ``"3x3"`` or ``3`` ->
    ``(3, 3)`` in 2-D; ``"5"`` -> ``(5,)`` in 1-D; ``"2x3x3"`` or ``3`` -> a 3-tuple in
    3-D. One number means the same size on every axis."""
    form = _KERNEL_FORM[dims]
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise SpecError(f"kernel: expected {form} or an integer, got {text!r}")
    if isinstance(text, int):
        return (text,) * dims
    if not _KERNEL_RE.match(text):
        raise SpecError(f"kernel: expected {form} or an integer, got {text!r}")
    sizes = tuple(int(part) for part in text.split("x"))
    if len(sizes) == 1:
        return sizes * dims
    if len(sizes) != dims:
        raise SpecError(f"kernel: a {dims}-D layer's kernel is {form}, got {text!r}")
    return sizes


def layer_for(kernel: tuple[int, ...], channels: int, pattern: str, **optional) -> Layer:
    """A Layer from the kernel sizes of the pattern's own dimension."""
    kd, kh, kw = (1,) * (3 - len(kernel)) + tuple(kernel)
    return Layer(kh, kw, channels, pattern, kd=kd, **optional)


def layer_from_entry(entry: dict) -> Layer:
    """Builds a Layer from one table, consuming every key and rejecting leftovers."""
    entry = dict(entry)
    missing = [k for k in ("kernel", "channels", "pattern") if k not in entry]
    if missing:
        raise SpecError(f"{missing[0]}: required field is missing")
    kernel = entry.pop("kernel")
    channels = entry.pop("channels")
    if not isinstance(channels, int) or isinstance(channels, bool):
        raise SpecError(f"channels: expected an integer, got {channels!r}")
    pattern = entry.pop("pattern")
    if not isinstance(pattern, str):
        raise SpecError(f"pattern: expected a string, got {pattern!r}")
    pattern = pattern.lower()
    if pattern not in PATTERNS:
        raise SpecError(f"pattern: {pattern!r} must be one of {', '.join(PATTERNS)}")
    sizes = parse_kernel(kernel, DIMS_OF_PATTERN[pattern])
    optional = {}
    for field in ("dtypes", "directions"):
        if field in entry:
            value = entry.pop(field)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"{field}: expected a list of strings, got {value!r}")
            optional[field] = tuple(value)
    if entry:
        raise SpecError(f"{sorted(entry)[0]}: unknown field (allowed: kernel, channels, "
                        "pattern, dtypes, directions)")
    return layer_for(sizes, channels, pattern, **optional)


def _entry_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines())
            if line.strip().startswith("[[layer]]")]


def parse_specs(text: str, source: str = "specs.toml") -> list[Layer]:
    """Parses the spec file strictly; errors name the entry, its line and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"layer"})
    if extra:
        raise SpecError(f"{source}: unknown top-level key {extra[0]!r} (expected [[layer]] tables)")
    entries = data.get("layer", [])
    if not isinstance(entries, list):
        raise SpecError(f"{source}: 'layer' must be an array of tables ([[layer]])")
    lines = _entry_lines(text)
    layers, seen = [], {}
    for index, entry in enumerate(entries):
        where = f"{source}: layer #{index + 1}"
        if index < len(lines):
            where += f" (line {lines[index]})"
        try:
            layer = layer_from_entry(entry)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        if layer.shape_key in seen:
            raise SpecError(f"{where}: duplicates layer #{seen[layer.shape_key] + 1} "
                            f"({layer.name}); a layer shape is listed once")
        seen[layer.shape_key] = index
        layers.append(layer)
    return layers


def load_specs(path: Path) -> list[Layer]:
    return parse_specs(Path(path).read_text(), source=str(path))
