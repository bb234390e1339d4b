"""The report kit: number formats, figures, and the tables every report shares. Reads nothing itself.

matplotlib is imported where a figure is made (object API, no pyplot): no global backend is switched, and
the kit imports without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import SharpenError
from ..runs import atomic_write, read_json, symlink_in
from ..schema import fix as schema_fix


def read_run(run_dir: Path, what: str) -> tuple[dict, dict]:
    """A finished run's summary.json and config.json (empty when absent), checked (`sharpen.schema`); a run
    directory that holds a symbolic link is refused (the report writes into it)."""
    if not (run_dir / "summary.json").exists():
        raise SharpenError(f"{run_dir} has no summary.json: finish the {what} first (re-run its command)")
    link = symlink_in(run_dir)
    if link is not None:
        raise SharpenError(f"{link} is a symbolic link: sharpen never reads or writes through a link in a run "
                           "directory; remove the link")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    return read_json(run_dir / "summary.json"), config


# What reading a damaged summary raises once its top level passed its schema: a field missing or of another type
# further down.
DAMAGE = (LookupError, TypeError, ValueError, AttributeError, ArithmeticError)
W = TypeVar("W", bound=Callable[..., Any])


def reads_summary(fn: W) -> W:
    """Decorate a function whose first argument is a run directory and that reads its summary.json: a field
    missing or mistyped deep inside it becomes one line naming the file and the fix. (Rows, config.json and the
    summary's top level are checked where they are read, `sharpen.schema`.)"""
    @functools.wraps(fn)
    def inner(run_dir: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(run_dir, *args, **kwargs)
        except DAMAGE as e:
            path = Path(run_dir) / "summary.json"
            raise SharpenError(f"{path} is not as sharpen writes it ({type(e).__name__}: {str(e)[:80]}): "
                               f"{schema_fix(path)}") from e
    return inner  # type: ignore[return-value]


def fmt_num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def fmt_ci(ci: Sequence[float] | None) -> str:
    """A 95% interval of a fraction, in percent: '[41.2, 58.3]' ('' when there is none)."""
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def fmt_acc(x: float | None, ci: Sequence[float] | None) -> str:
    """Accuracy in percent with its interval: '50.0 [41.2, 58.3]'."""
    return f"{fmt_pct(x)} {fmt_ci(ci)}".strip()


def fmt_diff(d: Mapping[str, Any] | None) -> str:
    """A paired difference in points with its interval, starred when the interval excludes zero."""
    if not d or d.get("diff") is None:
        return "n/a"
    lo, hi = d["diff_ci"]
    return f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{' *' if d['excludes_zero'] else ''}"


def figure(width: float = 6.4, height: float = 4.2) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def tokens_axes(ax: Any, xlabel: str) -> None:
    """Accuracy (%) against response tokens on a log x axis with plain tick labels (the token plots' axes)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def save_png(fig: Any, path: Path) -> None:
    # Atomic: a reader never sees a half-written PNG.
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def config_table(config: Mapping[str, Any]) -> list[str]:
    options = config.get("options", config)
    rows = [(k, v) for k, v in options.items() if not isinstance(v, dict | list)]
    if not rows:
        return ["(config.json not found)"]
    lines = ["| option | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in rows]
    versions = config.get("versions")
    if isinstance(versions, dict) and versions:
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return lines


def collapse_warnings(stats: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines that flag a sharpened model collapsed to empty responses or to one answer (summarize_responses
    stats per kind), with the reason, so a lift is not read as better reasoning."""
    out = []
    for kind, st in stats.items():
        if st.get("empty_fraction", 0) >= 0.5:
            out.append(f"**Warning:** {100 * st['empty_fraction']:.0f}% of the sharpened {kind} responses are empty. "
                       "An immediate end of response is more likely under pi_base than most sampled answers, and "
                       "shorter responses score higher under the sequence log-likelihood self-reward (Eq. 2), so "
                       "training toward it on sampled responses can end at saying nothing; try a larger beta, fewer "
                       "steps, or a chat prompt (--chat).")
        elif st.get("truncated_fraction", 0) >= 0.5:
            out.append(f"**Warning:** {100 * st['truncated_fraction']:.0f}% of the sharpened {kind} responses hit the "
                       "token limit. Once a loop repeats, each further repeat costs little log pi_base, so training "
                       "toward the sequence log-likelihood self-reward (Eq. 2) can drift into repetition; try a "
                       "larger beta or fewer steps.")
        elif st.get("top_answer") is None and st.get("top_answer_fraction", 0) >= 0.8:
            out.append(f"**Warning:** {100 * st['top_answer_fraction']:.0f}% of the sharpened {kind} responses have "
                       "no answer the task can extract.")
        elif st.get("top_answer") is not None and st.get("top_answer_fraction", 0) >= 0.8:
            out.append(f"**Note:** {100 * st['top_answer_fraction']:.0f}% of the sharpened {kind} responses give "
                       f"the same answer ({st['top_answer']}): accuracy then mostly measures how often that answer "
                       "is the gold one.")
    return out


def responses_table(rows: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    """Markdown table of summarize_responses stats, one line per (name, stats); None stats are skipped."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    lines = ["| responses | accuracy % [95% CI] | answer rate % | mean log pi_base | mean tokens | truncated % | "
             "most common answer | prompts |", "|---|---|---|---|---|---|---|---|"]
    for name, st in rows:
        if not st:
            continue
        top = (f"{st['top_answer'] if st['top_answer'] is not None else '(none)'} "
               f"({pct(st['top_answer_fraction'])}%)" if "top_answer" in st else "")
        lines.append(f"| {name} | {fmt_acc(st['accuracy'], st.get('accuracy_ci'))} | "
                     f"{fmt_pct(st.get('answer_rate'))} | {num(st['mean_logprob_base'])} | "
                     f"{st['mean_num_tokens']:.1f} | {pct(st['truncated_fraction'])} | {top} | "
                     f"{st['num_prompts']} |")
    return lines


def label_console(labels: Mapping[str, Any] | None) -> list[str]:
    """Plain-text lines of a `labels` section: the majority baseline, then each policy's balanced accuracy."""
    if not labels:
        return []
    base = labels["majority_baseline"]
    out = [f"always '{base['label']}' (majority label): {fmt_pct(base['accuracy'])}%   balanced accuracy / answer "
           "rate, % (! = does not beat the majority label):"]
    out += [f"  {name:<24}{fmt_pct(st['balanced_accuracy']):>7}{fmt_pct(st['answer_rate']):>8}"
            f"{'' if st['beats_majority_baseline'] else '  !'}" for name, st in labels.get("policies", {}).items()]
    return out


def label_lines(labels: Mapping[str, Any] | None) -> list[str]:
    """Markdown of a summary's `labels` section (closed answer sets): the gold labels, the always-the-same-label
    baselines, and per policy the answer rate, balanced accuracy and recall per label, flagging any policy whose
    accuracy does not beat always giving the majority label."""
    if not labels:
        return []
    base = labels["majority_baseline"]
    names = labels["labels"]
    out = ["Gold labels: " + ", ".join(f"{k} {v}" for k, v in labels["gold_counts"].items())
           + f". Always answering `{base['label']}` scores **{fmt_pct(base['accuracy'])}%** (the majority "
           "baseline); balanced accuracy gives each label equal weight, so a policy that always gives one label "
           "scores 1/labels.", "",
           "| policy | accuracy % | balanced accuracy % | answer rate % | "
           + " | ".join(f"recall {k} %" for k in names) + " | predicted | beats majority? |",
           "|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    for name, st in labels.get("policies", {}).items():
        pred = ", ".join(f"{k} {v}" for k, v in st["predicted_counts"].items() if v)
        flag = "yes" if st["beats_majority_baseline"] else "**no**"
        out.append(f"| {name} | {fmt_pct(st['accuracy'])} | {fmt_pct(st['balanced_accuracy'])} | "
                   f"{fmt_pct(st['answer_rate'])} | " + " | ".join(fmt_pct(st["recall"].get(k)) for k in names)
                   + f" | {pred} | {flag} |")
    return out


def format_eval(stats: dict[str, dict[str, Any]], title: str = "") -> str:
    """Plain-text table: accuracy and mean log pi_base per response kind."""
    head = (f"{'responses':<12}{'accuracy % [95% CI]':>24}{'log pi_base':>14}{'log pi':>12}{'tokens':>9}"
            f"{'prompts':>9}  most common answer")
    lines = ([title] if title else []) + [head, "-" * len(head)]

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    for kind, st in stats.items():
        lines.append(f"{kind:<12}{fmt_acc(st['accuracy'], st.get('accuracy_ci')):>24}{num(st['mean_logprob_base']):>14}"
                     f"{num(st['mean_logprob']):>12}{st['mean_num_tokens']:>9.1f}{st['num_prompts']:>9}"
                     f"  {st.get('top_answer')} ({100 * st.get('top_answer_fraction', 0):.0f}%)")
    return "\n".join(lines)


def protocol_line(s: Mapping[str, Any]) -> str:
    if s["protocol"] == "train-on-eval":
        return (f"**Protocol: train-on-eval** (the paper's): the model was trained on the {s['num_train_prompts']} "
                "prompts it is evaluated on, so the 'held-out' numbers below are not held out.")
    text = (f"**Protocol: held-out.** Trained on {s['num_train_prompts']} prompts, evaluated on "
            f"{s['num_eval_prompts']} others")
    if s.get("train_eval_overlap"):
        text += f" (**warning:** {s['train_eval_overlap']} training prompts also appear among the evaluated ones)"
    v = s.get("validation")
    if not v:  # runs made before the validation split
        return text + ". The kept checkpoint was chosen on the evaluated prompts, which favours it slightly."
    return text + (f". The kept checkpoint was chosen on {v['num_prompts']} validation prompts of the training "
                   f"distribution ({v['split']} split; {v['overlap_with_eval']} of them among the evaluated prompts, "
                   f"{v['overlap_with_train']} among the training prompts), never on the reported ones.")


TABLE1_NAMES = {"sample": ("temperature-1 samples (**Table 1**)", "base greedy"),
                "greedy": ("greedy", "base greedy"),
                "sample_vs_base_sample": ("temperature-1 samples", "base temperature-1 samples")}


def table1_lines(table1: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown of the paper's Table 1 quantities, with the paired interval of each accuracy difference."""
    out = ["| sharpened responses | compared with | accuracy lift | accuracy difference, points [95% CI] | "
           "likelihood lift (mean log pi_base) |", "|---|---|---|---|---|"]
    for kind, v in table1.items():
        lift = "n/a" if v["accuracy_lift_pct"] is None else f"{v['accuracy_lift_pct']:+.2f}%"
        diff = fmt_diff({"diff": v["accuracy_diff"], "diff_ci": v["diff_ci"], "excludes_zero": v["excludes_zero"]}
                        ) if v.get("diff_ci") else f"{100 * v['accuracy_diff']:+.1f}"
        what, ref = TABLE1_NAMES.get(kind, (kind, ""))
        out.append(f"| {what} | {ref} | {lift} | {diff} | {fmt_num(v['likelihood_lift'], '+.2f')} |")
    out += ["", "Paired bootstrap over the evaluated prompts; * marks an interval that excludes zero."]
    return out


def table1_console(table1: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain-text Table 1 lines: each accuracy difference with its paired interval, lift and likelihood lift."""
    out = []
    for kind, v in table1.items():
        what, ref = TABLE1_NAMES.get(kind, (kind, ""))
        diff = fmt_diff({"diff": v["accuracy_diff"], "diff_ci": v["diff_ci"], "excludes_zero": v["excludes_zero"]}
                        ) if v.get("diff_ci") else f"{100 * v['accuracy_diff']:+.1f}"
        lift = "n/a" if v["accuracy_lift_pct"] is None else f"{v['accuracy_lift_pct']:+.2f}%"
        out.append(f"sharpened {what.replace('**', '')} vs {ref}: {diff} points (lift {lift}), "
                   f"log pi_base {fmt_num(v['likelihood_lift'], '+.2f')}")
    return out


def pass_at_k_lines(base: Mapping[str, Any], sharp: Mapping[str, Any]) -> list[str]:
    """pass@k of the base and the sharpened model's temperature-1 samples side by side: sharpening that narrows
    the distribution shows as the base overtaking at large k."""
    b, s = (base.get("sample") or {}).get("pass_at_k") or {}, (sharp.get("sample") or {}).get("pass_at_k") or {}
    ks = sorted(set(b) & set(s), key=int)
    if len(ks) < 2:
        return []
    return ["| k | " + " | ".join(ks) + " |", "|---" * (len(ks) + 1) + "|",
            "| base pass@k % | " + " | ".join(fmt_pct(b[k]) for k in ks) + " |",
            "| sharpened pass@k % | " + " | ".join(fmt_pct(s[k]) for k in ks) + " |"]


def guard_lines(summary: Mapping[str, Any]) -> list[str]:
    """One line on the collapse guards of a training stage's summary (nothing for runs made before them)."""
    g = summary.get("guards")
    if not g:
        return []
    if g["stopped"]:
        return [f"**Stopped by a collapse guard** at {g['reason']}; that checkpoint was not kept."]
    return ["Collapse guards (validation responses against the base's: empty, truncated, repetitive, answer "
            "rate, length): none was crossed."]
