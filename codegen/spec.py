"""The specialization model: strict parsing of ``specs.toml`` into frozen dataclasses.

A :class:`Layer` is one entry of the spec file (a layer shape). It expands into one
:class:`Spec` per backend x dtype x direction. Every name (file, symbol, key) is derived
from the fields, always in the axis order kernel, channels, pattern, dtype, direction,
backend.
"""

from __future__ import annotations

import dataclasses
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib
from pathlib import Path

PATTERNS = ("tl", "tr", "bl", "br", "quad")
DTYPES = ("float32", "float64")
DIRECTIONS = ("solve", "transposed")
BACKENDS = ("cpu", "cuda")

# Codes shared with csrc/invconv/common.h (enum Pattern, DType, Direction).
PATTERN_CODE = {p: i for i, p in enumerate(PATTERNS)}
DTYPE_CODE = {d: i for i, d in enumerate(DTYPES)}
DIRECTION_CODE = {d: i for i, d in enumerate(DIRECTIONS)}
DTYPE_SHORT = {"float32": "f32", "float64": "f64"}
CPP_TYPE = {"float32": "float", "float64": "double"}

MAX_KERNEL = 15
MAX_CHANNELS = 512


class SpecError(ValueError):
    """A spec entry is invalid; the message names the entry and the field."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One compiled function: a layer shape on one backend, dtype and direction."""

    backend: str
    kh: int
    kw: int
    channels: int
    pattern: str
    dtype: str
    direction: str

    @property
    def groups(self) -> int:
        return 4 if self.pattern == "quad" else 1

    @property
    def group_channels(self) -> int:
        return self.channels // self.groups

    @property
    def symbol(self) -> str:
        return (f"invconv_k{self.kh}x{self.kw}_c{self.channels}_{self.pattern}_"
                f"{DTYPE_SHORT[self.dtype]}_{self.direction}_{self.backend}")

    @property
    def key(self) -> tuple:
        return (self.kh, self.kw, self.channels, self.pattern, self.dtype, self.direction)

    @property
    def cpp_type(self) -> str:
        return CPP_TYPE[self.dtype]

    @property
    def codes(self) -> dict:
        return {"pattern": PATTERN_CODE[self.pattern], "dtype": DTYPE_CODE[self.dtype],
                "direction": DIRECTION_CODE[self.direction]}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One ``[[layer]]`` entry: a layer shape, compiled for the listed dtypes/directions."""

    kh: int
    kw: int
    channels: int
    pattern: str
    dtypes: tuple = DTYPES
    directions: tuple = DIRECTIONS

    def __post_init__(self):
        for name in ("kh", "kw"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_KERNEL:
                raise SpecError(f"kernel: {name}={value} must be in 1..{MAX_KERNEL}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise SpecError(f"channels: {self.channels} must be in 1..{MAX_CHANNELS}")
        if self.pattern not in PATTERNS:
            raise SpecError(f"pattern: {self.pattern!r} must be one of {', '.join(PATTERNS)}")
        if self.pattern == "quad" and self.channels % 4:
            raise SpecError(f"channels: {self.channels} must be divisible by 4 for quad")
        for field, allowed in (("dtypes", DTYPES), ("directions", DIRECTIONS)):
            values = getattr(self, field)
            if not values or len(set(values)) != len(values):
                raise SpecError(f"{field}: must be a non-empty list without repeats")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise SpecError(f"{field}: {bad[0]!r} must be one of {', '.join(allowed)}")

    @property
    def stem(self) -> str:
        return f"invconv_k{self.kh}x{self.kw}_c{self.channels}_{self.pattern}"

    @property
    def shape_key(self) -> tuple:
        return (self.kh, self.kw, self.channels, self.pattern)

    def filename(self, backend: str) -> str:
        return f"{backend}/{self.stem}_{backend}.{'cu' if backend == 'cuda' else 'cpp'}"

    def specs(self, backend: str) -> list[Spec]:
        return [Spec(backend, self.kh, self.kw, self.channels, self.pattern, d, r)
                for d in self.dtypes for r in self.directions]

    def to_toml(self) -> str:
        lines = ["[[layer]]", f'kernel = "{self.kh}x{self.kw}"',
                 f"channels = {self.channels}", f'pattern = "{self.pattern}"']
        if self.dtypes != DTYPES:
            lines.append("dtypes = [" + ", ".join(f'"{d}"' for d in self.dtypes) + "]")
        if self.directions != DIRECTIONS:
            lines.append("directions = [" + ", ".join(f'"{d}"' for d in self.directions) + "]")
        return "\n".join(lines) + "\n"


_KERNEL_RE = re.compile(r"^\s*(\d+)\s*(?:x\s*(\d+))?\s*$")


def parse_kernel(text) -> tuple[int, int]:
    """``"3x3"``, ``"1x5"``, ``"3"`` or ``3`` -> ``(kh, kw)``."""
    if isinstance(text, bool):
        raise SpecError(f"kernel: expected 'KHxKW' or an integer, got {text!r}")
    if isinstance(text, int):
        return text, text
    match = _KERNEL_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise SpecError(f"kernel: expected 'KHxKW' (e.g. '3x3') or an integer, got {text!r}")
    kh = int(match.group(1))
    return kh, int(match.group(2) or kh)


def layer_from_entry(entry: dict) -> Layer:
    """Builds a Layer from one table, consuming every key and rejecting leftovers."""
    entry = dict(entry)
    missing = [k for k in ("kernel", "channels", "pattern") if k not in entry]
    if missing:
        raise SpecError(f"{missing[0]}: required field is missing")
    kh, kw = parse_kernel(entry.pop("kernel"))
    channels = entry.pop("channels")
    if not isinstance(channels, int) or isinstance(channels, bool):
        raise SpecError(f"channels: expected an integer, got {channels!r}")
    pattern = entry.pop("pattern")
    if not isinstance(pattern, str):
        raise SpecError(f"pattern: expected a string, got {pattern!r}")
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
    return Layer(kh, kw, channels, pattern.lower(), **optional)


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
                            f"({layer.stem}); both would write the same files")
        seen[layer.shape_key] = index
        layers.append(layer)
    return layers


def load_specs(path: Path) -> list[Layer]:
    return parse_specs(Path(path).read_text(), source=str(path))
