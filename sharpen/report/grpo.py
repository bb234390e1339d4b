"""GRPO summary and report: reads a grpo run directory's files, writes report.md and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runs import atomic_write_text, load_jsonl
from .kit import (
    collapse_warnings,
    config_table,
    figure,
    fmt_num,
    fmt_pct,
    format_eval,
    guard_lines,
    label_console,
    label_lines,
    pass_at_k_lines,
    protocol_line,
    read_run,
    reads_summary,
    responses_table,
    save_png,
    table1_console,
    table1_lines,
)

REWARD_NOTES = {
    "vote": "log of the response's answer's share of the votes in its group (TTRL's majority reward, graded)",
    "self_certainty": "the policy's self-certainty, mean KL(uniform || p) per token (Intuitor)",
    "logprob": "log pi_base(y|x), the paper's self-reward (Eq. 2)",
    "logprob_mean": "log pi_base(y|x) per token",
    "gold": "1 if the answer is correct, else 0: **uses the labels** (an upper-bound control, not label-free)",
    "random": "a fair coin, whatever the response says: the spurious-reward control",
}


def format_summary(s: Mapping[str, Any]) -> str:
    """Plain-text before/after table, the lifts, rollouts and guards, for the terminal."""
    r = s["rollouts"]
    lines = [format_eval(s["base"], title=f"base model ({s['protocol']}, {s['num_eval_prompts']} prompts)"), "",
             format_eval(s["sharpened"], title=f"grpo, reward {s['reward']} (adapter of step "
                                               f"{s['training']['best_step']})"), "", *table1_console(s["table1"]),
             f"rollouts: mean reward {fmt_num(r['first']['reward'])} -> {fmt_num(r['last']['reward'])}, accuracy "
             f"{fmt_pct(r['first']['sample_accuracy'])}% -> {fmt_pct(r['last']['sample_accuracy'])}% (first and last "
             f"{r['window']} of {r['steps']} steps)"]
    lines += [w.replace("**", "") for w in collapse_warnings(s["sharpened"]) + guard_lines(s)]
    return "\n".join(lines + label_console(s.get("labels")))


@reads_summary
def write_grpo_report(run_dir: Path) -> Path:
    """Write `run_dir`/report.md and training_curves.png from summary.json, config.json and metrics.jsonl."""
    run_dir = Path(run_dir)
    summary, config = read_run(run_dir, "grpo run")
    save_png(plot_training(load_jsonl(run_dir / "metrics.jsonl"), summary), run_dir / "training_curves.png")
    out = run_dir / "report.md"
    atomic_write_text(out, render(summary, config))
    return out


def plot_training(metrics: Sequence[dict], summary: Mapping[str, Any]) -> Any:
    """Per step: mean reward, rollout accuracy and answer rate, KL to pi_base; per evaluation: validation greedy
    accuracy, with the kept step marked."""
    fig = figure(14.0, 3.4)
    axes = fig.subplots(1, 4)
    train = [r for r in metrics if r.get("kind") == "train"]
    evals = [r for r in metrics if r.get("kind") == "eval" and r.get("accuracy") is not None]
    steps = [r["step"] for r in train]
    panels = [(axes[0], [("reward", "mean reward")], "reward of the rollouts"),
              (axes[1], [("sample_accuracy", "accuracy (uses labels)"), ("answer_rate", "answer rate")],
               "rollouts (%)"),
              (axes[2], [("kl", "KL(pi || pi_base) per token")], "KL to the base")]
    for ax, series, title in panels:
        for key, label in series:
            ys = [r.get(key) for r in train]
            if any(y is not None for y in ys):
                scale = 100 if title.endswith("(%)") else 1
                ax.plot(steps, [None if y is None else scale * y for y in ys], lw=1, label=label)
        ax.set(xlabel="optimizer step", title=title)
        ax.legend(fontsize=7)
    if evals:
        axes[3].plot([r["step"] for r in evals], [100 * r["accuracy"] for r in evals], marker="o", ms=3)
    best = (summary.get("training") or {}).get("best_step")
    if best is not None:
        axes[3].axvline(best, color="gray", ls=":", label=f"kept: step {best}")
        axes[3].legend(fontsize=7)
    axes[3].set(xlabel="optimizer step", title="validation greedy accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def render(s: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The report text."""
    b, sh, r, tr = s["base"], s["sharpened"], s["rollouts"], s["training"]
    best = tr.get("best_eval") or {}
    rollout = ["| rollouts | mean reward | accuracy % | answer rate % | ended with an answer % | tokens | "
               "KL per token | mean log pi_base |", "|---|---|---|---|---|---|---|---|"]
    for name in ("first", "last"):
        v = r[name]
        rollout.append(f"| {name} {r['window']} steps | {fmt_num(v['reward'])} | {fmt_pct(v['sample_accuracy'])} | "
                       f"{fmt_pct(v['answer_rate'])} | {fmt_pct(v['valid_rate'])} | {fmt_num(v['num_tokens'], '.1f')}"
                       f" | {fmt_num(v['kl'], '.4f')} | {fmt_num(v['logprob_base'])} |")
    parts = [
        f"# GRPO: {s['task']} / {s['model']}",
        "",
        protocol_line(s),
        "",
        f"Reward `{s['reward']}`: {REWARD_NOTES.get(s['reward'], s['reward'])}. Each step samples {s['group']} "
        f"responses per prompt from the current policy; advantages `{s['advantage']}`; clipped objective "
        f"(eps {s['clip_eps']:g}) with a per-token KL penalty to pi_base (weight {s['kl_coef']:g}); "
        f"{s.get('iterations', 1)} optimizer update(s) per sampled batch.",
        "",
        "## Before and after",
        "",
        *responses_table([("base greedy", b.get("greedy")), ("base sample (T=1)", b.get("sample")),
                          ("grpo greedy", sh.get("greedy")), ("grpo sample (T=1)", sh.get("sample"))]),
        "",
        *[w + "\n" for w in collapse_warnings(sh)],
        *[w + "\n" for w in guard_lines(s)],
        *label_lines(s.get("labels")),
        "",
        *table1_lines(s["table1"]),
        "",
        *pass_at_k_lines(b, sh),
        "",
        "## Training",
        "",
        *rollout,
        "",
        "Rollout accuracy is read from the labels for monitoring only; the reward"
        + (" uses them (control run)." if s["reward"] == "gold" else " never does."),
        "",
        f"{tr['steps']} optimizer steps; kept adapter: step {tr.get('best_step')} (validation greedy accuracy "
        f"{fmt_pct(best.get('accuracy'))}%, mean log pi_base {fmt_num(best.get('logprob_base'))}), saved in "
        "`adapter/` (PEFT format). Step 0 is the base model itself. Every sampled response, with its reward and "
        "advantage, is in `rollouts.jsonl`.",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Configuration",
        "",
        *config_table(config),
        "",
    ]
    return "\n".join(parts)
