"""`inverseflow bench --peak` (issue 27): useful FLOPs, the FMA peak and its stated sources."""

from __future__ import annotations

import json

import pytest
import torch

from inverseflow.bench import fma_peak, solve_rate
from inverseflow.cli import main as cli_main
from inverseflow.ops import _backends


def test_useful_flops_count_full_taps_and_the_triangular_centre():
    # The figure: a TL solve at 100x12x16^2, k=3, is about 63 MFLOP.
    assert fma_peak.useful_flops(100, 12, (16, 16), (3, 3)) == 100 * 256 * 2 * (8 * 144 + 78)
    # Brute force over one voxel: every off-centre tap a full cg x cg product, the centre
    # its lower triangle (diagonal included); quad has four groups of C/4.
    for channels, groups, kernel in ((5, 1, (2, 3)), (8, 4, (3, 3)), (6, 2, (4,))):
        cg, taps = channels // groups, 1
        for k in kernel:
            taps *= k
        pairs = sum(1 for t in range(taps) for c in range(cg) for cp in range(cg)
                    if t != taps - 1 or cp <= c)
        assert fma_peak.useful_flops(1, channels, (1,) * len(kernel), kernel, groups) == \
            2 * groups * pairs


def test_peak_follows_the_formula_and_names_its_sources(monkeypatch):
    peak = fma_peak.cpu_peak(torch.float32, threads=1)
    vector_bytes = _backends.cpu_module().vector_bytes
    assert peak["build_vector_bits"] == 8 * vector_bytes in (128, 256, 512)
    assert peak["lanes"] == vector_bytes // 4 and peak["cores"] == 1
    for key in ("clock_source", "fma_units_assumption", "build_vector_source", "cpu"):
        assert isinstance(peak[key], str) and peak[key]
    if peak["clock_ghz"] is not None:
        assert peak["peak_gflops"] == pytest.approx(
            peak["clock_ghz"] * peak["fma_units"] * peak["lanes"] * 2)
    double = fma_peak.cpu_peak(torch.float64, threads=1)
    assert double["lanes"] * 2 == peak["lanes"]
    monkeypatch.setenv(fma_peak.FMA_UNITS_ENV, "3")
    assert fma_peak.cpu_peak(torch.float32, threads=1)["fma_units"] == 3
    rate = fma_peak.rate(2_000_000, 1.0, {"peak_gflops": 4.0})
    assert rate == {"gflops": 2.0, "fraction_of_peak": 0.5}


def test_fma_units_table():
    assert fma_peak._fma_units("AuthenticAMD", 25, 64)[0] == 1   # Zen 4: 512 bits on 2x256
    assert fma_peak._fma_units("AuthenticAMD", 25, 32)[0] == 2
    assert fma_peak._fma_units("GenuineIntel", 6, 64)[0] == 2
    assert "assumed" in fma_peak._fma_units("", 0, 32)[1]


def test_bench_peak_writes_json_with_rates_kernels_and_paired_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(solve_rate, "SHAPES", [(2, 8, 5, 6), (3, 8, 4, 4)])
    monkeypatch.setattr(solve_rate, "MIN_ROUND_S", 0.0002)
    assert cli_main(["bench", "--peak", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "solve_rate.json").read_text())
    assert "peak_gflops" in result["fma_peak"] and result["environment"]["device"] == "cpu"
    (shape,) = result["shapes"][:1]
    variants = shape["variants"]
    assert {"TL solve", "BR conv", "quad transposed", "TL solve generic",
            "TL oneDNN conv2d"} <= set(variants)
    # BR and TL with the same channels run one instantiation (issue 27).
    assert variants["BR solve"]["kernel"] == variants["TL solve"]["kernel"] != "generic"
    assert all(v["gflops"] > 0 for v in variants.values())
    assert set(shape["paired_ratios"]) >= {"BR_over_TL_solve", "generic_over_specialized_conv"}
    assert "% of peak" in (tmp_path / "solve_rate.md").read_text()
    assert cli_main(["bench", "--peak", "--device", "cuda", "--out", str(tmp_path)]) == 2
