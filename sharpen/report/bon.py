"""Best-of-N report: reads a run directory's files and writes report.md with PNG plots.

The report never recomputes selection: the numbers come from summary.json (see `metrics.summarize`);
samples.jsonl is read only for the log-prob histograms. Plots use matplotlib's object API (no pyplot), so
no global backend is switched and it works headless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SharpenError
from ..runs import atomic_write_text, load_jsonl
from ..selection import SELECTORS
from .kit import (
    config_table,
    figure,
    fmt_acc,
    fmt_diff,
    fmt_num,
    fmt_pct,
    label_console,
    label_lines,
    read_run,
    reads_summary,
    save_png,
    tokens_axes,
)

COLORS = {"logprob": "tab:blue", "logprob_mean": "tab:orange", "majority": "tab:green",
          "random": "tab:gray", "oracle": "tab:purple"}


def _color(name: str) -> Any:
    """The paper's selectors keep their colours; the others take distinct ones from tab20 in registry order."""
    if name in COLORS:
        return COLORS[name]
    from matplotlib import colormaps

    others = [k for k in SELECTORS if k not in COLORS]
    return colormaps["tab20"](2 * others.index(name) % 20 + 1) if name in others else None


@reads_summary
def write_report(run_dir: Path) -> Path:
    """Write `run_dir`/report.md and its plots from config.json, summary.json and samples.jsonl; return its path."""
    run_dir = Path(run_dir)
    summary, config = read_run(run_dir, "best-of-N run")
    if summary.get("adaptive"):  # adaptive N: pools of different sizes, one rule, no subsampled selectors
        out = run_dir / "report.md"
        atomic_write_text(out, "\n".join([f"# Best-of-N with adaptive N: {_title(summary)}", "",
                                           "```", format_table(summary), "```", "",
                                           *label_lines(summary.get("labels")), "", *config_table(config), ""]))
        return out
    samples = load_jsonl(run_dir / "samples.jsonl")
    plots = {
        "accuracy_vs_n.png": plot_accuracy_vs_n(summary),
        "logprob_hist.png": plot_logprob_hist(samples, summary),
        "selected_logprob_vs_n.png": plot_selected_logprob(summary),
        **({"accuracy_vs_tokens.png": plot_accuracy_vs_tokens(summary)} if _has_budgets(summary) else {}),
    }
    for name, fig in plots.items():
        save_png(fig, run_dir / name)
    out = run_dir / "report.md"
    atomic_write_text(out, render_markdown(summary, config))
    return out


# ---- plots ----------------------------------------------------------------------------------------------

def _ns(summary: Mapping[str, Any]) -> list[int]:
    return [int(k) for k in summary["ns"]]


def _log2_axis(ax: Any, ns: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(k) for k in ns])
    ax.minorticks_off()
    ax.set_xlabel("N (samples per prompt, subsampled)")
    ax.grid(alpha=0.3)


def plot_accuracy_vs_n(summary: Mapping[str, Any]) -> Any:
    """(a) Coverage and selection in one plot: pass@k for every k (unbiased, band = 95% interval over prompts),
    each selector's accuracy at the subsampled N with its 95% interval, greedy as a line with its band."""
    ns = _ns(summary)
    fig = figure()
    ax = fig.add_subplot()
    pak, pci = summary.get("pass_at_k") or {}, summary.get("pass_at_k_ci") or {}
    ks = sorted((int(k) for k in pak), key=int)
    if ks:
        ax.plot(ks, [100 * pak[str(k)] for k in ks], color="tab:purple", lw=1, label="pass@k (coverage)")
        if all(pci.get(str(k)) for k in ks):
            ax.fill_between(ks, [100 * pci[str(k)][0] for k in ks], [100 * pci[str(k)][1] for k in ks],
                            color="tab:purple", alpha=0.12)
    shown = [name for name in summary["selectors"] if not (name == "oracle" and ks)]  # oracle at N is pass@N
    for i, name in enumerate(shown):
        by_n = summary["selectors"][name]
        xs = [k * 1.04 ** (i - (len(shown) - 1) / 2) for k in ns]  # side by side, so the intervals stay readable
        mean = [100 * by_n[str(k)]["accuracy_mean"] for k in ns]
        cis = [by_n[str(k)].get("accuracy_ci") for k in ns]
        err = ([[m - 100 * c[0] for m, c in zip(mean, cis, strict=True)],
                [100 * c[1] - m for m, c in zip(mean, cis, strict=True)]] if all(cis)
               else [100 * by_n[str(k)]["accuracy_std"] for k in ns])  # older runs: spread over seeds
        ax.errorbar(xs, mean, yerr=err, marker="o", ms=4, capsize=3, label=name, color=_color(name),
                    linestyle="--" if name == "oracle" else "-")
    g = summary.get("greedy")
    if g:
        ax.axhline(100 * g["accuracy"], color="black", linestyle=":", label="greedy")
        if g.get("accuracy_ci"):
            ax.axhspan(100 * g["accuracy_ci"][0], 100 * g["accuracy_ci"][1], color="black", alpha=0.06)
    base = ((summary.get("labels") or {}).get("majority_baseline") or {}).get("accuracy")
    if base is not None:
        ax.axhline(100 * base, color="tab:red", linestyle="-.", lw=1, label="always the majority label")
    _log2_axis(ax, sorted(set(ns) | ({1, ks[-1]} if ks else set())))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{_title(summary)}: accuracy vs N ({summary['num_prompts']} prompts, 95% intervals)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return fig


def _has_budgets(summary: Mapping[str, Any]) -> bool:
    return all("response_tokens_per_prompt" in st for by_n in summary["selectors"].values() for st in by_n.values())


def plot_accuracy_vs_tokens(summary: Mapping[str, Any]) -> Any:
    """(d) Accuracy against the response tokens spent per prompt (sampling N, early-stopped samples counted as
    far as they ran), each selector at every N with its 95% interval; greedy as a point."""
    ns = _ns(summary)
    fig = figure()
    ax = fig.add_subplot()
    for name, by_n in summary["selectors"].items():
        xs = [by_n[str(k)]["response_tokens_per_prompt"] for k in ns]
        mean = [100 * by_n[str(k)]["accuracy_mean"] for k in ns]
        cis = [by_n[str(k)].get("accuracy_ci") for k in ns]
        err = ([[m - 100 * c[0] for m, c in zip(mean, cis, strict=True)],
                [100 * c[1] - m for m, c in zip(mean, cis, strict=True)]] if all(cis) else None)
        ax.errorbar(xs, mean, yerr=err, marker="o", ms=3, capsize=2, label=name, color=_color(name),
                    linestyle="--" if name == "oracle" else "-", alpha=0.85)
    g = summary.get("greedy") or {}
    if g.get("response_tokens_per_prompt") is not None:
        ax.plot([g["response_tokens_per_prompt"]], [100 * g["accuracy"]], "k*", ms=10, label="greedy")
    a = summary.get("adaptive_majority")
    if a and a.get("accuracy_ci"):  # what sampling one at a time and stopping (--adaptive majority) spends
        lo, hi = a["accuracy_ci"]
        ax.errorbar([a["response_tokens_per_prompt"]], [100 * a["accuracy"]],
                    yerr=[[100 * (a["accuracy"] - lo)], [100 * (hi - a["accuracy"])]], fmt="D", color="tab:green",
                    mfc="white", capsize=3, label="majority, adaptive N")
    tokens_axes(ax, "response tokens per prompt")
    ax.set_title(f"{_title(summary)}: accuracy vs tokens"
                 + (" (early stopping on)" if summary.get("early_stop") else ""), fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_logprob_hist(samples: list[dict], summary: Mapping[str, Any]) -> Any:
    """(b) Histograms of sample log-probs, correct vs incorrect: summed and per token."""
    fig = figure(9.6, 3.8)
    axes = fig.subplots(1, 2)
    lp = np.array([math.nan if r.get("logprob") is None else float(r["logprob"]) for r in samples])
    ntok = np.array([max(int(r.get("num_tokens", 1)), 1) for r in samples])
    ok = np.array([bool(r.get("correct")) for r in samples], dtype=bool)
    finite = np.isfinite(lp)
    lvc = summary.get("likelihood_vs_correctness", {})
    panels = [(lp, "log pi(y|x) (summed, Eq. 2)", lvc.get("auroc")),
              (lp / ntok, "log pi(y|x) / tokens", lvc.get("auroc_per_token"))]
    for ax, (x, label, auc) in zip(axes, panels, strict=True):
        x = x[finite]
        y = ok[finite]
        if x.size == 0:
            ax.text(0.5, 0.5, "no samples with a finite log-prob", ha="center", transform=ax.transAxes)
            continue
        bins = np.linspace(x.min(), x.max(), 41) if x.max() > x.min() else 10
        for mask, name, color in ((~y, "incorrect", "tab:red"), (y, "correct", "tab:green")):
            if mask.any():
                ax.hist(x[mask], bins=bins, density=True, alpha=0.5, color=color,
                        label=f"{name} ({int(mask.sum())})")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.set_title(f"AUROC {fmt_num(auc, '.3f')} (correct should sit right)", fontsize=10)
        ax.legend(fontsize=8)
    return fig


def plot_selected_logprob(summary: Mapping[str, Any]) -> Any:
    """(c) Mean self-reward of the selected responses vs N: does BoN find more likely responses?"""
    ns = _ns(summary)
    fig = figure()
    ax = fig.add_subplot()
    for name, by_n in summary["selectors"].items():
        pts = [(k, by_n[str(k)]["mean_logprob"]) for k in ns if by_n[str(k)]["mean_logprob"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=4, label=name, color=_color(name),
                    linestyle="--" if name == "oracle" else "-")
    g = summary.get("greedy") or {}
    if g.get("mean_logprob") is not None:
        ax.axhline(g["mean_logprob"], color="black", linestyle=":", label="greedy")
    _log2_axis(ax, ns)
    ax.set_ylabel("mean log pi(y|x) of the selected response")
    ax.set_title(f"{_title(summary)}: self-reward of the selected response", fontsize=10)
    ax.legend(fontsize=8)
    return fig


# ---- markdown -------------------------------------------------------------------------------------------

def _title(summary: Mapping[str, Any]) -> str:
    return " / ".join(str(summary[k]) for k in ("task", "model", "sample_dtype") if summary.get(k)) or "best-of-N"


def _noise(p: float, q: float, m: int) -> float:
    """Rough 95% half-width of a difference of two accuracies over m prompts (unpaired, so conservative)."""
    return 2 * math.sqrt((p * (1 - p) + q * (1 - q)) / max(m, 1))


def _compare(a: float, b: float, m: int) -> str:
    d, tol = a - b, _noise(a, b, m)
    if abs(d) <= tol:
        return f"within noise ({100 * d:+.1f} points, ±{100 * tol:.1f} at {m} prompts)"
    return f"{'better' if d > 0 else 'worse'} by {100 * abs(d):.1f} points (noise ±{100 * tol:.1f})"


def reading(summary: Mapping[str, Any]) -> list[str]:
    """Plain-language findings from the summary: did BoN beat greedy and random, and why (or why not)."""
    ns, m = _ns(summary), int(summary["num_prompts"])
    n = ns[-1]
    sel = {name: by_n[str(n)] for name, by_n in summary["selectors"].items()}
    lp, rnd = sel["logprob"]["accuracy_mean"], sel["random"]["accuracy_mean"]
    g = summary.get("greedy")
    out = []
    vg = sel["logprob"].get("vs_greedy")
    if g and vg and vg.get("diff") is not None:
        verdict = ("the 95% paired interval excludes zero" if vg["excludes_zero"] else
                   "within noise: the 95% paired interval contains zero")
        out.append(f"**Best-of-{n} with the log-prob self-reward vs greedy:** {fmt_pct(lp)}% vs "
                   f"{fmt_pct(g['accuracy'])}%, difference {fmt_diff(vg)} points ({verdict}).")
    elif g:
        out.append(f"**Best-of-{n} with the log-prob self-reward vs greedy:** {fmt_pct(lp)}% vs "
                   f"{fmt_pct(g['accuracy'])}%, "
                   f"{_compare(lp, g['accuracy'], m)}.")
    else:
        out.append("No greedy baseline was stored, so lifts over greedy are not available.")
    out.append(f"**vs naive sampling (random, pass@1):** {fmt_pct(lp)}% vs {fmt_pct(rnd)}%, {_compare(lp, rnd, m)}.")
    practical = {k: v["accuracy_mean"] for k, v in sel.items() if k != "oracle"}
    best = max(practical, key=practical.get)
    out.append(f"**Best selector without ground truth at N={n}:** `{best}` ({fmt_pct(practical[best])}%).")
    if "oracle" in sel and sel["oracle"]["accuracy_mean"] > 0:
        o = sel["oracle"]["accuracy_mean"]
        out.append(f"**Headroom:** a correct answer is among the {n} samples for {fmt_pct(o)}% of prompts (oracle); "
                   f"log-prob selection recovers {100 * lp / o:.0f}% of that.")
    lvc = summary.get("likelihood_vs_correctness") or {}
    auc = lvc.get("auroc_within_prompt")
    if auc is not None:
        if auc > 0.55:
            why = ("correct responses tend to be more likely than incorrect ones to the same prompt, "
                   "which is what BoN exploits")
        elif auc < 0.45:
            why = "likelihood points *away* from correctness here, so log-prob selection should hurt"
        else:
            why = "log-prob carries little signal about correctness, so BoN can do little better than random"
        out.append(f"**Why:** within-prompt AUROC of log-prob as a correctness detector is {auc:.3f} "
                   f"(over {lvc.get('num_prompts_mixed')} prompts with both correct and incorrect samples): {why}. "
                   f"Mean log-prob of correct / incorrect samples: {fmt_num(lvc.get('mean_logprob_correct'), '.2f')} / "
                   f"{fmt_num(lvc.get('mean_logprob_incorrect'), '.2f')}.")
    tok_lp, tok_rnd = sel["logprob"]["mean_num_tokens"], sel["random"]["mean_num_tokens"]
    if tok_rnd > 0 and tok_lp < 0.7 * tok_rnd:
        out.append(f"**Length:** the log-prob pick is much shorter than a typical sample ({tok_lp:.0f} vs "
                   f"{tok_rnd:.0f} tokens): short, likely answers may skip the reasoning (a failure mode the paper "
                   "notes); compare `logprob_mean`.")
    if len(ns) >= 2:
        prev = ns[-2]
        d = lp - summary["selectors"]["logprob"][str(prev)]["accuracy_mean"]
        out.append(f"**Saturation:** log-prob accuracy changes by {100 * d:+.1f} points from N={prev} to N={n}.")
    sel_lp = sel["logprob"]["mean_logprob"]
    if g and g.get("mean_logprob") is not None and sel_lp is not None:
        rel = "higher" if sel_lp > g["mean_logprob"] else "lower"
        out.append(f"**Sharpening:** the selected responses have mean log-prob {sel_lp:.2f}, {rel} than greedy's "
                   f"{g['mean_logprob']:.2f}.")
    if summary.get("truncated_fraction", 0) > 0.05:
        out.append(f"**Warning:** {fmt_pct(summary['truncated_fraction'])}% of samples hit the token limit; "
                   "raise max_new_tokens, truncated responses rarely contain an answer.")
    if summary.get("invalid_logprobs"):
        out.append(f"**Warning:** {summary['invalid_logprobs']} sample(s) have a NaN/+inf log-prob (a numerically "
                   "broken model or dtype); they were never selected as best.")
    labels = summary.get("labels")
    if labels:
        base = labels["majority_baseline"]
        losers = [k for k, st in labels.get("policies", {}).items() if not st["beats_majority_baseline"]]
        out.append(f"**Label baseline:** always answering `{base['label']}` scores {fmt_pct(base['accuracy'])}%"
                   + (f"; not beaten by: {', '.join(f'`{k}`' for k in losers)}" if losers else
                      "; every policy beats it") + " (balanced accuracy in the table below).")
    if summary.get("num_prompts_incomplete"):
        out.append(f"**Note:** {summary['num_prompts_incomplete']} prompts lack some of the {summary['n']} samples "
                   "and are left out (an unfinished run).")
    return out


def _selector_table(summary: Mapping[str, Any], n: int) -> list[str]:
    lines = ["| selector | accuracy % [95% CI] | vs greedy, points [95% CI] | lift vs greedy | answer rate % | "
             "mean log-prob | mean tokens | picks |", "|---|---|---|---|---|---|---|---|"]
    g = summary.get("greedy")
    if g:
        lines.append(f"| greedy | {fmt_acc(g['accuracy'], g.get('accuracy_ci'))} | | | "
                     f"{fmt_pct(g.get('answer_rate'))} | {fmt_num(g['mean_logprob'], '.2f')} | "
                     f"{g['mean_num_tokens']:.1f} | greedy decoding (the baseline) |")
    for name, by_n in summary["selectors"].items():
        st = by_n[str(n)]
        lift = "n/a" if st["lift_pct_mean"] is None else f"{st['lift_pct_mean']:+.1f}%"
        about = SELECTORS[name].about if name in SELECTORS else ""
        lines.append(f"| {name} | {fmt_acc(st['accuracy_mean'], st.get('accuracy_ci'))} | "
                     f"{fmt_diff(st.get('vs_greedy'))} | {lift} | {fmt_pct(st.get('answer_rate'))} | "
                     f"{fmt_num(st['mean_logprob'], '.2f')} | {st['mean_num_tokens']:.1f} | {about} |")
    return lines


def _auroc_lines(summary: Mapping[str, Any]) -> list[str]:
    aur = summary.get("self_reward_auroc") or {}
    if not aur:
        return []
    out = ["| self-reward | AUROC pooled | AUROC within prompt | prompts with both outcomes |", "|---|---|---|---|"]
    out += [f"| {name} | {fmt_num(a['pooled'], '.3f')} | {fmt_num(a['within_prompt'], '.3f')} | "
            f"{a['num_prompts']} |" for name, a in aur.items()]
    return out + ["", "Within prompt: the AUROC over pairs of samples of the same prompt (weighted by their "
                  "number), the comparison selection makes; 0.5 = no signal."]


def _by_n_table(summary: Mapping[str, Any]) -> list[str]:
    ns = _ns(summary)
    lines = ["| accuracy % | " + " | ".join(f"N={k}" for k in ns) + " |", "|---" * (len(ns) + 1) + "|"]
    for name, by_n in summary["selectors"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_pct(by_n[str(k)]["accuracy_mean"]) for k in ns) + " |")
    pak, pci = summary.get("pass_at_k", {}), summary.get("pass_at_k_ci", {})
    lines.append("| pass@k (unbiased, from all n) | "
                 + " | ".join(fmt_acc(pak.get(str(k)), pci.get(str(k))) for k in ns) + " |")
    return lines


def power_lines(pw: Mapping[str, Any] | None) -> list[str]:
    """What a power-sampling run's draws are and what they cost (nothing for a plain bon run)."""
    if not pw:
        return []
    how = (f"block-wise Metropolis-Hastings, {pw['mh_steps']} suffix-resampling moves per chain after every "
           f"{pw['block']}-token block; acceptance rate {fmt_num(pw.get('acceptance_rate'))}"
           if pw["method"] == "mh" else
           f"sequential Monte Carlo over {pw['block']}-token blocks, resampled when the effective sample size fell "
           f"below {pw['threshold']:g} x N ({fmt_num(pw.get('resamples_per_prompt'))} times per prompt; mean "
           f"minimum ESS {fmt_num(pw.get('min_ess'), '.1f')})")
    beta = pw.get("beta_equivalent")
    return [f"**Power sampling.** The samples are draws from pi^{pw['alpha']:g}, the RLHF-sharpening optimum of "
            f"beta = {fmt_num(beta, '.3g')} (pi_base^(1 + 1/beta)), obtained without training by {how}, with "
            f"proposals at temperature {pw['proposal_temperature']:.3g}. Sampling them spent "
            f"{fmt_num(pw.get('tokens_spent_per_prompt'), '.0f')} response tokens per prompt, rejected proposals "
            "included; the selectors below run over the final draws, and their token columns count only those.", ""]


def render_markdown(summary: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The report text; plots are referenced by file name, next to report.md."""
    ns = _ns(summary)
    n = ns[-1]
    lvc = summary.get("likelihood_vs_correctness") or {}
    parts = [
        f"# Best-of-N with self-reward: {_title(summary)}",
        "",
        *power_lines(summary.get("power")),
        "## Reading this report",
        "",
        *[f"- {line}" for line in reading(summary)],
        "",
        f"## Selectors at N = {n}",
        "",
        *_selector_table(summary, n),
        "",
        "Lift = 100 × (accuracy − greedy) / greedy, as in the paper's Fig. 1. Intervals are 95% bootstraps over "
        f"the {summary['num_prompts']} prompts (a prompt's accuracy is the share of the {summary['seeds']} "
        "subsampling seeds whose pick is correct); 'vs greedy' is the paired difference on the same prompts, "
        "starred when its interval excludes zero.",
        "",
        *[line + "." for line in _adaptive_lines(summary)],
        "",
        *label_lines(summary.get("labels")),
        "",
        "## Accuracy vs N",
        "",
        "![accuracy vs N](accuracy_vs_n.png)",
        "",
        *_by_n_table(summary),
        "",
        "## Likelihood vs correctness",
        "",
        "![log-prob histograms](logprob_hist.png)",
        "",
        f"AUROC of log-prob as a detector of correct samples: pooled {fmt_num(lvc.get('auroc'), '.3f')}, "
        f"per token {fmt_num(lvc.get('auroc_per_token'), '.3f')}, within prompt "
        f"{fmt_num(lvc.get('auroc_within_prompt'), '.3f')} (0.5 = no signal; selection happens within a prompt, "
        "so that is the number that predicts BoN's gain).",
        "",
        *_auroc_lines(summary),
        "",
        *(["## Accuracy vs tokens", "", "![accuracy vs tokens](accuracy_vs_tokens.png)", ""]
          if _has_budgets(summary) else []),
        "## Self-reward of the selected response",
        "",
        "![selected log-prob vs N](selected_logprob_vs_n.png)",
        "",
        "## What was run",
        "",
        f"Prompts counted: {summary['num_prompts']} "
        f"(incomplete, left out: {summary.get('num_prompts_incomplete', 0)}); "
        f"samples per prompt n = {summary['n']}; seeds = {summary['seeds']}; "
        f"sample accuracy {fmt_pct(summary.get('sample_accuracy'))}%; "
        f"truncated at the token limit {fmt_pct(summary.get('truncated_fraction'))}%; "
        f"invalid (NaN/+inf) log-probs: {summary.get('invalid_logprobs', 0)}.",
        "",
        *config_table(config),
        "",
    ]
    return "\n".join(parts)


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.1f}%" if signed else f"{100 * x:.1f}"


def format_table(summary: Mapping[str, Any], n: int | None = None) -> str:
    """Plain-text table of the selectors at N (default the largest): accuracy with its 95% interval (%), the
    paired difference with greedy, lift over greedy; then the majority-label baseline where labels are closed."""
    a = summary.get("adaptive")
    if a:
        g = summary.get("greedy") or {}
        return "\n".join([
            f"adaptive N ({a['rule']}), at most {summary['n']} samples   prompts = {summary['num_prompts']}",
            f"greedy            {fmt_acc(g.get('accuracy'), g.get('accuracy_ci'))}",
            f"adaptive {a['rule']:<9}{fmt_acc(a['accuracy'], a.get('accuracy_ci'))}   vs greedy "
            f"{fmt_diff(a.get('vs_greedy'))} points   {a['samples_per_prompt']:.1f} samples and "
            f"{a['response_tokens_per_prompt']:.0f} response tokens per prompt",
            *label_console(summary.get("labels"))])
    ns = [int(k) for k in summary["ns"]]
    n = ns[-1] if n is None else int(n)
    if n not in ns:
        raise SharpenError(f"N={n} was not evaluated: choose one of {ns}")
    w = max(14, *(len(k) + 2 for k in summary["selectors"]))
    head = (f"{'selector':<{w}}{'accuracy % [95% CI]':>22}{'vs greedy, points':>26}{'lift':>9}{'mean logprob':>14}"
            f"{'tokens':>9}")
    lines = [f"N = {n}   prompts = {summary['num_prompts']}   seeds = {summary['seeds']}", head,
             "-" * len(head)]

    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    g = summary.get("greedy")
    if g:
        lines.append(f"{'greedy':<{w}}{fmt_acc(g['accuracy'], g.get('accuracy_ci')):>22}{'':>26}{'':>9}"
                     f"{num(g['mean_logprob'], '.2f'):>14}{g['mean_num_tokens']:>9.1f}")
    for name, by_n in summary["selectors"].items():
        st = by_n[str(n)]
        lift = "n/a" if st["lift_pct_mean"] is None else f"{st['lift_pct_mean']:+.1f}%"
        lines.append(f"{name:<{w}}{fmt_acc(st['accuracy_mean'], st.get('accuracy_ci')):>22}"
                     f"{fmt_diff(st.get('vs_greedy')):>26}{lift:>9}{num(st['mean_logprob'], '.2f'):>14}"
                     f"{st['mean_num_tokens']:>9.1f}")
    return "\n".join(lines + _adaptive_lines(summary) + label_console(summary.get("labels")))


def _adaptive_lines(summary: Mapping[str, Any]) -> list[str]:
    a = summary.get("adaptive_majority")
    if not a:
        return []
    return [f"majority with adaptive N (stop once the leading answer cannot be overtaken): "
            f"{fmt_acc(a['accuracy'], a.get('accuracy_ci'))}% with {a['samples_per_prompt']:.1f} of {summary['n']} "
            f"samples per prompt, {100 * a['token_share']:.0f}% of the response tokens"]
