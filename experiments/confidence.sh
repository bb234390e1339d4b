#!/usr/bin/env bash
# Confidence selectors and early stopping on the embedded model: per task, one best-of-16 run and the same run
# with DeepConf-online early stopping, then `sharpen compare` of the two (every selector at N = 16 with its
# interval, balanced accuracy, answer rate, response tokens per prompt). Ends by writing results/confidence.md
# (PAGE=... for another path).
#
#   experiments/confidence.sh OUT [more sharpen bon options]     (re-running resumes every run)
#
# TASKS="prontoqa gsm8k", LIMIT=128 items, N=16 samples (environment); new tokens: ProntoQA 96, GSM8K 128.
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 OUT [sharpen bon options]" >&2; exit 2; fi
OUT=$1 ARGS="$*"
shift
EXTRA=("$@")
TASKS=${TASKS:-"prontoqa gsm8k"} LIMIT=${LIMIT:-128} N=${N:-16}
SHARPEN=${SHARPEN:-sharpen} PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd) PAGE=${PAGE:-$(cd "$(dirname "$0")/.." && pwd)/results/confidence.md}
mkdir -p "$OUT"

parts=()
for task in $TASKS; do
  case $task in prontoqa) M=96 ;; *) M=128 ;; esac
  B=(--task "$task" --limit "$LIMIT" --n "$N" --seeds 10 --max-new-tokens "$M" "${EXTRA[@]}")
  $SHARPEN bon "${B[@]}" --out "$OUT/$task"
  $SHARPEN bon "${B[@]}" --early-stop --out "$OUT/$task-early-stop"
  $SHARPEN compare "$OUT/$task" "$OUT/$task-early-stop" --out "$OUT/$task-table"
  parts+=(--part "$task: the first $LIMIT test items, N = $N, $M new tokens" "$OUT/$task-table/compare.md")
done
"$PYTHON" "$HERE/page.py" "$PAGE" --title "Confidence selectors and early stopping on the embedded model" \
  --command "$0 $ARGS" --runs "$OUT" "${parts[@]}" --note "Every selector of a best-of-$N run (the paper's \
log-likelihood, majority, self-certainty, DeepConf, CISC) and the same run with --early-stop (DeepConf-online: \
warm-up 8, keep 90%, 32-token windows). Tables: \`sharpen compare\` over the run directories in $OUT."
