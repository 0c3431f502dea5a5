"""`inverseflow info`'s compact table: one row per layer shape, per backend what was built."""

import subprocess
import sys

from inverseflow import info


def _spec(kernel, channels, pattern, dtype, direction, **extra):
    name = f"invconv_k{kernel}_c{channels}_{pattern}_{dtype}_{direction}"
    return dict(name=name, kernel=kernel, channels=channels, pattern=pattern, dtype=dtype,
                direction=direction, **extra)


def test_layer_rows_group_kernels_by_shape_and_source():
    specs = [_spec("3x3", 12, "quad", "float64", "transposed"),
             _spec("3x3", 12, "quad", "float32", "solve"),
             _spec("10x10", 4, "tl", "float32", "solve"),
             _spec("3x3", 12, "tl", "float32", "solve"),
             _spec("3x3", 12, "tl", "float32", "solve", source="jit"),
             _spec("2x5", 48, "br", "float64", "solve")]
    rows = info.layer_rows(specs)
    keys = [(r["kernel"], r["channels"], r["pattern"], r["source"]) for r in rows]
    # Ordered by kernel size (numerically), channels, pattern (TL, TR, BL, BR, quad), build first.
    assert keys == [("2x5", 48, "br", "build"), ("3x3", 12, "tl", "build"),
                    ("3x3", 12, "tl", "jit"), ("3x3", 12, "quad", "build"),
                    ("10x10", 4, "tl", "build")]
    quad = rows[3]
    assert quad["dtypes"] == ["float32", "float64"] and quad["directions"] == ["solve", "transposed"]


def test_table_has_a_column_per_backend_and_marks_what_is_missing():
    cpu = [_spec("3x3", 12, "tl", d, r) for d in ("float32", "float64")
           for r in ("solve", "transposed")]
    cuda = [_spec("3x3", 12, "tl", "float32", "solve"), _spec("2x2", 4, "quad", "float64", "solve")]
    lines = info.layer_table({"cpu": cpu, "cuda": cuda})
    header, body = lines[0].split(), [line.split() for line in lines[2:]]
    assert header[:3] == ["kernel", "channels", "pattern"] and "source" not in header
    assert body == [["2x2", "4", "quad", "-", "f64;", "solve"],
                    ["3x3", "12", "tl", "f32", "f64;", "solve", "transposed", "f32;", "solve"]]
    # A run-time specialization adds a source column without changing the call.
    lines = info.layer_table({"cpu": cpu + [_spec("5x5", 8, "tl", "float32", "solve", source="jit")]})
    assert lines[0].split()[3] == "source" and lines[-1].split()[:4] == ["5x5", "8", "tl", "jit"]


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
