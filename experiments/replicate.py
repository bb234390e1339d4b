"""A trained adapter against its base model on fresh held-out items: the confirmatory check of a row picked as the
best of a held-out table (picking the best of many rows inflates it), written as a stamped results page.

    python experiments/replicate.py results/arith-replication.md --base runs/arith-replicate/base \
        --trained runs/arith-replicate/dpo-logprob --from 256 --name "dpo (logprob)" --table-run runs/arith/dpo-logprob

--base and --trained are `sharpen eval` directories (greedy answers of the same test items, the base model's and
the adapter's); items are read by their position in the test split (prompt id `TASK-test-K`), and only K >= --from
count, so the items of the table the row was picked on stay out. --table-run (the trained run the row came from)
checks that both evaluations reproduce that run's greedy answers on the items they share (a mismatch means another
setting, and the page says so). Paired difference in points with a 95% bootstrap interval over items.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from page import run_commits, write
from stamp import stamp

from sharpen.stats import bootstrap_ci, paired_bootstrap


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def position(prompt_id: str) -> int:
    """K of a test item's id `TASK-test-K`."""
    return int(str(prompt_id).rsplit("-", 1)[1])


def greedy(d: Path) -> dict[int, dict]:
    """Position -> the greedy row of an eval directory (eval.jsonl) or a trained run's evaluation file."""
    return {position(r["prompt_id"]): r for r in _jsonl(d) if r.get("kind", "greedy") == "greedy"}


def agreement_with(table_run: Path, base: dict[int, dict], trained: dict[int, dict]) -> str:
    """How many shared items give the same greedy text as the trained run's own evaluation files."""
    out = []
    for name, mine, file in (("base", base, "eval_base.jsonl"), ("trained", trained, "eval_sharpened.jsonl")):
        theirs = greedy(table_run / file)
        shared = sorted(set(mine) & set(theirs))
        same = sum(mine[k]["text"] == theirs[k]["text"] for k in shared)
        out.append(f"{name}: {same} of {len(shared)} greedy answers identical to {table_run}/{file}")
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--trained", type=Path, required=True)
    ap.add_argument("--from", dest="start", type=int, required=True, help="first test position that counts")
    ap.add_argument("--name", required=True, help="the row's name on the table it was picked from")
    ap.add_argument("--table-run", type=Path, default=None)
    args = ap.parse_args(argv)
    for d in (args.base, args.trained):
        if not (d / "eval.jsonl").is_file():
            print(f"replicate.py: {d} has no eval.jsonl: pass the --out of a finished `sharpen eval`", file=sys.stderr)
            return 2
    base, trained = greedy(args.base / "eval.jsonl"), greedy(args.trained / "eval.jsonl")
    fresh = sorted(k for k in set(base) & set(trained) if k >= args.start)
    if not fresh:
        print(f"replicate.py: no item at position >= {args.start} in both evaluations: raise their --limit",
              file=sys.stderr)
        return 2
    b = np.array([float(bool(base[k]["correct"])) for k in fresh])
    t = np.array([float(bool(trained[k]["correct"])) for k in fresh])
    d = paired_bootstrap(t, b)
    lo, hi = d["diff_ci"]

    def acc(x: np.ndarray) -> str:
        ci = bootstrap_ci(x)
        return f"{100 * x.mean():.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    verdict = ("above zero: the gain replicates" if lo > 0 else
               "below zero: the row was worse than base on fresh items" if hi < 0 else
               "contains zero: the gain does not replicate at this size")
    lines = ["| items | base greedy % | " + args.name + " greedy % | difference, points | better / worse items |",
             "|---|---|---|---|---|",
             f"| test {fresh[0]}-{fresh[-1]} ({len(fresh)}) | {acc(b)} | {acc(t)} | "
             f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{'*' if d['excludes_zero'] else ''} | "
             f"{int(((t == 1) & (b == 0)).sum())} / {int(((t == 0) & (b == 1)).sum())} |"]
    note = (f"The adapter of {args.trained.name} ({args.name}), unchanged, and the base model answer fresh test items "
            f"greedily (positions {args.start} and up: no run trained, validated or was picked on them). Paired "
            f"difference with its 95% bootstrap interval over items (`*`: excludes zero): {verdict}.")
    if args.table_run is not None:
        note += " Same setting as the table's run: " + agreement_with(args.table_run, base, trained) + "."
    command = "python experiments/replicate.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    title = f"# Replication on fresh held-out items: {args.name}\n\n"
    write(args.page, title + stamp(command, run_commits([args.base, args.trained])) + note + "\n\n"
          + "\n".join(lines) + "\n")
    print(f"wrote {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
