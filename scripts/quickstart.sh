#!/usr/bin/env bash
# Sets up from scratch and runs the main job: trains an Inverse-Flow model on the
# embedded scikit-learn digits, then prints test bits/dim before and after, the timing of
# the density and sampling passes for both placements of the k×k layer, and where the
# samples image is. A few minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-data} bash scripts/setup_env.sh
.venv/bin/inverseflow info | head -4
OUT=${OUT:-runs/digits}
rm -rf "$OUT"
.venv/bin/inverseflow train --dataset digits --steps "${STEPS:-1000}" --out "$OUT"
