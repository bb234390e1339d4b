"""Why a trained run did or did not help: what each sft / dpo / xpo / grpo run of a held-out table trained on and
how training went, read from its run directory (nothing is recomputed).

    python experiments/diagnose.py runs/arith > runs/arith/table/diagnose.md

One row per finished trained run: the kept checkpoint; the training data's accuracy (sft: the targets, and on their
prompts the pick's accuracy beside the base greedy answer's, read from the pool; dpo / xpo:
the share of pairs whose preferred side, by the reward, is the correct one among pairs with one correct side, and
how many pairs carry no preference; grpo: reward and accuracy of the sampled groups, first and last quarter of
the steps); the validation greedy accuracy at each evaluation; the last estimated KL(pi || pi_base); and the held-out
change of the mean log-probability the trained model gives its own greedy answers, and of their log pi_base.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

from sharpen.errors import SharpenError
from sharpen.runs import load_jsonl


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _mean(xs: list) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return mean(xs) if xs else None


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def training_data(command: str, d: Path) -> str:
    """What the run trained on, in one cell."""
    if command == "sft":
        rows = load_jsonl(d / "sft_data.jsonl")
        prompts = len({str(r.get("prompt_id")) for r in rows})
        return (f"{len(rows)} targets" + (f" on {prompts} prompts" if prompts != len(rows) else "")
                + f", {_pct(_mean([r.get('correct') for r in rows]))}% correct" + _greedy_on(d, rows))
    if command in ("dpo", "xpo"):
        # dpo: pairs.jsonl; xpo: xpo_data.jsonl (D_t of every round, each pair with its round)
        pairs = load_jsonl(d / ("pairs.jsonl" if command == "dpo" else "xpo_data.jsonl"))
        scored = [p for p in pairs if p.get("reward_y") is not None and p.get("reward_y2") is not None]
        ties = sum(p["reward_y"] == p["reward_y2"] for p in scored)
        split = [p for p in scored if p["reward_y"] != p["reward_y2"] and p["correct_y"] != p["correct_y2"]]
        right = [(p["reward_y"] > p["reward_y2"]) == p["correct_y"] for p in split]
        return (f"{len(scored)} pairs, {ties} without preference; preferred side correct in "
                f"{_pct(_mean(right))}% of the {len(split)} pairs with one correct side")
    if command == "grpo":
        steps = [r for r in load_jsonl(d / "metrics.jsonl") if r.get("kind") == "train"]
        if not steps:
            return "no step"
        q = max(1, len(steps) // 4)
        first, last = steps[:q], steps[-q:]
        return (f"{len(steps)} steps; group reward {_num(_mean([r.get('reward') for r in first]))} -> "
                f"{_num(_mean([r.get('reward') for r in last]))}, group accuracy "
                f"{_pct(_mean([r.get('sample_accuracy') for r in first]))} -> "
                f"{_pct(_mean([r.get('sample_accuracy') for r in last]))}% (first -> last quarter)")
    return ""


def _greedy_on(d: Path, rows: list[dict]) -> str:
    """The base greedy answer's accuracy on the prompts the targets came from, beside the targets' own (a target
    can lift greedy only where it is right more often than greedy is): read from the pool the run sampled."""
    sampling = d / "sampling.json"
    if not sampling.is_file():
        return ""
    pool = Path(json.loads(sampling.read_text(encoding="utf-8")).get("bon_dir") or "")
    greedy = {str(r.get("prompt_id")): r.get("correct") for r in load_jsonl(pool / "greedy.jsonl")}
    first = {}  # prompt -> its first target (the pick; with --per-prompt the others share its answer)
    for r in rows:
        first.setdefault(str(r.get("prompt_id")), r.get("correct"))
    both = [p for p in first if greedy.get(p) is not None]
    if not both:
        return ""
    return (f"; on those prompts the pick is right on {_pct(_mean([first[p] for p in both]))}%, base greedy on "
            f"{_pct(_mean([greedy[p] for p in both]))}%")


def evaluations(command: str, d: Path) -> tuple[str, float | None]:
    """Validation greedy accuracy at each evaluation (xpo: each round), and the last KL estimate."""
    if command == "xpo":
        rows = sorted(load_jsonl(d / "rounds.jsonl"), key=lambda r: r["round"])
        return (" / ".join(f"r{r['round']} {_pct(r.get('accuracy'))}" for r in rows),
                rows[-1].get("kl") if rows else None)
    metrics = load_jsonl(d / "metrics.jsonl")
    rows = [r for r in metrics if r.get("kind") == "eval"]
    kls = [r.get("kl") for r in metrics if r.get("kl") is not None]
    return " / ".join(f"s{r['step']} {_pct(r.get('accuracy'))}" for r in rows), (kls[-1] if kls else None)


def held_out_shift(d: Path) -> str:
    """Held-out greedy answers: mean log pi (each model's own) and mean log pi_base, base -> trained."""
    def stats(rows: list[dict]) -> tuple[float | None, float | None]:
        g = [r for r in rows if r.get("kind") == "greedy"]
        return _mean([r.get("logprob") for r in g]), _mean([r.get("logprob_base") for r in g])
    (b_own, b_base), (t_own, t_base) = (stats(load_jsonl(d / f)) for f in ("eval_base.jsonl", "eval_sharpened.jsonl"))
    return f"{_num(b_own)} -> {_num(t_own)} | {_num(b_base)} -> {_num(t_base)}"


def main(out: Path) -> str:
    head = ["| run | kept | trained on | validation greedy accuracy % by evaluation | last KL | held-out greedy: "
            "own log pi, base -> trained | their log pi_base, base -> trained |", "|---|---|---|---|---|---|---|"]
    body = []
    for d in sorted(p.parent for p in out.glob("*/summary.json")):
        if not (d / "config.json").is_file():
            continue
        conf = json.loads((d / "config.json").read_text(encoding="utf-8"))
        command = conf.get("command")
        if command not in ("sft", "dpo", "xpo", "grpo"):
            continue
        s = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        t = s.get("training") or {}
        kept = f"round {t['best_round']}" if "best_round" in t else f"step {t.get('best_step')}"
        evals, kl = evaluations(command, d)
        body.append(f"| {d.name} | {kept} | {training_data(command, d)} | {evals} | {_num(kl, '.3f')} | "
                    f"{held_out_shift(d)} |")
    legend = ("Read from each run directory (sft_data.jsonl, pairs.jsonl, metrics.jsonl, rounds.jsonl, "
              "eval_base.jsonl, eval_sharpened.jsonl). Own log pi: the mean log-probability each model gives its own "
              "greedy answers (a sharpened model is surer of them); log pi_base: the base model's log-probability of "
              "those answers.")
    return "\n".join([*head, *body, "", legend]) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python experiments/diagnose.py OUT (a held-out table's run directory)", file=sys.stderr)
        sys.exit(2)
    try:
        sys.stdout.write(main(Path(sys.argv[1])))
    except SharpenError as e:  # a damaged run file: its one-line error, nothing half-written
        print(f"diagnose.py: {e}", file=sys.stderr)
        sys.exit(2)
