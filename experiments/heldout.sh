#!/usr/bin/env bash
# The held-out table of one setting, end to end: the base pool and the base best-of-N, then SFT, DPO,
# XPO and GRPO with the paper's `logprob` reward and with `vote`, then `sharpen compare --paired`.
#
#   experiments/heldout.sh TASK TEMPERATURE MAX_NEW_TOKENS OUT [more sharpen options, e.g. --model F.gguf --chat]
#
# JOBS=2 (default) runs two queues side by side, each with one torch thread per core it owns (THREADS=K: K); re-running the
# script resumes every unfinished run (each stage resumes on its own). The base model's evaluation rows are the
# same in every trained run (same model, items, seed and options), so the first trained run computes them and
# the others start from a copy. Sizes: TRAIN=128 VAL=32 EVAL=128 N=8 (environment variables).
# JOBLIST (environment) chooses the runs and their order, from: pool bon sft-vote sft-logprob sft-consistent
# sft-random sft-random-consistent (any sft-KIND also as sft-KIND-lrX: with --lr X) dpo-vote dpo-logprob dpo-random
# xpo-vote xpo-logprob grpo-vote grpo-logprob grpo-self_certainty grpo-gold grpo-random power-a4 (the
# default is the README's table: the first ten). grpo-gold (the gold answer as reward) is the upper bound;
# grpo-random and dpo-random (a coin flip) and sft-random (one random sample per prompt as the target) are the controls that must
# not help (the table compares every trained run with each that ran); power-a4 draws from pi^4 on the held-out items (compared with base
# best-of-N at equal tokens). The first trained run of the list computes the base evaluation the others share
# (--base-from; BASE_FROM=DIR: every trained run starts from DIR's instead, an sft/dpo/xpo/grpo run of the same
# setting). KEEP=best (default) or last: the trained runs' --keep. GRPO_STEPS=16: grpo's --max-steps (each step
# samples 4 groups of N; about 4 minutes a step for a 0.5B model on two CPU cores), evaluated twice.
# Ends by writing results/heldout-TASK.md (PAGE=... for another path): the table, stamped with this command; the
# page's note names the runs that did not finish. GRPO runs never run side by side (memory). TABLE_ONLY=1 runs
# nothing and only writes the table and page.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TASK TEMPERATURE MAX_NEW_TOKENS OUT [sharpen options]" >&2
  exit 2
fi
TASK=$1 T=$2 M=$3 OUT=$4 ARGS="$*"
shift 4
EXTRA=("$@")
KEEP=${KEEP:-best} BASE_FROM=${BASE_FROM:-} GRPO_STEPS=${GRPO_STEPS:-16} AGREEMENT=${AGREEMENT:-0.5}
JOBS=${JOBS:-2} TRAIN=${TRAIN:-128} VAL=${VAL:-32} EVAL=${EVAL:-128} N=${N:-8} EVAL_SAMPLES=${EVAL_SAMPLES:-2}
SHARPEN=${SHARPEN:-sharpen} PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd) PAGE=${PAGE:-$(cd "$(dirname "$0")/.." && pwd)/results/heldout-$TASK.md}
THREADS=${THREADS:-$(( $(nproc) / JOBS ))}; [ "$THREADS" -ge 1 ] || THREADS=1
export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT/.locks" "$OUT/logs"

B=(--task "$TASK" --max-new-tokens "$M" "${EXTRA[@]}")
C=("${B[@]}" --train-limit "$TRAIN" --val-limit "$VAL" --eval-limit "$EVAL" --eval-samples "$EVAL_SAMPLES"
   --keep "$KEEP")
P=(--from-run "$OUT/pool" --temperature "$T" --n "$N")
X=(--from-run "$OUT/pool" --temperature "$T" --beta auto --rounds 2 --pairs 2 --batch-size 4 --max-steps 16)
# grpo: 4 prompts per step as one micro-batch each (a group of 16 responses with its gradients is the memory peak)
G=(--group "$N" --batch-size 1 --grad-accum 4 --max-steps "$GRPO_STEPS" --eval-every "$(( (GRPO_STEPS + 1) / 2 ))")

# The command of each run; its directory is $OUT/NAME (`ready` below says what each waits for).
job() {
  local S=()  # where the base evaluation rows come from (the first trained run computes its own)
  if [ -n "$BASE_FROM" ]; then S=(--base-from "$BASE_FROM"); elif [ "$1" != "$FIRST" ]; then S=(--base-from "$OUT/$FIRST"); fi
  local C=("${C[@]}" "${S[@]}")
  case $1 in
    pool) $SHARPEN bon "${B[@]}" --split train --limit "$TRAIN" --n "$N" --seeds 1 --temperature "$T" --out "$OUT/pool" ;;
    bon) $SHARPEN bon "${B[@]}" --limit "$EVAL" --n "$N" --seeds 10 --temperature "$T" --out "$OUT/bon" ;;
    sft-*)  # sft-KIND or sft-KIND-lrX (the same with --lr X)
      local kind=${1#sft-} L=() R=()
      case $kind in *-lr*) L=(--lr "${kind##*-lr}"); kind=${kind%-lr*} ;; esac
      case $kind in
        vote|logprob) R=(--reward "$kind" --eval-every 8) ;;
        random) R=(--selector random --eval-every 8) ;;
        # Huang et al. 2022's self-improvement: up to 4 paths of the majority answer, prompts where it has at least
        # a share AGREEMENT (default 0.5) of the votes; random-consistent, its matched control: the same prompts and
        # as many paths, of the answer of a random sample instead of the majority's
        consistent) R=(--reward vote --per-prompt 4 --min-agreement "$AGREEMENT" --eval-every 16) ;;
        random-consistent) R=(--selector random --per-prompt 4 --min-agreement "$AGREEMENT" --eval-every 16) ;;
        *) echo "unknown job $1" >&2; return 2 ;;
      esac
      $SHARPEN sft "${C[@]}" "${P[@]}" "${R[@]}" --epochs 1 "${L[@]}" --out "$OUT/$1" ;;
    dpo-vote|dpo-logprob|dpo-random)
      $SHARPEN dpo "${C[@]}" "${P[@]}" --reward "${1#dpo-}" --beta auto --batch-size 4 --max-steps 16 --eval-every 8 --out "$OUT/$1" ;;
    grpo-vote) $SHARPEN grpo "${C[@]}" "${G[@]}" --reward vote --out "$OUT/grpo-vote" ;;
    grpo-logprob) $SHARPEN grpo "${C[@]}" "${G[@]}" --reward logprob --out "$OUT/grpo-logprob" ;;
    xpo-vote) $SHARPEN xpo "${C[@]}" "${X[@]}" --reward vote --out "$OUT/xpo-vote" ;;
    xpo-logprob) $SHARPEN xpo "${C[@]}" "${X[@]}" --reward logprob --out "$OUT/xpo-logprob" ;;
    grpo-self_certainty|grpo-gold|grpo-random) $SHARPEN grpo "${C[@]}" "${G[@]}" --reward "${1#grpo-}" --out "$OUT/$1" ;;
    power-a4) $SHARPEN power "${B[@]}" --limit "$EVAL" --alpha 4 --method mh --n 2 --block 32 --mh-steps 1 \
                --out "$OUT/power-a4" ;;
  esac
}
read -r -a ALL <<< "${JOBLIST:-pool bon sft-vote grpo-vote sft-logprob dpo-vote grpo-logprob dpo-logprob xpo-vote xpo-logprob}"
FIRST=$(for j in "${ALL[@]}"; do case $j in pool|bon|power-a4) ;; *) echo "$j"; break ;; esac; done)

done_() { [ -f "$OUT/$1/summary.json" ]; }
lines() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
# The first trained run's base evaluation is complete: greedy + samples for every validation and evaluation item.
base_ready() {
  local d=$OUT/$FIRST per=$(( 1 + EVAL_SAMPLES ))
  [ "$(lines "$d/eval_base.jsonl")" -ge $(( EVAL * per )) ] && [ "$(lines "$d/val_base.jsonl")" -ge $(( VAL * per )) ]
}
ready() {
  case $1 in pool|bon|power-a4) return 0 ;; esac
  if [ "$1" = "$FIRST" ] || [ -n "$BASE_FROM" ]; then case $1 in grpo-*) return 0 ;; *) done_ pool; return ;; esac; fi
  case $1 in grpo-*) base_ready ;; *) done_ pool && base_ready ;; esac
}

# A GRPO run holds a lock and has not failed: GRPO runs one at a time (two side by side ran out of 24 GiB).
grpo_running() {
  local l
  for l in "$OUT/.locks"/grpo-*; do [ -d "$l" ] && [ ! -e "$l/failed" ] && return 0; done
  return 1
}

worker() {
  while :; do
    local left=0 ran=0
    for j in "${ALL[@]}"; do
      done_ "$j" && continue
      left=1
      ready "$j" || continue
      case $j in grpo-*) grpo_running && continue ;; esac  # one group of N with its gradients is ~11 GiB
      mkdir "$OUT/.locks/$j" 2>/dev/null || continue
      echo "$(date -u +%FT%TZ) start $j (worker $1)" >> "$OUT/logs/queue.log"
      if job "$j" > "$OUT/logs/$j.log" 2>&1; then
        echo "$(date -u +%FT%TZ) done $j" >> "$OUT/logs/queue.log"
      else
        echo "$(date -u +%FT%TZ) FAILED $j (see $OUT/logs/$j.log)" >> "$OUT/logs/queue.log"
        touch "$OUT/.locks/$j/failed"
        continue
      fi
      rmdir "$OUT/.locks/$j" 2>/dev/null || true
      ran=1
    done
    [ $left = 0 ] && return 0
    # Stop when every unfinished job is failed or held by another queue and nothing can start.
    if [ $ran = 0 ]; then
      for f in pool "$FIRST"; do [ -e "$OUT/.locks/$f/failed" ] && return 1; done  # the rest needs them
      local waiting=0
      for j in "${ALL[@]}"; do
        done_ "$j" || [ -e "$OUT/.locks/$j/failed" ] || waiting=1
      done
      [ $waiting = 0 ] && return 1
      sleep 30
    fi
  done
}

status=0
if [ "${TABLE_ONLY:-0}" != 1 ]; then  # TABLE_ONLY=1: run nothing, write the table and page of the finished runs
  for j in "${ALL[@]}"; do rm -rf "$OUT/.locks/$j"; done  # a killed earlier invocation's: its runs resume (another
  # invocation on the same OUT with other runs in its JOBLIST keeps its locks)
  pids=()
  for w in $(seq 1 "$JOBS"); do worker "$w" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || status=$?; done
fi
finished=() missing=()
for j in "${ALL[@]}"; do case $j in pool|bon) ;; *) if done_ "$j"; then finished+=("$OUT/$j"); else missing+=("$j"); fi ;; esac; done
CTL=()  # the trained runs against the controls that ran
for j in "${ALL[@]}"; do case $j in grpo-random|dpo-random|sft-random*) done_ "$j" && CTL+=(--control "$OUT/$j") ;; esac; done
$SHARPEN compare "${finished[@]}" --paired "$OUT/bon" "${CTL[@]}" --out "$OUT/table" || status=$?
[ $status = 0 ] && { "$PYTHON" "$HERE/diagnose.py" "$OUT" > "$OUT/diagnose.md" || status=$?; }
if [ $status = 0 ]; then
  "$PYTHON" "$HERE/page.py" "$PAGE" --title "${TITLE:-Held-out table: $TASK, base samples at temperature $T}" \
    --command "${SHOWN_COMMAND:-$0 $ARGS}" --runs "$OUT" --part "" "$OUT/table/paired.md" \
    --part "What each trained run trained on, and how training went" "$OUT/diagnose.md" --note "The base model and its \
best-of-$N on $EVAL held-out test items against the trained runs (${finished[*]##*/}), trained on $TRAIN train \
items (validated on $VAL validation items, --keep $KEEP); $M new tokens; sizes TRAIN=$TRAIN VAL=$VAL EVAL=$EVAL N=$N \
EVAL_SAMPLES=$EVAL_SAMPLES KEEP=$KEEP GRPO_STEPS=$GRPO_STEPS.${missing[*]:+ Not finished: ${missing[*]}.} The table is \`sharpen compare --paired\` over the run directories in $OUT." || status=$?
fi
exit $status
