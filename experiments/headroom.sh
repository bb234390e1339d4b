#!/usr/bin/env bash
# Headroom sweep for the arith task: where does a model have label-free signal that sharpening can amortize?
# For each model, prompt format, difficulty level and temperature, one best-of-N run on the *validation* items
# (the setting of the held-out table is chosen here, never on the items it reports), then the table.
#
#   experiments/headroom.sh OUT [QWEN_GGUF]      (re-running resumes: each bon run resumes on its own)
#
# Sizes (environment): VAL=32 items, N=16 samples, M=128 new tokens, LEVELS="1 2 3", TEMPS="0.7 1.0".
# WIDE: more settings of the second model as FORMAT-LLEVEL-TTEMP, the widening asked for before a negative is
# concluded (default: completion at the lower temperature 0.5 for levels 1-4, and level 4, three operations, at
# 0.7 and 1.0). The embedded model runs at the easiest level only (it cannot do this arithmetic).
# Writes OUT/<model>-<format>-L<level>-T<temp>/ run directories and results/headroom.md.
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 OUT [QWEN_GGUF]" >&2; exit 2; fi
OUT=$1 QWEN=${2:-}
ARGS="$OUT${QWEN:+ $(basename "$QWEN")}"  # the page names the model file, not where it lies
VAL=${VAL:-32} N=${N:-16} M=${M:-128} LEVELS=${LEVELS:-"1 2 3"} TEMPS=${TEMPS:-"0.7 1.0"}
WIDE=${WIDE-"completion-L1-T0.5 completion-L2-T0.5 completion-L3-T0.5 completion-L4-T0.5 completion-L4-T0.7 completion-L4-T1.0"}
SHARPEN=${SHARPEN:-sharpen} PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/logs"

# The names of every run of the sweep, and the page (also when called with TABLE_ONLY=1: a partial sweep's page
# says which settings are missing and chooses none).
names() {
  local temp fmt level
  if [ -n "$QWEN" ]; then
    for temp in $TEMPS; do for fmt in completion chat; do for level in $LEVELS; do
      echo "qwen05-$fmt-L$level-T$temp"; done; done; done
    for w in $WIDE; do echo "qwen05-$w"; done
  fi
  for temp in $TEMPS; do echo "gemma270m-completion-L${LEVELS%% *}-T$temp"; done
}
table() {
  mapfile -t expect < <(names)
  "$PYTHON" "$HERE/headroom_table.py" "$OUT" --command "$0 $ARGS" --expect "${expect[@]}" \
    > "$HERE/../results/headroom.md.tmp" && mv "$HERE/../results/headroom.md.tmp" "$HERE/../results/headroom.md"
}
if [ -n "${TABLE_ONLY:-}" ]; then table; exit; fi

run() {  # NAME MODEL LEVEL TEMP [--chat]
  local name=$1 model=$2 level=$3 temp=$4; shift 4
  [ -f "$OUT/$name/summary.json" ] && return 0  # finished (also at another size: the table shows its items)
  echo "$(date -u +%H:%M:%S) $name" >&2
  local t0=$SECONDS
  $SHARPEN bon --task arith --split validation --level "$level" --model "$model" --limit "$VAL" --n "$N" \
    --seeds 10 --temperature "$temp" --max-new-tokens "$M" --out "$OUT/$name" "$@" > "$OUT/logs/$name.log" 2>&1
  echo "$name $(( SECONDS - t0 ))" >> "$OUT/logs/wall_s.txt"
}

if [ -n "$QWEN" ]; then
  for temp in $TEMPS; do
    for fmt in completion chat; do
      flag=(); [ "$fmt" = chat ] && flag=(--chat)
      for level in $LEVELS; do
        run "qwen05-$fmt-L$level-T$temp" "$QWEN" "$level" "$temp" "${flag[@]}"
      done
    done
  done
  for w in $WIDE; do  # FORMAT-LLEVEL-TTEMP
    fmt=${w%%-*} level=${w#*-L} temp=${w##*-T}; level=${level%%-*}
    flag=(); [ "$fmt" = chat ] && flag=(--chat)
    run "qwen05-$w" "$QWEN" "$level" "$temp" "${flag[@]}"
  done
fi
first=${LEVELS%% *}
for temp in $TEMPS; do run "gemma270m-completion-L$first-T$temp" gemma-3-270m "$first" "$temp"; done
table

echo "wrote results/headroom.md" >&2
