#!/usr/bin/env bash
# Creates .venv (if needed) and installs inverseflow into it, editable, with both backends
# (CUDA compiles whenever nvcc is found, even on a machine without a GPU).
# torch is pinned to the CPU wheel here so that a fresh machine does not pull a multi-GB
# CUDA build; the package itself only asks for torch>=2.4. Override with TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -v -e ".[${EXTRAS}]" >.venv/build.log 2>&1 || {
  tail -60 .venv/build.log
  echo "inverseflow build failed; full log: .venv/build.log" >&2
  exit 1
}
grep -E "inverseflow: |CUDA backend" .venv/build.log | sed 's/^ *//' || true
