#!/usr/bin/env bash
# What `make demo` shows: runs `sharpen demo` (best-of-8 on 64 ProntoQA items, embedded model) into OUT and writes
# its console table to results/demo.md (PAGE=... for another path). Re-running resumes the run and rewrites the page.
#
#   experiments/demo.sh OUT [sharpen demo options]
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 OUT [sharpen demo options]" >&2; exit 2; fi
OUT=$1 ARGS="$*"
shift
SHARPEN=${SHARPEN:-sharpen} PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd) PAGE=${PAGE:-$(cd "$(dirname "$0")/.." && pwd)/results/demo.md}
mkdir -p "$OUT"
$SHARPEN demo --out "$OUT/demo" "$@" | tee "$OUT/demo.txt"
"$PYTHON" "$HERE/page.py" "$PAGE" --title "What the demo shows" --command "$0 $ARGS" --runs "$OUT/demo" \
  --part "" "$OUT/demo.txt" --note "The console output of \`sharpen demo\` (what \`make demo\` runs): every \
selector of best-of-8 with its 95% interval over the items, the paired difference with greedy, and the \
majority-label baseline."
