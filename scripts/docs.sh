#!/usr/bin/env bash
# Builds the documentation site from scratch into docs/_build/html: Sphinx with warnings as
# errors, the API reference from the docstrings, the CLI page from the argparse parser, and
# every tutorial executed (a failing cell fails the build). Sets up .venv with the `docs`
# extra first when Sphinx or MyST-NB is missing (scripts/test.sh installs it already).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import sphinx, myst_nb, furo" 2>/dev/null; then
  EXTRAS=${EXTRAS:-test,docs} bash scripts/setup_env.sh
fi
rm -rf docs/_build
# One OpenMP thread per process unless asked otherwise: on a shared or loaded CPU (CI),
# two threads stall at every OpenMP barrier (docs/benchmarks.md), and the tutorials
# print timings measured at this thread count.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)
.venv/bin/python -m sphinx -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html
echo "docs: built docs/_build/html in $(( $(date +%s) - start )) s (tutorials executed)"
