"""RLHF-sharpening summary and report (`sharpen dpo` / `sharpen xpo`): reads a run directory's files, writes
report.md and training_curves.png, in the style of the SFT report (report/sft.py) and with its Table 1 quantities.
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

TITLES = {"dpo": "reward-based DPO (offline, Eq. 4/8)", "xpo": "reward-based XPO (online, Algorithm 1)"}


def _kept(s: Mapping[str, Any]) -> str:
    tr = s["training"]
    return f"round {tr['best_round']}" if s["algorithm"] == "xpo" else f"step {tr['best_step']}"


def format_summary(s: Mapping[str, Any]) -> str:
    """Plain-text before/after table, J_beta and the Table 1 lift, for the terminal."""
    j = s["j_beta"]
    lines = [format_eval(s["base"], title=f"base model ({s['protocol']}, {s['num_eval_prompts']} prompts)"), "",
             format_eval(s["sharpened"], title=f"sharpened ({s['algorithm']}, adapter of {_kept(s)})"), "",
             f"held-out J_beta (beta={s['beta']}): base {fmt_num(j['base'], '.3f')} -> sharpened "
             f"{fmt_num(j['sharpened'], '.3f')} (KL to pi_base {fmt_num(j['kl_sharpened'], '.3f')})"]
    lines += table1_console(s["table1"])
    lines += [w.replace("**", "") for w in collapse_warnings(s["sharpened"])]
    return "\n".join(lines + [w.replace("**", "") for w in guard_lines(s)] + label_console(s.get("labels")))


# ---- report ---------------------------------------------------------------------------------------------

@reads_summary
def write_rlhf_report(run_dir: Path) -> Path:
    """Write `run_dir`/report.md and training_curves.png from summary.json, config.json and the metrics logs."""
    run_dir = Path(run_dir)
    summary, config = read_run(run_dir, "run")
    save_png(plot_training(train_rows(run_dir, summary), summary), run_dir / "training_curves.png")
    out = run_dir / "report.md"
    atomic_write_text(out, render(summary, config))
    return out


def train_rows(run_dir: Path, summary: Mapping[str, Any]) -> list[dict]:
    """Training rows with a global step and round; xpo's rounds are laid end to end."""
    if summary["algorithm"] != "xpo":
        return [{**r, "round": 0} for r in load_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    rows, offset = [], 0
    for t in range(1, (summary.get("rounds") or 0) + 1):
        rs = [r for r in load_jsonl(run_dir / f"round_{t}" / "metrics.jsonl") if r.get("kind") == "train"]
        rows += [{**r, "step": r["step"] + offset, "round": t} for r in rs]
        offset += max((r["step"] for r in rs), default=0)
    return rows


def plot_training(rows: Sequence[dict], summary: Mapping[str, Any]) -> Any:
    """Loss per step; validation J_beta, accuracy and KL at every evaluation (dpo: step; xpo: round)."""
    from matplotlib.ticker import MaxNLocator


    xpo = summary["algorithm"] == "xpo"
    fig = figure(16.0, 3.6)
    ax_loss, ax_j, ax_acc, ax_kl = fig.subplots(1, 4)
    losses = [r for r in rows if r.get("loss") is not None]
    if losses:
        ax_loss.plot([r["step"] for r in losses], [r["loss"] for r in losses], lw=1)
    starts: dict[int, float] = {}
    for r in rows:
        starts.setdefault(r["round"], r["step"] - 0.5)
    for t, x in starts.items():
        if xpo and t > 1:
            ax_loss.axvline(x, color="gray", ls=":", lw=0.8)  # round t starts
    ax_loss.set(xlabel="optimizer step" + (" (rounds end to end)" if xpo else ""), ylabel="loss",
                title=f"training loss ({summary['loss']})")
    xkey = "round" if xpo else "step"
    hist = summary["history"]
    kept = summary["training"]["best_round" if xpo else "best_step"]

    def curve(ax: Any, key: str, label: str, scale: float = 1.0) -> None:
        pts = [(h[xkey], scale * h[key]) for h in hist if h.get(key) is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", ms=3, label=label)

    curve(ax_j, "j_beta", "J_beta")
    curve(ax_acc, "accuracy", "greedy", 100)
    curve(ax_acc, "sample_accuracy", "temperature 1", 100)
    curve(ax_kl, "kl", "KL(pi || pi_base)")
    for ax, ylabel, title in ((ax_j, f"validation J_beta (beta={summary['beta']})", "J_beta estimate"),
                              (ax_acc, "validation accuracy (%)", "accuracy"),
                              (ax_kl, "KL estimate (nats)", "KL(pi || pi_base)")):
        if kept is not None:
            ax.axvline(kept, color="gray", ls=":", label=f"kept: {xkey} {kept}")
        ax.legend(fontsize=8)
        ax.set(xlabel=xkey, ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_loss, ax_j, ax_acc, ax_kl):
        ax.grid(alpha=0.3)
    return fig


def _objective(s: Mapping[str, Any]) -> str:
    beta = s["beta"]
    common = (f"Objective: J_beta(pi) = E_pi[log pi_base] − β·KL(pi ‖ pi_base) with β = {beta}, whose optimum is "
              f"pi_base^(1+1/β)/Z = pi_base^{1 + 1 / beta:.3g}/Z (the self-reward r_self = log pi_base, Eq. 2). "
              "pi_base is the same model with its LoRA adapter switched off; each pair's base log-probs were "
              "computed once and stored with it. ")
    if s["algorithm"] == "xpo":
        return common + (f"XPO (Algorithm 1): {s['rounds']} rounds; each draws y ~ pi_t and y' ~ pi_base for every "
                         "training prompt, adds the pairs to D_t and retrains from pi_t on the square loss of Eq. 8 "
                         f"plus the optimism term α·log pi(y'|x), α = {s['alpha']}. The kept iterate has the largest "
                         "validation J_beta estimate (round 0 is pi_base).")
    if s["loss"] == "logistic":
        return common + ("Loss: standard (logistic) DPO on pairs of base samples, chosen = the response with the "
                         "larger log pi_base; it uses only the ranking, so its optimum is not pi_base^(1+1/β).")
    return common + ("Loss: reward-based DPO, the square loss of Eq. 4/8 on disjoint pairs of base samples (y, y'). "
                     "The kept adapter has the largest validation J_beta estimate (step 0 is pi_base).")


def render(s: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The report text."""
    b, sh, j = s["base"], s["sharpened"], s["j_beta"]
    table = responses_table((("base greedy", b.get("greedy")), ("base sample (T=1)", b.get("sample")),
                             ("sharpened greedy", sh.get("greedy")), ("sharpened sample (T=1)", sh.get("sample"))))
    t1 = table1_lines(s["table1"])
    xkey = "round" if s["algorithm"] == "xpo" else "step"
    hist = [f"| {xkey} | J_beta | KL | greedy accuracy % | sample accuracy % | sample mean log pi_base |",
            "|---|---|---|---|---|---|"]
    hist += [f"| {h[xkey]} | {fmt_num(h.get('j_beta'), '.3f')} | {fmt_num(h.get('kl'), '.3f')} | "
             f"{fmt_pct(h.get('accuracy'))} | {fmt_pct(h.get('sample_accuracy'))} | {fmt_num(h.get('logprob_base'))} |"
             for h in s["history"]]
    pairs = ["| round | pairs | y accuracy % | y' accuracy % | y log pi_base | y' log pi_base | y truncated % |",
             "|---|---|---|---|---|---|---|"]
    pairs += [f"| {p['round']} | {p['pairs']} | {fmt_pct(p['y_accuracy'])} | {fmt_pct(p['y2_accuracy'])} | "
              f"{fmt_num(p['y_logprob_base'])} | {fmt_num(p['y2_logprob_base'])} | {fmt_pct(p['y_truncated'])} |"
              for p in s["pairs"]]
    tr = s["training"]
    parts = [
        f"# RLHF-sharpening, {TITLES[s['algorithm']]}: {s['task']} / {s['model']}", "",
        protocol_line(s), "", _objective(s), "",
        "## Before and after", "", *table, "", *[w + "\n" for w in collapse_warnings(sh)],
        *[w + "\n" for w in guard_lines(s)],
        *label_lines(s.get("labels")), "",
        f"Held-out J_beta estimate (temperature-1 samples of each model): base {fmt_num(j['base'], '.3f')}, "
        f"sharpened {fmt_num(j['sharpened'], '.3f')} (estimated KL to pi_base {fmt_num(j['kl_sharpened'], '.3f')}). "
        "log pi_base is always scored under the base model (adapter disabled).", "",
        "## The paper's Table 1 quantities", "", *t1, "", *pass_at_k_lines(b, sh), "",
        "Accuracy lift = 100 × (acc − acc_ref) / acc_ref (n/a when acc_ref = 0); likelihood lift = difference of "
        "mean log pi_base. The paper ran no RLHF-sharpening experiment: there are no published numbers to compare.",
        "",
        f"## Validation evaluations (per {xkey}: they choose the kept adapter)", "", *hist, "",
        f"Kept adapter: {_kept(s)} ({tr['steps']} optimizer steps were taken in all), saved in `adapter/` "
        "(PEFT format; `sharpen eval --adapter DIR/adapter` re-evaluates it).", "",
        "## Training pairs", "",
        f"{s['num_pairs']} usable pairs from {s['num_train_prompts']} training prompts (y' ~ pi_base; "
        + ("y ~ pi_t of the round)." if s["algorithm"] == "xpo" else "y ~ pi_base)."), "",
        *pairs, "",
        "![training curves](training_curves.png)", "",
        "## Configuration", "", *config_table(config), "",
    ]
    return "\n".join(parts)
