"""The report kit: number formats, figures, and the tables every report shares. Reads nothing itself.

matplotlib is imported where a figure is made (object API, no pyplot): no global backend is switched, and
the kit imports without it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SharpenError
from ..runs import read_json


def read_run(run_dir: Path, what: str) -> tuple[dict, dict]:
    """A finished run's summary.json and config.json (empty when absent)."""
    if not (run_dir / "summary.json").exists():
        raise SharpenError(f"{run_dir} has no summary.json: finish the {what} first (re-run its command)")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    return read_json(run_dir / "summary.json"), config


def fmt_num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def figure(width: float = 6.4, height: float = 4.2) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig: Any, path: Path) -> None:
    # Atomic: a reader never sees a half-written PNG.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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

    lines = ["| responses | accuracy % | mean log pi_base | mean tokens | truncated % | most common answer | prompts |",
             "|---|---|---|---|---|---|---|"]
    for name, st in rows:
        if not st:
            continue
        top = (f"{st['top_answer'] if st['top_answer'] is not None else '(none)'} "
               f"({pct(st['top_answer_fraction'])}%)" if "top_answer" in st else "")
        lines.append(f"| {name} | {pct(st['accuracy'])} | {num(st['mean_logprob_base'])} | "
                     f"{st['mean_num_tokens']:.1f} | {pct(st['truncated_fraction'])} | {top} | "
                     f"{st['num_prompts']} |")
    return lines


def format_eval(stats: dict[str, dict[str, Any]], title: str = "") -> str:
    """Plain-text table: accuracy and mean log pi_base per response kind."""
    head = (f"{'responses':<12}{'accuracy %':>12}{'log pi_base':>14}{'log pi':>12}{'tokens':>9}{'prompts':>9}"
            f"  most common answer")
    lines = ([title] if title else []) + [head, "-" * len(head)]

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    for kind, st in stats.items():
        lines.append(f"{kind:<12}{100 * st['accuracy']:>12.1f}{num(st['mean_logprob_base']):>14}"
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
    return text + ". The kept checkpoint was chosen on the evaluated prompts, which favours it slightly."
