#!/usr/bin/env bash
# Checks that a wheel install (`pip install .`, not editable) can specialize layer shapes at
# run time: it builds into a fresh venv, then, from a folder outside the source tree, runs
# inverseflow.jit.specialize on a shape the build does not have and compares the run-time
# kernel with the generic one. Takes a few minutes (torch download, build, one JIT compile).
#
#   scripts/jit_wheel_check.sh                 # venv in /tmp/jitvenv
#   VENV=/somewhere PYTHON=python3.12 scripts/jit_wheel_check.sh
#
# The build is pruned (INVERSEFLOW_SPECS, CUDA off) to keep it short, and uses its own
# build folder so that it never touches build/ of an editable install.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-/tmp/jitvenv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
BUILD_DIR=${BUILD_DIR:-/tmp/jitvenv-build}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
INVERSEFLOW_SPECS=${INVERSEFLOW_SPECS:-invconv_k3x3_g12$} "$VENV/bin/python" -m pip install -q \
  "$ROOT[jit]" -C build-dir="$BUILD_DIR" -C cmake.define.INVERSEFLOW_CUDA=OFF

WORK=$(mktemp -d)
cd "$WORK"
export INVERSEFLOW_CACHE="$WORK/cache"
"$VENV/bin/python" - <<'PY'
import time
from pathlib import Path

import torch

import codegen
import inverseflow
from codegen import render
from inverseflow.ops import _dispatch

site = Path(inverseflow.__file__).resolve().parent.parent
assert site.name == "site-packages", f"not a wheel install: {inverseflow.__file__}"
assert render.TEMPLATES == Path(codegen.__file__).resolve().parent / "templates", render.TEMPLATES
assert render.HEADERS.is_relative_to(site) and (render.HEADERS / "invconv").is_dir(), render.HEADERS

start = time.perf_counter()
names = inverseflow.jit.specialize(3, 16, "TL")
seconds = time.perf_counter() - start
gen = torch.Generator().manual_seed(0)
weight = 0.03 * torch.randn(16, 16, 3, 3, generator=gen)
y = torch.randn(8, 16, 8, 8, generator=gen)
x, name = _dispatch.solve(y, weight, "TL")
x_generic, generic = _dispatch.solve(y, weight, "TL", force_generic=True)
assert name == "invconv_k3x3_g16_f32_solve_cpu" and name in names, (name, names)
assert generic == "generic"
difference = (x - x_generic).abs().max().item()
assert difference < 1e-5, difference
print(f"OK: wheel install in {site} specialized {name} in {seconds:.1f} s "
      f"(max |JIT - generic| = {difference:.1e})")
PY
"$VENV/bin/inverseflow" jit --list
rm -rf "$WORK"
