"""`sharpen compare DIR...`: one table (Markdown, CSV) and one lift heatmap across any mix of finished run
directories (bon, sft, dpo, xpo, eval), written into a folder of its own (--out). Reads summary.json / eval.json
only; never loads a model.

A row is flat (the CSV's columns): fractions stay fractions, lifts are percent, a missing number is None.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SharpenError
from ..runs import atomic_write_text, check_run_dir, prepare_run_dir, read_json
from ..schema import fix as schema_fix
from .kit import DAMAGE, figure, fmt_acc, fmt_diff, fmt_num, fmt_pct, save_png

COLUMNS = ("model", "task", "method", "accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "balanced_accuracy",
           "majority_baseline", "majority_label", "lift_pct", "diff", "diff_ci_lo", "diff_ci_hi",
           "diff_excludes_zero", "answer_rate", "mean_num_tokens", "tokens_spent", "command", "run_dir")
KINDS = ("bon", "power", "sft", "dpo", "xpo", "grpo", "eval")
INTERVALS = ("Accuracy intervals: 95% bootstrap over prompts (best-of-N: a prompt's accuracy is the share of "
             "subsampling seeds whose pick is correct). Lift = 100 × (accuracy − greedy) / greedy against the same "
             "run's greedy (the base model's greedy for sft / dpo / xpo); the bracket is the 95% paired bootstrap "
             "interval of the difference in points on the same prompts, starred when it excludes zero. Eval runs "
             "have no reference in their directory: n/a.")


def _kind(run_dir: Path) -> tuple[str, dict]:
    """The run's command and its numbers (summary.json, or eval.json for eval); SharpenError when unreadable."""
    if not run_dir.is_dir():
        raise SharpenError(f"{run_dir} is not a directory: give run directories written by sharpen "
                           f"{' / '.join(KINDS)}")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    command = config.get("command") if isinstance(config, dict) else None
    if command is None:  # no config.json: recognise the numbers file
        command = "eval" if (run_dir / "eval.json").exists() else "bon" if (run_dir / "summary.json").exists() else None
    if command is None:
        raise SharpenError(f"{run_dir} is not a sharpen run directory (no config.json, summary.json or eval.json): "
                           f"give directories written by sharpen {' / '.join(KINDS)}")
    if command not in KINDS:
        raise SharpenError(f"{run_dir} holds a '{command}' run, which compare does not read: give "
                           f"{' / '.join(KINDS)} run directories")
    name = "eval.json" if command == "eval" else "summary.json"
    if not (run_dir / name).exists():
        raise SharpenError(f"{run_dir} has no {name}: the {command} run is unfinished; re-run its command with "
                           f"--out {run_dir} to finish it, then compare")
    numbers = read_json(run_dir / name)
    if command == "bon" and "sharpened" in numbers:  # a summary.json without config.json: a training stage
        command = str(numbers.get("algorithm") or "sft")
    options = config.get("options", {}) if isinstance(config, dict) else {}
    for key in ("task", "model"):
        numbers.setdefault(key, options.get(key))
    return command, numbers


def _ci(ci: Sequence[float] | None) -> tuple[float | None, float | None]:
    return (None, None) if not ci else (float(ci[0]), float(ci[1]))


def _row(summary: Mapping[str, Any], command: str, run_dir: Path, method: str, stats: Mapping[str, Any] | None,
         acc_key: str, policy: str, vs: Mapping[str, Any] | None = None, lift: float | None = None) -> dict:
    """One flat row from a stats dict (accuracy, accuracy_ci, answer_rate, mean_num_tokens), the label policy's
    balanced accuracy and a paired difference {diff, diff_ci, excludes_zero} with greedy."""
    stats = stats or {}
    labels = summary.get("labels") or {}
    base = labels.get("majority_baseline") or {}
    pol = (labels.get("policies") or {}).get(policy) or {}
    vs = vs or {}
    lo, hi = _ci(stats.get("accuracy_ci"))
    dlo, dhi = _ci(vs.get("diff_ci"))
    return {"model": _model_name(summary.get("model")), "task": summary.get("task"), "method": method,
            "accuracy": stats.get(acc_key), "accuracy_ci_lo": lo, "accuracy_ci_hi": hi,
            "balanced_accuracy": pol.get("balanced_accuracy"), "majority_baseline": base.get("accuracy"),
            "majority_label": base.get("label"), "lift_pct": lift, "diff": vs.get("diff"), "diff_ci_lo": dlo,
            "diff_ci_hi": dhi, "diff_excludes_zero": vs.get("excludes_zero"),
            "answer_rate": stats.get("answer_rate"), "mean_num_tokens": stats.get("mean_num_tokens"),
            # response tokens sampled per prompt for this result (best-of-N: all N samples, early stops counted
            # as far as they ran), so runs with early stopping or adaptive N compare at their cost
            "tokens_spent": stats.get("response_tokens_per_prompt"),
            "command": command, "run_dir": str(run_dir)}


def _bon_rows(s: Mapping[str, Any], run_dir: Path, command: str = "bon") -> list[dict]:
    sel = s.get("selectors") or {}
    ns = s.get("ns") or sorted({int(k) for by_n in sel.values() for k in by_n})
    n = str(ns[-1]) if ns else ""
    pw = s.get("power") or {}
    tag = f"power(alpha={pw.get('alpha', 0):g}, {pw.get('method')})" if command == "power" else "bon"
    out = [_row(s, command, run_dir, "greedy", s["greedy"], "accuracy", "greedy")] if s.get("greedy") else []
    for name, by_n in sel.items():
        st = by_n.get(n) or {}
        out.append(_row(s, command, run_dir, f"{tag}:{name}", st, "accuracy_mean", name, st.get("vs_greedy"),
                        st.get("lift_pct_mean")))
    g = (s.get("greedy") or {}).get("accuracy")
    for label, a in ((f"bon:adaptive {(s.get('adaptive') or {}).get('rule')}", s.get("adaptive")),
                     ("bon:majority, adaptive N", s.get("adaptive_majority"))):
        if a:  # a run sampled with --adaptive, or the exact adaptive-N reading of a full pool
            lift = None if not g or a.get("accuracy") is None else 100 * (a["accuracy"] - g) / g
            out.append(_row(s, "bon", run_dir, label, a, "accuracy", label.removeprefix("bon:"), a.get("vs_greedy"),
                            lift))
    return out


def _trained_rows(s: Mapping[str, Any], command: str, run_dir: Path) -> list[dict]:
    if command == "sft":
        method = f"sft({s['selector']})" if s.get("selector") else "sft"
    elif command == "grpo":
        method = f"grpo({s['reward']})"
    else:
        opts = [str(s["loss"])] if s.get("loss") and s.get("loss") != command else []
        opts += [f"beta={s['beta']:g}"] if isinstance(s.get("beta"), int | float) else []
        opts += [f"reward={s['reward']}"] if s.get("reward") not in (None, "logprob") else []
        method = f"{command}({', '.join(opts)})" if opts else command
    base, sharp, t1 = s.get("base") or {}, s.get("sharpened") or {}, s.get("table1") or {}
    out = [_row(s, command, run_dir, "greedy", base["greedy"], "accuracy", "base greedy")] if "greedy" in base else []
    for kind in ("greedy", "sample"):
        if kind in sharp:
            t = t1.get(kind) or {}
            vs = {"diff": t.get("accuracy_diff"), "diff_ci": t.get("diff_ci"), "excludes_zero": t.get("excludes_zero")}
            out.append(_row(s, command, run_dir, f"{method} {kind}", sharp[kind], "accuracy", f"sharpened {kind}",
                            vs, t.get("accuracy_lift_pct")))
    return out


def _eval_rows(s: Mapping[str, Any], run_dir: Path) -> list[dict]:
    tag = f" ({'/'.join(Path(str(s['adapter'])).parts[-2:])})" if s.get("adapter") else ""
    return [_row(s, "eval", run_dir, f"eval {kind}{tag}", s[kind], "accuracy", kind)
            for kind in ("greedy", "sample") if s.get(kind)]


def _model_name(model: str | None) -> str | None:
    """A model given as a file or directory path shows as its last component (a hub id stays whole)."""
    if model and (model.startswith(("/", ".", "~")) or model.endswith(".gguf")):
        return Path(model).name
    return model


def compare_rows(dirs: Sequence[str | Path]) -> list[dict]:
    """One row per method of every run directory, in the order given (see COLUMNS)."""
    if not dirs:
        raise SharpenError("compare needs at least one run directory")
    out: list[dict] = []
    for d in map(Path, dirs):
        command, s = _kind(d)
        try:
            out += (_bon_rows(s, d, command) if command in ("bon", "power") else _eval_rows(s, d) if command == "eval"
                    else _trained_rows(s, command, d))
        except DAMAGE as e:
            path = d / ("eval.json" if command == "eval" else "summary.json")
            raise SharpenError(f"{path} is not as sharpen writes it ({type(e).__name__}: {str(e)[:80]}): "
                               f"{schema_fix(path)}") from e
    return out


def _lift(r: Mapping[str, Any]) -> str:
    if r["lift_pct"] is None:
        return "reference" if r["method"] == "greedy" else "n/a"
    vs = {"diff": r["diff"], "diff_ci": [r["diff_ci_lo"], r["diff_ci_hi"]], "excludes_zero": r["diff_excludes_zero"]}
    return f"{r['lift_pct']:+.1f}%" + (f" ({fmt_diff(vs)} pts)" if r["diff_ci_lo"] is not None else "")


def render_markdown(rows: Sequence[Mapping[str, Any]], png_name: str | None = None) -> str:
    """The Markdown table, the line on intervals and (when given) the heatmap's file name."""
    lines = ["| model | task | method | accuracy % [95% CI] | balanced accuracy % | majority label % | "
             "lift over greedy [paired diff, pts] | answer rate % | mean tokens | tokens spent / prompt | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = [r["accuracy_ci_lo"], r["accuracy_ci_hi"]] if r["accuracy_ci_lo"] is not None else None
        maj = fmt_pct(r["majority_baseline"]) + (f" ({r['majority_label']})" if r["majority_label"] else "")
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {fmt_acc(r['accuracy'], acc)} | "
                     f"{fmt_pct(r['balanced_accuracy'])} | {maj} | {_lift(r)} | {fmt_pct(r['answer_rate'])} | "
                     f"{fmt_num(r['mean_num_tokens'], '.1f')} | {fmt_num(r['tokens_spent'], '.0f')} | "
                     f"{r['run_dir']} |")
    lines += ["", INTERVALS]
    return "\n".join(lines + (["", f"![% lift over greedy]({png_name})"] if png_name else [])) + "\n"


def render_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows([["" if r[c] is None else r[c] for c in COLUMNS] for r in rows])
    return buf.getvalue()


def lift_grid(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Figure 1's layout: row labels (model / task), column labels (methods; greedy, the reference, left out),
    and the % lift of each cell (None for n/a). A method met twice for one model and task gets its run's name."""
    keys, cells = [], {}
    for r in rows:
        if r["method"] == "greedy":
            continue
        y = f"{r['model']} / {r['task']}"
        x = r["method"] if (y, r["method"]) not in cells else f"{r['method']} [{Path(r['run_dir']).name}]"
        keys.append((y, x))
        cells[(y, x)] = r["lift_pct"]
    ys = list(dict.fromkeys(y for y, _ in keys))
    xs = list(dict.fromkeys(x for _, x in keys))
    return ys, xs, [[cells.get((y, x)) for x in xs] for y in ys]


def plot_lift_heatmap(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Heatmap of % lift over greedy: diverging colours centred at 0, grey and 'n/a' where there is none."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    ys, xs, grid = lift_grid(rows)
    vals = np.array([[math.nan if v is None else v for v in row] for row in grid], dtype=float)
    vals = vals.reshape(len(ys), len(xs))
    m = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
    fig = figure(max(4.0, 1.3 * len(xs) + 3.0), max(2.5, 0.5 * len(ys) + 1.8))
    ax = fig.add_subplot()
    if not xs:
        ax.text(0.5, 0.5, "no method with a lift over greedy", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    cmap = colormaps["RdBu"].with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, norm=Normalize(-max(m, 1e-9), max(m, 1e-9)),
                   aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            v = vals[i, j]
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:+.1f}", ha="center", va="center", fontsize=8,
                    color="white" if not math.isnan(v) and abs(v) > 0.6 * m else "black")
    ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(ys)), ys, fontsize=8)
    ax.set_title("% accuracy lift over greedy", fontsize=10)
    fig.colorbar(im, ax=ax, label="% lift")
    return fig


def write_compare(dirs: Sequence[str | Path], out: str | Path = "compare") -> dict[str, Path]:
    """Write OUT/compare.md, OUT/compare.csv and OUT/compare.png (OUT: a new or empty folder, or one compare
    wrote); returns their paths by suffix ("md", "csv", "png"). A refused OUT or run directory writes nothing."""
    check_run_dir(out, "compare")
    rows = compare_rows(dirs)
    folder = prepare_run_dir(out, {}, {"run_dirs": [str(d) for d in dirs]}, command="compare")
    paths = {ext: folder / f"compare.{ext}" for ext in ("md", "csv", "png")}
    atomic_write_text(paths["md"], render_markdown(rows, paths["png"].name))
    atomic_write_text(paths["csv"], render_csv(rows))
    save_png(plot_lift_heatmap(rows), paths["png"])
    return paths
