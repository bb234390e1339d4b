#!/usr/bin/env bash
# Headroom on the paper's benchmarks: how far best-of-N gets above greedy, per model, task and temperature (the
# self-reward is always the raw temperature-1 log-prob). One `sharpen bon` run per setting, then one
# `sharpen compare` table. Ends by writing results/headroom-paper-tasks.md (PAGE=... for another path).
#
#   experiments/headroom_tasks.sh OUT [QWEN_GGUF]     (re-running resumes: each bon run resumes on its own)
#
# TEMPS="1.0 0.7", N=8 (environment). Gemma 3 270M (embedded): 128 items, 96 new tokens (ProntoQA) or 128 (GSM8K,
# MMLU). Qwen2.5-Coder-0.5B-Instruct (a .gguf, chat template): 64 ProntoQA items (256 tokens), 32 GSM8K (384) and
# 32 MMLU (256).
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 OUT [QWEN_GGUF]" >&2; exit 2; fi
OUT=$1 QWEN=${2:-} ARGS="$*"
TEMPS=${TEMPS:-"1.0 0.7"} N=${N:-8}
SHARPEN=${SHARPEN:-sharpen} PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd) PAGE=${PAGE:-$(cd "$(dirname "$0")/.." && pwd)/results/headroom-paper-tasks.md}
mkdir -p "$OUT"

run() {  # NAME TASK LIMIT MAX_NEW_TOKENS TEMP [sharpen options]
  local name=$1 task=$2 limit=$3 m=$4 temp=$5; shift 5
  $SHARPEN bon --task "$task" --limit "$limit" --n "$N" --seeds 10 --temperature "$temp" --max-new-tokens "$m" \
    --out "$OUT/$name" "$@"
  dirs+=("$OUT/$name")
}
dirs=()
for temp in $TEMPS; do
  run "gemma-prontoqa-T$temp" prontoqa 128 96 "$temp"
  run "gemma-gsm8k-T$temp" gsm8k 128 128 "$temp"
  run "gemma-mmlu-T$temp" mmlu 128 128 "$temp"
  if [ -n "$QWEN" ]; then
    run "qwen-prontoqa-T$temp" prontoqa 64 256 "$temp" --model "$QWEN" --chat
    run "qwen-gsm8k-T$temp" gsm8k 32 384 "$temp" --model "$QWEN" --chat
    run "qwen-mmlu-T$temp" mmlu 32 256 "$temp" --model "$QWEN" --chat
  fi
done
$SHARPEN compare "${dirs[@]}" --out "$OUT/table"
"$PYTHON" "$HERE/page.py" "$PAGE" --title "Headroom on the paper's benchmarks: best-of-N above greedy" \
  --command "$0 $ARGS" --runs "$OUT" --part "" "$OUT/table/compare.md" --note "Best-of-$N (10 subsampling seeds) on the \
first test items of ProntoQA, GSM8K and MMLU at temperatures $TEMPS; training can at best carry such a gain over \
to greedy decoding. Table: \`sharpen compare\` over the run directories in $OUT."
