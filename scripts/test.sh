#!/usr/bin/env bash
# Sets up from scratch (see setup_env.sh), checks generated/ is fresh, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m codegen --check
.venv/bin/python -m inverseflow info | head -4
.venv/bin/python -m pytest -q "$@"
