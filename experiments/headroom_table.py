"""results/headroom.md from the run directories of experiments/headroom.sh (reads only their summary.json).

    python experiments/headroom_table.py OUT --command "experiments/headroom.sh OUT MODEL" > results/headroom.md

One row per (model, format, level, temperature): greedy accuracy, mean sample accuracy at temperature 1 and at
the run's temperature, the label-free selectors at N, pass@N, each with its 95% bootstrap interval over items
and its paired difference with greedy. The setting for the held-out table is the row (of the models with signal)
whose best label-free selector beats greedy by the largest lower bound: chosen here, on validation items.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from stamp import stamp

NAME = re.compile(r"(?P<model>[^-]+)-(?P<fmt>completion|chat)-L(?P<level>[^-]+)-T(?P<temp>[0-9.]+)$")
SELECTORS = ("logprob", "logprob_mean", "majority")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def interval(value: float, ci: list[float]) -> str:
    return f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}]"


def paired(d: dict) -> str:
    lo, hi = d["diff_ci"]
    star = "*" if d["excludes_zero"] else ""
    return f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{star}"


def load(out: Path) -> list[dict]:
    rows = []
    for summary in sorted(out.glob("*/summary.json")):
        m = NAME.match(summary.parent.name)
        if m is None:
            continue
        s = json.loads(summary.read_text(encoding="utf-8"))
        conf = json.loads((summary.parent / "config.json").read_text(encoding="utf-8"))
        rows.append({**m.groupdict(), "temp": float(m["temp"]), "s": s, "dir": summary.parent.name,
                     "commits": conf.get("commits") or []})
    return rows


def sample_at_t1(rows: list[dict], row: dict) -> str:
    twin = next((r for r in rows if r["temp"] == 1.0 and all(r[k] == row[k] for k in ("model", "fmt", "level"))),
                None)
    return interval(twin["s"]["sample_accuracy"], twin["s"]["sample_accuracy_ci"]) if twin else "not run"


def headroom(row: dict) -> float:
    """Lower bound of the best label-free selector's paired gain over greedy at N."""
    n = str(row["s"]["n"])
    return max(row["s"]["selectors"][k][n]["vs_greedy"]["diff_ci"][0] for k in SELECTORS)


def gain(row: dict) -> float:
    """The largest paired gain over greedy (point estimate) of a label-free selector at N: breaks ties of
    `headroom`."""
    n = str(row["s"]["n"])
    return max(row["s"]["selectors"][k][n]["vs_greedy"]["diff"] for k in SELECTORS)


def setting(row: dict) -> str:
    return f"{row['model']} {row['fmt']}, level {row['level']}, T = {row['temp']:g}"


def table(rows: list[dict]) -> str:
    head = ["model", "format", "level", "T", "items", "greedy", "sample acc T=1", "sample acc T", "sample vs greedy"]
    head += [f"{k}@N vs greedy" for k in SELECTORS] + ["pass@N", "pass@N vs greedy", "mean tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["model"], r["fmt"], r["temp"], r["level"])):
        s, n = r["s"], str(r["s"]["n"])
        sel = s["selectors"]
        cells = [r["model"], r["fmt"], r["level"], f"{r['temp']:g}", str(s["num_prompts"]),
                 interval(s["greedy"]["accuracy"], s["greedy"]["accuracy_ci"]), sample_at_t1(rows, r),
                 interval(s["sample_accuracy"], s["sample_accuracy_ci"]), paired(sel["random"][n]["vs_greedy"])]
        cells += [f"{pct(sel[k][n]['accuracy_mean'])} ({paired(sel[k][n]['vs_greedy'])})" for k in SELECTORS]
        cells += [interval(s["pass_at_k"][n], s["pass_at_k_ci"][n]), paired(sel["oracle"][n]["vs_greedy"]),
                  f"{s['greedy'].get('mean_num_tokens', float('nan')):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--command", default="experiments/headroom.sh")
    ap.add_argument("--expect", nargs="*", default=[],
                    help="run names the sweep makes (MODEL-FORMAT-LLEVEL-TTEMP); the page lists those not finished")
    args = ap.parse_args(argv)
    rows = load(args.out)
    if not rows:
        print(f"no finished run in {args.out}", file=sys.stderr)
        return 2
    n = rows[0]["s"]["n"]
    text = "# Headroom: where sharpening has something to amortize (arith, validation items)\n\n"
    text += stamp(args.command, [c for r in rows for c in r["commits"]])
    text += (f"Best-of-N on the arith task's **validation** split (never the held-out test items), N = {n}, "
             "10 subsampling seeds. Accuracy in % with 95% bootstrap intervals over items; `vs greedy` is the paired "
             "difference in points with its 95% interval (`*`: excludes zero). `sample acc` is the mean accuracy of "
             "single samples; `sample vs greedy` the paired difference of one random sample. Answers are open "
             "integers, so there is no label prior to pass for a gain.\n\n")
    text += table(rows)
    missing = [name for name in args.expect if name not in {r["dir"] for r in rows}]
    if missing:
        text += (f"\n**Sweep not finished**: {len(missing)} of {len(args.expect)} settings have no finished run yet "
                 f"({', '.join(missing)}); re-running the command resumes the sweep and rewrites this page. No "
                 "setting is chosen from a partial sweep.\n")
    signal = [r for r in rows if not r["model"].startswith("gemma")]
    if signal and not missing:
        best = max(signal, key=lambda r: (headroom(r), gain(r)))
        ties = "; ".join(f"{setting(r)} (gain {100 * gain(r):+.1f})" for r in signal
                         if r is not best and headroom(r) == headroom(best))
        text += (f"\nChosen for the held-out table (largest lower bound of the best label-free selector's gain over "
                 f"greedy, on validation items; ties go to the larger gain): **{setting(best)}** (lower bound "
                 f"{100 * headroom(best):+.1f} points, gain {100 * gain(best):+.1f})"
                 + (f"; tied on the lower bound: {ties}" if ties else "")
                 + ". 32 validation items are few: before a held-out table runs, `experiments/targets.py` checks the "
                 "setting's label-free picks against greedy on its training prompts (results/arith-targets.md).\n")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
