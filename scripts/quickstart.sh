#!/usr/bin/env bash
# Sets up from scratch and runs the main job: invert a 3x3 convolution on a batch, check
# the round trip and time it against F.conv2d.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-codegen} bash scripts/setup_env.sh
.venv/bin/inverseflow info | head -4
.venv/bin/inverseflow demo --json demo.json
echo "figures written to demo.json"
