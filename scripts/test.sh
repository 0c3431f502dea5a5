#!/usr/bin/env bash
# Sets up from scratch (see setup_env.sh), checks generated/ is fresh, runs every test, then
# builds the documentation site with its tutorials executed (scripts/docs.sh; warnings are
# errors). SKIP_DOCS=1 skips the site; DOCS_TIMEOUT bounds it (seconds, default 1800).
set -euo pipefail
cd "$(dirname "$0")/.."
export EXTRAS=${EXTRAS:-test,docs}
bash scripts/setup_env.sh
.venv/bin/python -m codegen --check
.venv/bin/python -m inverseflow info | head -4
.venv/bin/python -m pytest -q "$@"
if [ "${SKIP_DOCS:-0}" != 1 ]; then
  timeout "${DOCS_TIMEOUT:-1800}" bash scripts/docs.sh
fi
