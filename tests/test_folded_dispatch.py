"""A specialization is keyed by what its instantiation depends on (DESIGN.md §17, issue 27):
kernel sizes, group channels, dtype and direction. One built instantiation must serve every
corner and the group pattern of its dimension with that group size, and both it and the
generic kernel must agree with the dense float64 oracle there."""

from __future__ import annotations

import pytest
import torch

from inverseflow.ops import _dispatch

import oracle_nd as O

# (kernel, group channels) of instantiations that codegen/specs.toml builds, per dimension:
# 1-D l C=8; 2-D tl C=12 (and quad C=48), quad C=12 (3 per group); 3-D ntl C=4, oct C=8.
BUILT = [((3,), 8), ((3, 3), 12), ((2, 2), 3), ((3, 3, 3), 4), ((2, 2, 2), 1)]
SPATIAL = {1: (7,), 2: (4, 5), 3: (2, 3, 3)}
DIRECTIONS = {_dispatch.SOLVE: "solve", _dispatch.TRANSPOSED: "transposed",
              _dispatch.CONV: "conv"}


def _patterns(d: int) -> list[str]:
    return O.corners(d) + [O.GROUP_PATTERN[d]]


def _cases():
    for kernel, group_channels in BUILT:
        d = len(kernel)
        for pattern in _patterns(d):
            yield pytest.param(kernel, group_channels, pattern,
                               id=f"k{'x'.join(map(str, kernel))}-g{group_channels}-{pattern}")


def _reference(data, weight, pattern, direction):
    if direction == _dispatch.CONV:
        return O.causal_conv(data, weight, pattern)
    matrix = O.dense(weight, pattern, tuple(data.shape[2:]))
    if direction == _dispatch.TRANSPOSED:
        matrix = matrix.T
    flat = data.reshape(data.shape[0], -1).T
    return torch.linalg.solve(matrix, flat).T.reshape(data.shape)


def _rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kernel,group_channels,pattern", list(_cases()))
def test_every_pattern_of_a_group_size_runs_its_instantiation(kernel, group_channels, pattern,
                                                              dtype, rng):
    d = len(kernel)
    groups = 2 ** d if pattern == O.GROUP_PATTERN[d] else 1
    channels = group_channels * groups
    weight = (0.3 / max(kernel)) * torch.randn(channels, group_channels, *kernel,
                                               generator=rng, dtype=torch.float64)
    data = torch.randn(3, channels, *SPATIAL[d], generator=rng, dtype=torch.float64)
    stem = f"invconv_k{'x'.join(map(str, kernel))}_g{group_channels}"
    short = "f64" if dtype == torch.float64 else "f32"
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for direction, label in DIRECTIONS.items():
        expected = _reference(data, weight, pattern, direction)
        x, name = _dispatch.solve(data.to(dtype), weight.to(dtype), pattern, direction)
        assert name == f"{stem}_{short}_{label}_cpu", (pattern, channels, name)
        assert _rel_err(x.double(), expected) <= tol, (name, _rel_err(x.double(), expected))
        x, name = _dispatch.solve(data.to(dtype), weight.to(dtype), pattern, direction,
                                  force_generic=True)
        assert name == "generic"
        assert _rel_err(x.double(), expected) <= tol, ("generic", pattern, label)


@pytest.mark.parametrize("order,channels", [("BR", 12), ("TR", 12), ("BL", 12), ("quad", 48)])
def test_a_corner_layer_runs_the_tl_layers_specialization(order, channels, rng):
    """The issue's case: BR C=12 ran the generic kernel at 1.6-2.5x TL's time."""
    weight = 0.1 * torch.randn(channels, 12, 3, 3, generator=rng)
    y = torch.randn(2, channels, 5, 6, generator=rng)
    _, name = _dispatch.solve(y, weight, order)
    _, tl_name = _dispatch.solve(torch.randn(2, 12, 5, 6), weight[:12], "TL")
    assert name == tl_name == "invconv_k3x3_g12_f32_solve_cpu"


@pytest.mark.parametrize("group_channels", [1, 2, 3, 5, 7, 9, 12, 13, 17, 20, 33])
def test_generic_kernel_chunk_widths_against_the_oracle(group_channels, rng):
    """The generic kernel picks a compile-time chunk width per group size and pads the last
    chunk with zero rows: every width and padding must give the oracle's answer, for the
    solve, its transpose and the conv, with the group pattern and a corner."""
    for pattern, groups in (("BL", 1), ("quad", 4)):
        channels = group_channels * groups
        weight = 0.1 * torch.randn(channels, group_channels, 2, 3, generator=rng,
                                   dtype=torch.float64)
        data = torch.randn(2, channels, 3, 4, generator=rng, dtype=torch.float64)
        for direction in DIRECTIONS:
            x, name = _dispatch.solve(data, weight, pattern, direction, force_generic=True)
            assert name == "generic"
            err = _rel_err(x, _reference(data, weight, pattern, direction))
            assert err <= 1e-10, (pattern, group_channels, direction, err)
