"""Can amortizing a label-free pick lift greedy? Before any training: on the prompts of best-of-N pools (train or
validation items, never the reported ones), how often the pick an SFT run would train on is right, beside the base
greedy answer on the same prompts, for prompts kept at each `--min-agreement`.

    python experiments/targets.py results/arith-targets.md RUN_DIR ...

RUN_DIR is a `sharpen bon` run directory (config.json, samples.jsonl, greedy.jsonl), named on the page by its
split, level, format and temperature; a pool stopped part way counts the prompts whose N samples are all there
(the page says how many of those asked). SFT-sharpening moves greedy toward its targets: where the pick is right no
more often than greedy, amortizing it cannot lift greedy accuracy (it can still lift the accuracy of samples).
Picks are the ones sft itself takes (`stages.sft.best_responses`, with its default --valid-only: a prompt without a
valid sample gets none); differences are paired over prompts with 95% bootstrap intervals (`stats.paired_bootstrap`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from page import run_commits, write
from stamp import stamp

from sharpen.errors import SharpenError
from sharpen.rows import complete_pools
from sharpen.runs import load_jsonl
from sharpen.stages.sft import best_responses
from sharpen.stats import paired_bootstrap

PICKS = ("majority", "logprob")  # the target selectors of sft --reward vote / logprob
THRESHOLDS = (0.0, 0.25, 0.5)


def label(options: dict) -> str:
    """How the page names a pool: split, level (arith), format, temperature, N."""
    level = f"level {options['level']}, " if options.get("level") else ""
    fmt = "chat" if options.get("chat") else "completion"
    return f"{options.get('split')}, {level}{fmt}, T {options.get('temperature')}, N {options.get('n')}"


def rows_of(run: Path) -> list[str]:
    """Table rows of one pool: per agreement threshold, prompts kept, greedy and each pick's accuracy on them."""
    conf = json.loads((run / "config.json").read_text(encoding="utf-8"))
    options = conf["options"]
    pools, _ = complete_pools(load_jsonl(run / "samples.jsonl"), int(options["n"]))
    title = label(options)
    asked = conf.get("num_prompts")
    if asked and len(pools) < asked:
        title += f" (stopped at {len(pools)} of {asked} prompts)"
    greedy = {str(r["prompt_id"]): float(bool(r.get("correct"))) for r in load_jsonl(run / "greedy.jsonl")}
    out = []
    prompts = [{"id": p, "prompt_token_ids": []} for p in pools if p in greedy]
    for th in THRESHOLDS:
        # The picks sft would train on (its own function, --valid-only as its default): prompts below the agreement
        # threshold, or without a valid sample, get none.
        picks = {name: {str(r["prompt_id"]): float(bool(r.get("correct")))
                        for r in best_responses(prompts, pools, name, valid_only=True, min_agreement=th)}
                 for name in PICKS}
        ids = [p["id"] for p in prompts if all(p["id"] in picks[name] for name in PICKS)]
        if not ids:
            out.append(f"| {title} | {th:g} | 0 | n/a |" + " n/a |" * len(PICKS))
            continue
        g = np.array([greedy[p] for p in ids])
        cells = [f"{100 * g.mean():.1f}"]
        for name in PICKS:
            a = np.array([picks[name][p] for p in ids])
            d = paired_bootstrap(a, g)
            lo, hi = d["diff_ci"]
            cells.append(f"{100 * a.mean():.1f} ({100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                         f"{'*' if d['excludes_zero'] else ''})")
        out.append(f"| {title} | {th:g} | {len(ids)} of {len(pools)} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("pools", nargs="+", type=Path, metavar="RUN_DIR")
    args = ap.parse_args(argv)
    for run in args.pools:
        if not all((run / f).is_file() for f in ("config.json", "samples.jsonl", "greedy.jsonl")):
            print(f"targets.py: {run} is not a bon run directory (config.json, samples.jsonl, greedy.jsonl): "
                  "pass the --out of `sharpen bon`", file=sys.stderr)
            return 2
    head = ["| pool | min agreement | prompts kept | base greedy % | " + " | ".join(
        f"{name} pick % (vs greedy)" for name in PICKS) + " |", "|---|---|---|---|" + "---|" * len(PICKS)]
    try:
        body = [row for run in args.pools for row in rows_of(run)]
    except SharpenError as e:  # a damaged run file: its one-line error, the old page kept
        print(f"targets.py: {e}", file=sys.stderr)
        return 2
    command = "python experiments/targets.py " + " ".join(sys.argv[1:] if argv is None else argv)
    note = ("On each pool's prompts (train or validation items, never the held-out ones), the accuracy of the pick an "
            "SFT run would train on (`--reward vote`: the majority pick; `--reward logprob`: the likeliest sample) "
            "beside the base model's greedy answer on the same prompts, for the prompts whose most common answer "
            "has at least the share `min agreement` of the samples (`sft --min-agreement`). Paired differences in "
            "points with 95% bootstrap intervals over prompts (`*`: excludes zero). SFT moves greedy toward its "
            "targets: where the pick is right no more often than greedy, it cannot lift greedy accuracy.")
    title = "# Label-free SFT targets against base greedy, before training\n\n"
    write(args.page, title + stamp(command, run_commits(args.pools)) + note + "\n\n" + "\n".join([*head, *body]) + "\n")
    print(f"wrote {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
