#!/usr/bin/env bash
# One GPU check, for a machine without network access (e.g. the lent H200):
# builds with --no-build-isolation, runs the CUDA parity tests against the CPU kernels,
# runs the GPU benchmark, and writes everything to $OUT. Aims to finish in < 8 minutes.
# Every step runs even when an earlier one fails; $OUT/summary.json records each status.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
PY=${PYTHON:-python3}
declare -A status

step() {  # step NAME LOGFILE COMMAND...
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  "$@" >"$log" 2>&1
  status[$name]="$? $((SECONDS - t0))s"
  echo "$name: exit ${status[$name]}"
}

# At most 8 files come back from the device machine: logs are grouped accordingly.
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.version.cuda)"; } \
  >"$OUT/build.log" 2>&1
step build "$OUT/build.log.part" $PY -m pip install --no-build-isolation --no-deps -v -e . \
  -C build-dir=build/gpu-check
cat "$OUT/build.log.part" >>"$OUT/build.log"; rm -f "$OUT/build.log.part"
step info "$OUT/tests.log" $PY -m inverseflow info
step tests "$OUT/tests.log.part" $PY -m pytest -q -x --timeout=300 tests/test_cuda_parity.py \
  tests/test_ops_oracle.py tests/test_ops_autograd.py tests/test_ops_errors.py tests/test_models.py
cat "$OUT/tests.log.part" >>"$OUT/tests.log"; rm -f "$OUT/tests.log.part"
step bench "$OUT/tests.log.part" $PY -m inverseflow bench --device cuda --out "$OUT/bench"
cat "$OUT/tests.log.part" >>"$OUT/tests.log"; rm -f "$OUT/tests.log.part"
# Issue 28: the Triton backend against the CUDA and CPU kernels, and timed against both.
step triton "$OUT/triton.log" $PY scripts/triton_gpu_check.py --out "$OUT/triton_gpu.json"
# Registers, spills and shared memory of one generated specialization (nvcc -Xptxas -v).
step ptxas "$OUT/ptxas.txt" nvcc -std=c++17 -O3 -arch=sm_90 -Xptxas -v -Icsrc -c \
  generated/cuda/invconv_k3x3_g12_cuda.cu -o /tmp/ptxas_probe.o

{
  echo "{"
  first=1
  for name in "${!status[@]}"; do
    [ $first = 1 ] || echo ","
    first=0
    read -r code secs <<<"${status[$name]}"
    printf '  "%s": {"exit": %s, "seconds": "%s"}' "$name" "$code" "$secs"
  done
  echo; echo "}"
} >"$OUT/summary.json"
cat "$OUT/summary.json"
