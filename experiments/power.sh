#!/usr/bin/env bash
# Power sampling against Best-of-N on the embedded model: per task, the base best-of-8 at temperature 0.7, power
# sampling of pi^4 and pi^2 (MH), and `sharpen compare --paired`, which sets each power row beside base best-of-k
# at the response tokens it spent. Ends by writing results/power.md (PAGE=... for another path).
#
#   experiments/power.sh OUT [RUN_DIR...]     (re-running resumes: each run resumes on its own)
#
# RUN_DIRs: trained runs evaluated on the same ProntoQA items (e.g. a held-out table's dpo-logprob) join the
# ProntoQA table. TASKS="prontoqa gsm8k", LIMIT=128 items, N=8 base samples, ALPHAS="4 2" (environment).
# Per task: new tokens, MH chains, MH moves per block (ProntoQA 96, 4, 2; GSM8K, whose responses are longer, 128,
# 2, 1, which keeps the budget near the bon run's).
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 OUT [RUN_DIR...]" >&2; exit 2; fi
OUT=$1 ARGS="$*"
shift
TRAINED=("$@")
TASKS=${TASKS:-"prontoqa gsm8k"} LIMIT=${LIMIT:-128} N=${N:-8} ALPHAS=${ALPHAS:-"4 2"}
SHARPEN=${SHARPEN:-sharpen} PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd) PAGE=${PAGE:-$(cd "$(dirname "$0")/.." && pwd)/results/power.md}
mkdir -p "$OUT"

parts=()
for task in $TASKS; do
  case $task in
    prontoqa) M=96 CHAINS=4 MOVES=2 ;;
    gsm8k) M=128 CHAINS=2 MOVES=1 ;;
    *) M=${M:-128} CHAINS=${CHAINS:-2} MOVES=${MOVES:-1} ;;
  esac
  $SHARPEN bon --task "$task" --max-new-tokens "$M" --limit "$LIMIT" --n "$N" --seeds 10 --temperature 0.7 \
    --out "$OUT/$task-bon"
  dirs=()
  for a in $ALPHAS; do
    $SHARPEN power --task "$task" --limit "$LIMIT" --max-new-tokens "$M" --alpha "$a" --method mh --n "$CHAINS" \
      --block 32 --mh-steps "$MOVES" --out "$OUT/$task-mh-a$a"
    dirs+=("$OUT/$task-mh-a$a")
  done
  extra=()
  [ "$task" = prontoqa ] && extra=("${TRAINED[@]}")
  $SHARPEN compare "${extra[@]}" "${dirs[@]}" --paired "$OUT/$task-bon" --out "$OUT/$task-table"
  parts+=(--part "$task: the first $LIMIT test items, $M new tokens; MH: $CHAINS chains, blocks of 32 tokens, \
moves per block: $MOVES" "$OUT/$task-table/paired.md")
done
"$PYTHON" "$HERE/page.py" "$PAGE" --title "Power sampling against Best-of-N on the embedded model" \
  --command "$0 $ARGS" --runs "$OUT" "${parts[@]}" --note "Base best-of-$N at temperature 0.7 against power \
sampling of pi^alpha (alpha in $ALPHAS, proposal temperature 1/alpha); the rows 'tokens of power ...' are base \
majority and logprob over the bon run's first k samples, k chosen so that they spend the response tokens the power \
row spent (every proposal counted, rejected ones included). Tables: \`sharpen compare --paired\` over $OUT."
