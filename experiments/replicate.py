"""A trained adapter against its base model (and a control) on fresh held-out items: the confirmatory check of a row
picked as the best of a held-out table (picking the best of many rows inflates it), written as a stamped results page.

    python experiments/replicate.py results/arith-replication.md --base runs/arith-replicate2/base \
        --trained runs/arith-replicate2/dpo-logprob --name "dpo (logprob)" --table-run runs/arith/dpo-logprob \
        --control runs/arith-replicate2/grpo-random --control-name "grpo (random)" \
        --range 256-511 --range 512-2559 --range 256-2559 --level 0.975

--base, --trained and --control are `sharpen eval` directories (greedy answers of the same test items: the base
model's, the adapter's, the control adapter's); items are read by their position in the test split (prompt id
`TASK-test-K`), and only the positions of each --range (inclusive) count, so the items of the table the row was
picked on stay out. Each range is a row with 95% paired bootstrap intervals over items; the verdict is read on the
last range at --level (a second look at the same question calls for a stricter level: two looks at 97.5% keep the
chance of a false "above zero" under 5%). --table-run (the trained run the row came from) checks that the base and
trained evaluations reproduce that run's greedy answers on the items they share (a mismatch means another setting,
and the page says so); --control-run checks the control's evaluation against its trained run the same way.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from page import run_commits, write
from stamp import stamp

from sharpen.errors import SharpenError
from sharpen.runs import load_jsonl
from sharpen.stats import bootstrap_ci, paired_bootstrap


def position(prompt_id: str) -> int:
    """K of a test item's id `TASK-test-K`."""
    return int(str(prompt_id).rsplit("-", 1)[1])


def greedy(d: Path) -> dict[int, dict]:
    """Position -> the greedy row of an eval directory (eval.jsonl) or a trained run's evaluation file."""
    return {position(r["prompt_id"]): r for r in load_jsonl(d) if r.get("kind", "greedy") == "greedy"}


def span(text: str) -> tuple[int, int]:
    """'A-B' -> (A, B), inclusive test positions."""
    try:
        a, b = (int(x) for x in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"range {text!r} is not A-B (inclusive test positions: 256-511)") from None
    if not 0 <= a <= b:
        raise argparse.ArgumentTypeError(f"range {text!r} needs 0 <= A <= B")
    return a, b


def agreement_with(checks: list[tuple[str, dict[int, dict], Path]]) -> str:
    """How many shared items give the same greedy text as the evaluation file each (name, answers, file) names."""
    out = []
    for name, mine, file in checks:
        theirs = greedy(file)
        shared = sorted(set(mine) & set(theirs))
        same = sum(mine[k]["text"] == theirs[k]["text"] for k in shared)
        out.append(f"{name}: {same} of {len(shared)} greedy answers identical to {file}")
    return "; ".join(out)


def compare(t: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[str, float, float]:
    """'+d [lo, hi]* | better / worse' cells of t against b (0/1 per item), with the interval's bounds in points."""
    d = paired_bootstrap(t, b, level=level)
    lo, hi = (100 * x for x in d["diff_ci"])
    cell = (f"{100 * d['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}]{'*' if d['excludes_zero'] else ''} | "
            f"{int(((t == 1) & (b == 0)).sum())} / {int(((t == 0) & (b == 1)).sum())}")
    return cell, lo, hi


def acc(x: np.ndarray) -> str:
    ci = bootstrap_ci(x)
    return f"{100 * x.mean():.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def verdict(lo: float, hi: float) -> str:
    return ("above zero" if lo > 0 else "below zero" if hi < 0 else "contains zero")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--trained", type=Path, required=True)
    ap.add_argument("--name", required=True, help="the row's name on the table it was picked from")
    ap.add_argument("--control", type=Path, default=None, help="a control adapter's `sharpen eval` directory")
    ap.add_argument("--control-name", default="control")
    ap.add_argument("--range", dest="ranges", type=span, action="append", required=True,
                    help="A-B: inclusive test positions that count, one row each (repeatable; the last is the verdict)")
    ap.add_argument("--level", type=float, default=0.95, help="interval level of the verdict (default: 0.95)")
    ap.add_argument("--table-run", type=Path, default=None)
    ap.add_argument("--control-run", type=Path, default=None,
                    help="the control's trained run: its held-out greedy answers are checked as --table-run's")
    ap.add_argument("--picked-on", type=span, default=None,
                    help="A-B: the held-out table's items, where the row was picked: a first row for reference only")
    args = ap.parse_args(argv)
    if not 0.5 <= args.level < 1:
        print(f"replicate.py: --level {args.level} is not in [0.5, 1): use e.g. 0.95 or 0.975", file=sys.stderr)
        return 2
    dirs = [args.base, args.trained] + ([args.control] if args.control else [])
    for d in dirs:
        if not (d / "eval.jsonl").is_file():
            print(f"replicate.py: {d} has no eval.jsonl: pass the --out of a `sharpen eval`", file=sys.stderr)
            return 2
    try:
        evals = [greedy(d / "eval.jsonl") for d in dirs]
        checks = [] if args.table_run is None else [("base", evals[0], args.table_run / "eval_base.jsonl"),
                                                    ("trained", evals[1], args.table_run / "eval_sharpened.jsonl")]
        if args.control and args.control_run is not None:
            checks.append(("control", evals[2], args.control_run / "eval_sharpened.jsonl"))
        agreement = agreement_with(checks)  # "" without checks
    except SharpenError as e:  # a damaged evaluation file: its one-line error, the old page kept
        print(f"replicate.py: {e}", file=sys.stderr)
        return 2
    shared = set.intersection(*(set(e) for e in evals))

    def column(e: dict[int, dict], items: list[int]) -> np.ndarray:
        return np.array([float(bool(e[k]["correct"])) for k in items])

    head = f"| items | base greedy % | {args.name} greedy % | vs base greedy, points | better / worse items |"
    if args.control:
        head += f" {args.control_name} greedy % | {args.name} vs {args.control_name}, points | better / worse items |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for a, b in ([args.picked_on] if args.picked_on else []) + args.ranges:
        items = sorted(k for k in shared if a <= k <= b)
        if not items:
            print(f"replicate.py: no test item in {a}-{b} in every evaluation: raise their --limit", file=sys.stderr)
            return 2
        cols = [column(e, items) for e in evals]
        size = f"{len(items)}" if len(items) == b - a + 1 else f"{len(items)} of {b - a + 1}: evaluation not finished"
        if (a, b) == args.picked_on:
            size += "; the table's items, where the row was picked: for reference"
        row = f"| test {a}-{b} ({size}) | {acc(cols[0])} | {acc(cols[1])} | {compare(cols[1], cols[0])[0]} |"
        if args.control:
            row += f" {acc(cols[2])} | {compare(cols[1], cols[2])[0]} |"
        lines.append(row)
    # The verdict: the last range (the loop's last: a, b, items, cols are its), at --level.
    pct = f"{100 * args.level:g}%"
    _, lo, hi = compare(cols[1], cols[0], args.level)
    said = [f"over base greedy [{lo:+.1f}, {hi:+.1f}]: {verdict(lo, hi)}"]
    if args.control:
        _, clo, chi = compare(cols[1], cols[2], args.level)
        said.append(f"over {args.control_name} [{clo:+.1f}, {chi:+.1f}]: {verdict(clo, chi)}")
    models = (f"the base model and {args.control_name}'s adapter (the control)" if args.control
              else "and the base model")
    note = (f"The adapter of {args.trained.name} ({args.name}), unchanged, " + models
            + " answer test items greedily. A row marked for reference holds the held-out table's items, where this "
            "row was picked; every other row's items are fresh (no run trained, validated or was picked on them). "
            "Paired differences "
            f"with 95% bootstrap intervals over items (`*`: excludes zero). Verdict on test {a}-{b} ({len(items)} "
            f"items) at {pct}: {args.name} " + "; ".join(said) + ".")
    if agreement:
        note += " Same setting as the table's run: " + agreement + "."
    command = "python experiments/replicate.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    title = f"# Replication on fresh held-out items: {args.name}\n\n"
    write(args.page, title + stamp(command, run_commits(dirs)) + note + "\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
