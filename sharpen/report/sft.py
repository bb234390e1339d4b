"""SFT-sharpening summary and report: reads an sft run directory's files, writes report.md and training curves.

The paper's Table 1 quantities compare the sharpened model's temperature-1 samples with the base model's greedy
responses: accuracy lift (%) and likelihood lift (difference of mean log pi_base).
"""

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

# Table 1 of the paper: lift of the SFT-sharpened model's temperature-1 samples over base greedy.
PAPER_TABLE1 = [("Phi-3.5-mini", "MATH", 19.24, 48.33), ("Phi-3.5-mini", "GSM8K", 1.82, 1.49),
                ("Phi-3.5-mini", "ProntoQA", 12.46, 5.64), ("Mistral-7B", "MATH", 8.88, 5.71)]


def format_summary(s: Mapping[str, Any]) -> str:
    """Plain-text before/after table and the Table 1 lifts, for the terminal."""
    lines = [format_eval(s["base"], title=f"base model ({s['protocol']}, {s['num_eval_prompts']} prompts)"), "",
             format_eval(s["sharpened"], title=f"sharpened (adapter of step {s['training']['best_step']})")]
    lines += ["", *table1_console(s["table1"])]
    lines += [w.replace("**", "") for w in collapse_warnings(s["sharpened"])]
    return "\n".join(lines + [w.replace("**", "") for w in guard_lines(s)] + label_console(s.get("labels")))


# ---- report ---------------------------------------------------------------------------------------------

def _target_options(t: dict) -> str:
    """The --per-prompt / --min-agreement clause of the training-targets line ('' at their defaults)."""
    out = ""
    if (t.get("per_prompt") or 1) > 1:
        out += (f", with up to {t['per_prompt'] - 1} more distinct samples of the pick's answer "
                f"({t.get('examples')} examples in all)")
    if t.get("min_agreement"):
        out += (f", on the {t.get('prompts_with_target')} of {t.get('prompts_sampled')} prompts whose most common "
                f"answer is given by at least {t['min_agreement']:.0%} of the samples")
    return out


@reads_summary
def write_sft_report(run_dir: Path) -> Path:
    """Write `run_dir`/report.md and training_curves.png from summary.json, config.json and metrics.jsonl."""
    run_dir = Path(run_dir)
    summary, config = read_run(run_dir, "sft run")
    save_png(plot_training(load_jsonl(run_dir / "metrics.jsonl"), summary), run_dir / "training_curves.png")
    out = run_dir / "report.md"
    atomic_write_text(out, render(summary, config))
    return out


def plot_training(metrics: Sequence[dict], summary: Mapping[str, Any]) -> Any:
    """Training loss per step; validation greedy accuracy and mean log pi_base at each evaluation."""
    fig = figure(12.0, 3.6)
    ax_loss, ax_acc, ax_lp = fig.subplots(1, 3)
    train = [r for r in metrics if r.get("kind") == "train" and r.get("loss") is not None]
    evals = [r for r in metrics if r.get("kind") == "eval"]
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set(xlabel="optimizer step", ylabel="loss: mean -log pi(y|x) of the targets", title="training loss")
    best = (summary.get("training") or {}).get("best_step")
    for ax, key, label in ((ax_acc, "accuracy", "validation greedy accuracy (%)"),
                           (ax_lp, "logprob_base", "validation mean log pi_base(greedy)")):
        pts = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, [100 * y for y in ys] if key == "accuracy" else ys, marker="o", ms=3)
        if best is not None:
            ax.axvline(best, color="gray", ls=":", label=f"kept: step {best}")
            ax.legend(fontsize=8)
        ax.set(xlabel="optimizer step", ylabel=label, title=label.split(" (")[0])
    for ax in (ax_loss, ax_acc, ax_lp):
        ax.grid(alpha=0.3)
    return fig


def render(s: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The report text."""
    b, sh, bon = s["base"], s["sharpened"], s["base_bon"]
    rows = [("base greedy", b.get("greedy")), ("base sample (T=1)", b.get("sample")),
            ("sharpened greedy", sh.get("greedy")), ("sharpened sample (T=1)", sh.get("sample"))]
    table = responses_table(rows)
    table.append(f"| base best-of-{s['n']} (`{s['selector']}`, {bon['prompts']} prompts) | "
                 f"{fmt_pct(bon['accuracy'])} |  | "
                 f"{fmt_num(bon['mean_logprob_base'])} | {bon['mean_num_tokens']:.1f} | "
                 f"{fmt_pct(bon['truncated_fraction'])} |  | {s['num_train_prompts']} |")
    t1 = table1_lines(s["table1"])
    paper = ["| model | task | accuracy lift | likelihood lift |", "|---|---|---|---|"]
    paper += [f"| {m} | {t} | +{a:.2f}% | +{lk:.2f} |" for m, t, a, lk in PAPER_TABLE1]
    tr = s["training"]
    best = tr.get("best_eval") or {}
    bon_greedy = bon.get("greedy_accuracy")
    parts = [
        f"# SFT-sharpening: {s['task']} / {s['model']}",
        "",
        protocol_line(s),
        "",
        f"Training targets: for each training prompt, the `{s['selector']}` pick among {s['n']} base samples at "
        "temperature 1" + _target_options(s.get("targets") or {})
        + "; the loss is -log pi(y|x) summed over the response tokens (prompt masked).",
        "",
        "## Before and after",
        "",
        *table,
        "",
        *[w + "\n" for w in collapse_warnings(sh)],
        *[w + "\n" for w in guard_lines(s)],
        *label_lines(s.get("labels")),
        "",
        "log pi_base is always scored under the base model (adapter disabled). The best-of-N row is the accuracy "
        "of the training targets themselves" + (f" (base greedy on those prompts: {fmt_pct(bon_greedy)}%)"
                                                 if bon_greedy is not None else "") + ".",
        "",
        "## The paper's Table 1 quantities",
        "",
        *t1,
        "",
        *pass_at_k_lines(b, sh),
        "",
        "Accuracy lift = 100 × (acc − acc_ref) / acc_ref (n/a when acc_ref = 0); likelihood lift = mean log pi_base "
        "of the sharpened responses − that of the reference responses. The paper's Table 1 values for comparison "
        "(other models, full scale):",
        "",
        *paper,
        "",
        "## Training",
        "",
        f"{tr['steps']} optimizer steps; kept adapter: step {tr.get('best_step')} "
        f"(validation greedy accuracy {fmt_pct(best.get('accuracy'))}%, mean log pi_base "
        f"{fmt_num(best.get('logprob_base'))}), saved in `adapter/` (PEFT format; "
        "`sharpen eval --adapter DIR/adapter` re-evaluates it). Step 0 is the base model itself.",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Configuration",
        "",
        *config_table(config),
        "",
    ]
    return "\n".join(parts)
