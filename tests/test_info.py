"""`inverseflow info`'s compact table: one row per layer shape, per backend what was built."""

import subprocess
import sys

from inverseflow import info


def _spec(kernel, group_channels, dtype, direction, dims=2, **extra):
    name = f"invconv_k{kernel}_g{group_channels}_{dtype}_{direction}"
    return dict(name=name, kernel=kernel, group_channels=group_channels,
                serves=info.served_text(dims, group_channels), dtype=dtype,
                direction=direction, **extra)


def test_served_text_names_every_corner_and_the_group_pattern():
    assert info.served_text(2, 12) == "tl/tr/bl/br C=12, quad C=48"
    assert info.served_text(1, 3) == "l/r C=3, pair C=6"
    assert info.served_text(3, 1).endswith("fbr C=1, oct C=8")


def test_specialization_rows_group_kernels_by_instantiation_and_source():
    specs = [_spec("3x3", 3, "float64", "transposed"),
             _spec("3x3", 3, "float32", "solve"),
             _spec("10x10", 4, "float32", "solve"),
             _spec("3x3", 12, "float32", "solve"),
             _spec("3x3", 12, "float32", "solve", source="jit"),
             _spec("2x5", 48, "float64", "solve")]
    rows = info.specialization_rows(specs)
    keys = [(r["kernel"], r["group_channels"], r["source"]) for r in rows]
    # Ordered by kernel size (numerically), group channels, build first.
    assert keys == [("2x5", 48, "build"), ("3x3", 3, "build"), ("3x3", 12, "build"),
                    ("3x3", 12, "jit"), ("10x10", 4, "build")]
    small = rows[1]
    assert small["dtypes"] == ["float32", "float64"] and small["directions"] == ["solve", "transposed"]
    assert small["serves"] == "tl/tr/bl/br C=3, quad C=12"


def test_table_has_a_column_per_backend_and_marks_what_is_missing():
    cpu = [_spec("3x3", 12, d, r) for d in ("float32", "float64")
           for r in ("solve", "transposed")]
    cuda = [_spec("3x3", 12, "float32", "solve"), _spec("2x2", 1, "float64", "solve")]
    lines = info.specialization_table({"cpu": cpu, "cuda": cuda})
    header, body = lines[0].split(), [line.split() for line in lines[2:]]
    assert header[:3] == ["kernel", "group", "C"] and "source" not in header
    assert body == [["2x2", "1", "-", "f64;", "solve", *"tl/tr/bl/br C=1, quad C=4".split()],
                    ["3x3", "12", "f32", "f64;", "solve", "transposed", "f32;", "solve",
                     *"tl/tr/bl/br C=12, quad C=48".split()]]
    # A run-time specialization adds a source column without changing the call.
    lines = info.specialization_table({"cpu": cpu + [_spec("5x5", 8, "float32", "solve",
                                                           source="jit")]})
    assert lines[0].split()[3] == "source" and lines[-1].split()[:4] == ["5x5", "8", "jit", "f32;"]


def test_cli_info_default_is_compact_and_verbose_lists_kernels():
    run = lambda *a: subprocess.run([sys.executable, "-m", "inverseflow", "info", *a],  # noqa: E731
                                    capture_output=True, text=True, check=True).stdout
    compact, verbose = run(), run("--verbose")
    data = info.collect()
    kernels = sum(len(b.get("specializations", [])) for b in data["backends"].values())
    layers = len(data["build"]["layers_built"])
    assert len(compact.splitlines()) < layers + 15          # one line per layer shape
    assert "cuda build:" in compact and "[cpu] built" in compact
    assert len(verbose.splitlines()) >= len(compact.splitlines()) + kernels
    # `info | head` in a pipefail script: an early-closing reader is not an error.
    piped = subprocess.run(f"set -o pipefail; {sys.executable} -m inverseflow info | head -2",
                           shell=True, capture_output=True, text=True, executable="/bin/bash")
    assert piped.returncode == 0 and "Traceback" not in piped.stderr
