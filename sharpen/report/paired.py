"""`sharpen compare DIR... --paired BON_DIR`: every method, base and trained, on the same held-out items, each
compared item by item with base greedy, with always answering the most common label, and with base majority@N.

The question it answers is the one amortized sharpening asks: does a trained model, decoded greedily (one
response per prompt), beat the base model's greedy answer and the label prior, and how much of the gap to
inference-time majority@N does it close? Base rows come from a bon run on the held-out items (greedy.jsonl,
samples.jsonl: the full pool of N, no subsampling), trained rows from sft / dpo / xpo / grpo run directories
(eval_sharpened.jsonl, whose greedy rows answer the same items). Power-sampling runs (`sharpen power` on the
same items) add their draws and, beside them, base best-of-N at the response-token budget they spent, so power
sampling is compared with Best-of-N at equal tokens. Reads files only; never loads a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import schema
from ..errors import SharpenError
from ..rows import complete_pools, finite_mean
from ..runs import atomic_write_text, check_fields, check_run_dir, load_jsonl, prepare_run_dir, read_json
from ..selection import select
from ..stats import bootstrap_ci, label_controls, paired_bootstrap, policy_label_stats
from .kit import figure, reads_summary, save_png, tokens_axes

TRAINED = ("sft", "dpo", "xpo", "grpo")
# The options of a run's config.json this table reads.
OPTIONS = {"n?": schema.INT, "temperature?": schema.NUM, "alpha?": schema.NUM, "reward?": schema.maybe(schema.STR),
           "selector?": schema.maybe(schema.STR)}
BASE_SELECTORS = ("logprob", "majority")


def _config(run_dir: Path) -> dict:
    """config.json, with the options this table reads checked (`sharpen.schema`)."""
    path = run_dir / "config.json"
    if not path.exists():
        raise SharpenError(f"{run_dir} is not a sharpen run directory (no config.json): give run directories")
    conf = read_json(path)
    check_fields(path, conf.get("options", {}), OPTIONS)
    return conf


def wall_seconds(run_dir: Path) -> float | None:
    """The run's wall time: the sum of its invocations in timing.jsonl (None for runs made before it existed)."""
    path = run_dir / "timing.jsonl"
    return sum(float(r["seconds"]) for r in load_jsonl(path)) if path.exists() else None


def _policy(name: str, picks: Mapping[str, Mapping[str, Any]], sample_acc: float | None = None,
            wall: float | None = None, note: str = "", spent: Mapping[str, float] | None = None,
            equal_tokens: str | None = None, kind: str = "base",
            item_samples: tuple[Mapping[str, float], Mapping[str, float]] | None = None) -> dict:
    """A method's per-item picks (prompt id -> row) with the numbers every row of the table shows. spent: response
    tokens the method spent per item (default: its answer's); equal_tokens: the method spending as many tokens
    that it is compared with (power rows: base majority@k); kind: base, equal (base best-of-k at another row's
    tokens), trained or power; item_samples: (this model's, the base model's) per-item accuracy of their
    temperature-1 evaluation samples (trained rows), for the paired sample-accuracy difference."""
    return {"method": name, "picks": dict(picks), "sample_accuracy": sample_acc, "wall_seconds": wall, "note": note,
            "spent": dict(spent) if spent is not None else None, "equal_tokens": equal_tokens, "kind": kind,
            "item_samples": item_samples}


def item_sample_accuracy(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per prompt id, the mean correctness of its evaluation rows of kind "sample"."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r.get("kind") == "sample":
            by.setdefault(str(r["prompt_id"]), []).append(float(bool(r["correct"])))
    return {pid: float(np.mean(v)) for pid, v in by.items()}


def _spent(pools: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """Response tokens of each item's whole pool."""
    return {pid: float(sum(r["num_tokens"] for r in rs)) for pid, rs in pools.items()}


class BaseRun(NamedTuple):
    """What a bon run gives the paired table: base greedy and best-of-N rows, gold answers, label set, N, each
    item's N samples in index order, the sampling temperature and the run's directory."""
    policies: list[dict]
    gold: dict[str, str]
    labels: list[str] | None
    n: int
    pools: dict[str, list[Any]]
    temperature: float
    path: Path


@reads_summary
def base_policies(bon_dir: Path) -> BaseRun:
    """Base greedy and base best-of-N (full pool) picks of a bon run, with what the other rows need of it."""
    conf = _config(bon_dir)
    if conf.get("command") != "bon" or not (bon_dir / "summary.json").exists():
        raise SharpenError(f"{bon_dir} is not a finished bon run: --paired needs the base model's bon run on the "
                           "held-out items (finish it with its own command)")
    n = int(conf["options"]["n"])
    gold = {str(p["id"]): str(p["answer"]) for p in load_jsonl(bon_dir / "prompts.jsonl")}
    greedy = {str(r["prompt_id"]): r for r in load_jsonl(bon_dir / "greedy.jsonl")}
    pools, _ = complete_pools(load_jsonl(bon_dir / "samples.jsonl"), n)
    summary = read_json(bon_dir / "summary.json")
    labels = (summary.get("labels") or {}).get("labels")
    sample_acc = float(np.mean([r["correct"] for rs in pools.values() for r in rs])) if pools else None
    temp = conf["options"].get("temperature")
    out = [_policy("base greedy", greedy, wall=None)]
    for name in BASE_SELECTORS:
        picks = {pid: rs[select(name, rs)] for pid, rs in pools.items()}
        out.append(_policy(f"base {name}@{n} (T={temp:g})", picks, sample_acc, wall_seconds(bon_dir),
                           note=f"{n} responses per prompt", spent=_spent(pools)))
    return BaseRun(out, gold, labels, n, pools, temp, bon_dir)


def equal_budget_n(tokens: float, per_sample: float, n: int) -> int:
    """Best-of-k at a budget of `tokens` response tokens per prompt, for samples of `per_sample` tokens on average:
    the nearest k, at least 1 and at most the n the bon run drew."""
    return int(min(n, max(1, round(tokens / per_sample)))) if per_sample > 0 else n


@reads_summary
def power_policies(run_dir: Path, base: BaseRun) -> list[dict]:
    """A power run's draws (one chain's, and its selectors over all n chains), each followed by base best-of-k on
    the bon run's first k samples, k chosen so that the base spends the response tokens the power run spent
    (rejected proposals included; `equal_budget_n`)."""
    conf, s = _config(run_dir), read_json(run_dir / "summary.json")
    power = s.get("power") or {}
    n = int(conf["options"]["n"])
    pools, _ = complete_pools(load_jsonl(run_dir / "samples.jsonl"), n)
    stats = {r["prompt_id"]: float(r["tokens"]) for r in load_jsonl(run_dir / "power_stats.jsonl")}  # last wins
    pools = {pid: rs for pid, rs in pools.items() if pid in stats}
    spent = {pid: stats[pid] for pid in pools}
    if not spent:
        raise SharpenError(f"{run_dir} has no power statistics for its draws: finish it with its own command")
    n_bon = base.n
    per_sample = float(np.mean([r["num_tokens"] for rs in base.pools.values() for r in rs])) if base.pools else 0.0
    name = f"power pi^{power.get('alpha', conf['options'].get('alpha')):g} ({power.get('method', 'mh')})"
    wall = wall_seconds(run_dir)
    acc = float(np.mean([r["correct"] for rs in pools.values() for r in rs]))
    rate = power.get("acceptance_rate")
    note = f"{n} chains" + (f", acceptance {rate:.2f}" if rate is not None else "")
    out = []
    one = {pid: t / n for pid, t in spent.items()}  # a chain's share
    groups = (("one draw", [("one draw", {pid: rs[0] for pid, rs in pools.items()})], one),
              (f"{n} chains", [(f"{sel}@{n}", {pid: rs[select(sel, rs)] for pid, rs in pools.items()})
                               for sel in BASE_SELECTORS], spent))
    for group, picks, cost in groups:
        budget = float(np.mean(list(cost.values())))
        k = equal_budget_n(budget, per_sample, n_bon)
        firsts = {pid: rs[:k] for pid, rs in base.pools.items()}
        capped = f" (capped: the bon run drew {n_bon})" if per_sample and budget / per_sample > n_bon + 0.5 else ""
        matched = {sel: f"base {sel}@{k} (T={base.temperature:g}), tokens of {name}, {group}" for sel in BASE_SELECTORS}
        out += [_policy(f"{name}, {what}", ps, acc, wall, note, spent=cost, equal_tokens=matched["majority"],
                        kind="power") for what, ps in picks]
        out += [_policy(m, {pid: rs[select(sel, rs)] for pid, rs in firsts.items()}, spent=_spent(firsts),
                        note=f"first {k} of the bon run's samples{capped}", kind="equal") for sel, m in matched.items()]
    return out


def _policies(run_dir: Path, base: BaseRun) -> list[dict]:
    """The rows a run directory adds: a trained model's greedy answers, or a power run's draws."""
    return (power_policies(run_dir, base) if _config(run_dir).get("command") == "power" else
            [trained_policy(run_dir)])


def run_policies(run_dirs: Sequence[str | Path], base: BaseRun) -> dict[Path, list[dict]]:
    """Each run directory's rows (`_policies`), named so that no two rows of the table share a name: rows whose
    names coincide get the result-changing options in which their runs differ (config.json's identity, e.g.
    `[lr=0.0001]`), or their run directory's name where none differs."""
    by_dir = {Path(d): _policies(Path(d), base) for d in run_dirs}
    groups: dict[str, list[tuple[Path, dict]]] = {}
    for d, pols in by_dir.items():
        for p in pols:
            groups.setdefault(p["method"], []).append((d, p))
    taken = {p["method"] for p in base.policies}
    for name, members in groups.items():
        if len(members) < 2 and name not in taken:
            continue
        ids = [_config(d).get("identity") or {} for d, _ in members]
        keys = sorted(k for k in set().union(*ids)
                      if len({json.dumps(i.get(k), sort_keys=True, default=str) for i in ids}) > 1)
        for (d, p), i in zip(members, ids, strict=True):
            p["method"] = f"{name} [{', '.join(f'{k}={_value(i.get(k))}' for k in keys) if keys else d.name}]"
    return by_dir


def _value(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


@reads_summary
def trained_policy(run_dir: Path) -> dict:
    """The greedy answers of a trained run's kept model on its held-out items, with its sample accuracy, wall
    time and which checkpoint was kept."""
    conf = _config(run_dir)
    command = conf.get("command")
    if command not in TRAINED or not (run_dir / "summary.json").exists():
        raise SharpenError(f"{run_dir} is not a finished {' / '.join(TRAINED)} / power run: finish it with its "
                           "command")
    s, o = read_json(run_dir / "summary.json"), conf.get("options", {})
    rows = load_jsonl(run_dir / "eval_sharpened.jsonl")
    picks = {str(r["prompt_id"]): r for r in rows if r.get("kind") == "greedy"}
    samples = [r["correct"] for r in rows if r.get("kind") == "sample"]
    reward = o.get("reward") or o.get("selector") or "logprob"
    t = s.get("training") or {}
    kept = (f"round {t['best_round']}" if "best_round" in t else
            f"step {t.get('best_step')}" if t.get("best_step") is not None else "")
    beta = s.get("beta") if isinstance(s.get("beta"), int | float) else None
    paths, agree = o.get("per_prompt") or 1, o.get("min_agreement") or 0  # sft's self-consistency targets
    name = (f"{command} ({reward}" + (f", {paths} paths" if paths > 1 else "")
            + (f", agreement >= {agree:g}" if agree else "")
            + (f", beta={beta:.3g}" if beta is not None and command != "sft" else "") + ")")
    stopped = (s.get("guards") or {}).get("stopped")
    note = kept + (f"; guard stopped: {(s.get('guards') or {}).get('reason')}" if stopped else "")
    base_path = run_dir / "eval_base.jsonl"
    mine = item_sample_accuracy(rows)
    base = item_sample_accuracy(load_jsonl(base_path)) if base_path.exists() else {}
    return _policy(name, picks, float(np.mean(samples)) if samples else None, wall_seconds(run_dir), note,
                   kind="trained", item_samples=(mine, base) if mine and base else None)


def paired_rows(bon_dir: str | Path, run_dirs: Sequence[str | Path], resamples: int = 2000) -> list[dict]:
    """One row per method (base greedy, base best-of-N, each trained run's greedy), over the items all of them
    answered: accuracy with a bootstrap interval, balanced accuracy and answer rate, mean tokens and mean
    log pi_base of the answers, and paired differences with base greedy, the majority label and majority@N."""
    base = base_policies(Path(bon_dir))
    return _paired_rows(base, run_policies(run_dirs, base), resamples)


def _paired_rows(base: BaseRun, by_dir: Mapping[Path, Sequence[dict]], resamples: int) -> list[dict]:
    gold, labels, n = base.gold, base.labels, base.n
    pols = base.policies + [p for ps in by_dir.values() for p in ps]
    ids = sorted(set(gold).intersection(*(p["picks"] for p in pols)))
    if not ids:
        raise SharpenError(f"the runs share no held-out item with {base.path}: give runs evaluated on its items")
    g = [gold[i] for i in ids]
    # The majority label as the label controls pick it (ties: the label listed first).
    label = label_controls(g, labels=labels)["majority_baseline"]["label"] if labels else None
    always = np.array([float(x == label) for x in g]) if label is not None else None
    correct = {p["method"]: np.array([float(bool(p["picks"][i]["correct"])) for i in ids]) for p in pols}
    greedy, majority = correct["base greedy"], correct[base.policies[2]["method"]]
    out = []
    for p in pols:
        c = correct[p["method"]]
        rows = [p["picks"][i] for i in ids]
        lab = policy_label_stats(g, [r.get("answer") for r in rows], labels) if labels else None
        gap = float(majority.mean() - greedy.mean())
        logp = [r.get("logprob_base", r.get("logprob")) for r in rows]
        out.append({
            "method": p["method"], "items": len(ids), "accuracy": float(c.mean()),
            "accuracy_ci": bootstrap_ci(c, resamples=resamples),
            "vs_greedy": paired_bootstrap(c, greedy, resamples=resamples),
            "vs_label": paired_bootstrap(c, always, resamples=resamples) if always is not None else None,
            "vs_majority": paired_bootstrap(c, majority, resamples=resamples),
            "gap_closed": (float(c.mean() - greedy.mean()) / gap) if abs(gap) > 1e-12 else None,
            "balanced_accuracy": lab["balanced_accuracy"] if lab else None,
            "answer_rate": float(np.mean([r.get("answer") is not None for r in rows])),
            "mean_tokens": float(np.mean([r["num_tokens"] for r in rows])),
            "spent_tokens": float(np.mean([p["spent"][i] if p["spent"] else r["num_tokens"]
                                           for i, r in zip(ids, rows, strict=True)])),
            "vs_equal_tokens": (paired_bootstrap(c, correct[p["equal_tokens"]], resamples=resamples)
                                if p["equal_tokens"] else None),
            "mean_logprob_base": finite_mean(logp),
            "sample_accuracy": p["sample_accuracy"], "sample_vs_base": _sample_diff(p, ids, resamples),
            "wall_seconds": p["wall_seconds"], "note": p["note"],
            "label": label, "label_accuracy": float(always.mean()) if always is not None else None,
            "n": n, "kind": p["kind"], "ids": ids,
        })
    return out


def _sample_diff(p: Mapping[str, Any], ids: Sequence[str], resamples: int) -> dict | None:
    """Paired difference of a trained model's per-item sample accuracy with its base's (same items, both at
    temperature 1, from the run's own before/after evaluation); None for rows without evaluation samples."""
    if not p.get("item_samples"):
        return None
    mine, base = p["item_samples"]
    common = [i for i in ids if i in mine and i in base]
    return paired_bootstrap([mine[i] for i in common], [base[i] for i in common], resamples=resamples)


def base_curve(base: BaseRun, ids: Sequence[str] | None = None, resamples: int = 2000) -> list[dict]:
    """Base best-of-k on the bon run's first k samples for k = 1..N, over the items `ids` (default: all): response
    tokens per item and each selector's accuracy with its 95% bootstrap interval. The curve power and trained
    rows are read against."""
    ids = sorted(base.pools) if ids is None else [i for i in ids if i in base.pools]
    out = []
    for k in range(1, base.n + 1):
        firsts = [base.pools[i][:k] for i in ids]
        row: dict[str, Any] = {"k": k, "tokens": float(np.mean([sum(r["num_tokens"] for r in rs) for rs in firsts]))}
        for sel in BASE_SELECTORS:
            c = np.array([float(bool(rs[select(sel, rs)]["correct"])) for rs in firsts])
            row[sel] = {"accuracy": float(c.mean()), "accuracy_ci": bootstrap_ci(c, resamples=resamples)}
        out.append(row)
    return out


def plot_paired(rows: Sequence[Mapping[str, Any]], curve: Sequence[Mapping[str, Any]]) -> Any:
    """Accuracy against response tokens spent per item: base best-of-k for every k (majority with its 95% band),
    base greedy, each trained model's greedy answers and each power row, with their intervals, and the majority
    label as a line. What lies above the base majority curve at its own tokens beats Best-of-N at equal cost."""
    fig = figure(7.2, 4.6)
    ax = fig.add_subplot()
    xs = [c["tokens"] for c in curve]
    for sel, color in (("majority", "tab:blue"), ("logprob", "tab:orange")):
        ax.plot(xs, [100 * c[sel]["accuracy"] for c in curve], marker=".", color=color, lw=1,
                label=f"base {sel}@k, k = 1..{len(curve)}")
        if sel == "majority" and all(c[sel]["accuracy_ci"] for c in curve):
            ax.fill_between(xs, [100 * c[sel]["accuracy_ci"][0] for c in curve],
                            [100 * c[sel]["accuracy_ci"][1] for c in curve], color=color, alpha=0.12)
    shown = [r for r in rows if r["kind"] in ("trained", "power") or r["method"] == "base greedy"]
    markers = {"trained": "s", "power": "D", "base": "*"}
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors  # distinct colours for up to 20 rows, none of them the curves' two
    colors = [c for j, c in enumerate(colors) if j not in (0, 2)]
    for i, r in enumerate(shown):
        lo, hi = r["accuracy_ci"] or (r["accuracy"], r["accuracy"])
        ax.errorbar([r["spent_tokens"]], [100 * r["accuracy"]],
                    yerr=[[100 * (r["accuracy"] - lo)], [100 * (hi - r["accuracy"])]], fmt=markers[r["kind"]],
                    ms=9 if r["kind"] == "base" else 5, capsize=2,
                    color="black" if r["kind"] == "base" else colors[i % len(colors)], label=r["method"],
                    zorder=3 if r["kind"] == "base" else 2)
    if rows and rows[0]["label"] is not None:
        ax.axhline(100 * rows[0]["label_accuracy"], color="gray", ls="--", lw=1,
                   label=f"always \"{rows[0]['label']}\"")
    tokens_axes(ax, "response tokens spent per item (log scale)")
    ax.set_title(f"{rows[0]['items'] if rows else 0} held-out items: accuracy vs tokens (95% intervals)", fontsize=10)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _diff(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("diff") is None:
        return "n/a"
    lo, hi = d["diff_ci"]
    return f"{100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{' *' if d['excludes_zero'] else ''}"


def _time(s: float | None) -> str:
    return "" if s is None else f"{s / 60:.1f} min"


def render_paired(rows: Sequence[Mapping[str, Any]], png_name: str | None = None) -> str:
    """The Markdown table of `paired_rows`, with the legend it needs to be read alone (and the plot's link)."""
    if not rows:
        return ""
    r0 = rows[0]
    lab = (f"always answering \"{r0['label']}\" (the most common gold label) scores {_pct(r0['label_accuracy'])}%"
           if r0["label"] is not None else "answers are open: no label baseline")
    head = ["| method | accuracy % | vs base greedy | vs majority label | vs base majority@N | gap closed | "
            "balanced acc. % | answer rate % | sample acc. % | sample acc. vs base | tokens | tokens spent | "
            "vs base majority at equal tokens | mean log pi_base | wall time | kept |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    body = []
    for r in rows:
        lo, hi = r["accuracy_ci"]
        gap = "" if r["gap_closed"] is None or r["method"] == "base greedy" else f"{100 * r['gap_closed']:.0f}%"
        lp = r["mean_logprob_base"]
        body.append(f"| {r['method']} | {_pct(r['accuracy'])} [{_pct(lo)}, {_pct(hi)}] | {_diff(r['vs_greedy'])} | "
                    f"{_diff(r['vs_label'])} | {_diff(r['vs_majority'])} | {gap} | {_pct(r['balanced_accuracy'])} | "
                    f"{_pct(r['answer_rate'])} | {_pct(r['sample_accuracy'])} | {_diff(r['sample_vs_base'])} | "
                    f"{r['mean_tokens']:.1f} | "
                    f"{r['spent_tokens']:.1f} | {_diff(r['vs_equal_tokens']) if r['vs_equal_tokens'] else ''} | "
                    f"{'n/a' if lp is None or not math.isfinite(lp) else f'{lp:.2f}'} | {_time(r['wall_seconds'])} | "
                    f"{r['note']} |")
    legend = (f"{r0['items']} held-out items; {lab}. Accuracy: the method's one answer per item (base best-of-N: "
              f"its pick among all {r0['n']} samples), 95% bootstrap interval over items; the three \"vs\" columns "
              "are paired differences in points on the same items with their 95% paired bootstrap interval, "
              "starred when it excludes zero. Gap closed: (accuracy - base greedy) / (base majority@N - base "
              "greedy). Sample acc.: temperature-1 samples of the same model (base best-of-N rows: the bon run's "
              "samples); sample acc. vs base: trained rows, the paired difference of the trained model's temperature-1 "
              "sample accuracy with the base model's on the same items (the run's before/after evaluation). "
              "Tokens and mean log pi_base: of the answers in the accuracy column; tokens spent: response "
              "tokens per item to reach that answer (best-of-N: all N samples; power sampling: every proposal, "
              "rejected ones included; one draw: the run's tokens over its chains). Power rows are followed by base "
              "best-of-k on the bon run's first k samples, k set so that they spend the same tokens; the equal-"
              "tokens column is the paired difference with that base majority@k. Wall time: the run's own (trained "
              "rows include their evaluations; base best-of-N: the bon run).")
    plot = ["", f"![accuracy vs tokens spent]({png_name})"] if png_name else []
    return "\n".join([*head, *body, "", legend, *plot]) + "\n"



def control_rows(ids: Sequence[str], trained: Mapping[Path, dict], control: str | Path,
                 resamples: int = 2000) -> list[dict]:
    """Every trained run of `trained` (run directory -> `trained_policy`) against the control run (e.g. grpo with
    the `random` reward, which must not help), item by item on the table's items `ids`: the paired difference of
    greedy accuracy and of temperature-1 sample accuracy (each model's own evaluation samples), with their 95%
    paired bootstrap intervals."""
    known = {d.resolve(): p for d, p in trained.items()}  # the control's row as the table names it
    ctl = known.get(Path(control).resolve()) or trained_policy(Path(control))
    missing = [i for i in ids if i not in ctl["picks"]]
    if missing:
        raise SharpenError(f"the control {control} did not answer {len(missing)} of the table's items (e.g. "
                           f"{missing[0]}): give a control run evaluated on the same held-out items")
    c_greedy = [float(bool(ctl["picks"][i]["correct"])) for i in ids]
    c_samples = (ctl["item_samples"] or ({}, {}))[0]
    out = []
    for d, p in trained.items():
        if d.resolve() == Path(control).resolve():
            continue
        mine = [float(bool(p["picks"][i]["correct"])) for i in ids]
        own = (p["item_samples"] or ({}, {}))[0]
        common = [i for i in ids if i in own and i in c_samples]
        out.append({"method": p["method"], "control": ctl["method"],
                    "greedy_vs_control": paired_bootstrap(mine, c_greedy, resamples=resamples),
                    "sample_vs_control": (paired_bootstrap([own[i] for i in common], [c_samples[i] for i in common],
                                                           resamples=resamples) if common else None)})
    return out


def render_control(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of `control_rows`."""
    if not rows:
        return ""
    head = [f"Against the control, {rows[0]['control']} (paired differences in points on the same items, 95% paired "
            "bootstrap interval, starred when it excludes zero):", "",
            "| method | greedy accuracy vs control | sample acc. vs control |", "|---|---|---|"]
    return "\n".join([*head, *(f"| {r['method']} | {_diff(r['greedy_vs_control'])} | {_diff(r['sample_vs_control'])} |"
                               for r in rows)]) + "\n"


def write_paired(bon_dir: str | Path, run_dirs: Sequence[str | Path], out: str | Path = "compare",
                 controls: Sequence[str | Path] = ()) -> Path:
    """Write OUT/paired.md and OUT/paired.png (accuracy vs tokens spent), OUT a new or empty folder or one compare
    wrote; returns the Markdown's path. controls: trained runs every other trained row is also compared with (a
    table each, after the main one). A refused OUT or run directory writes nothing."""
    check_run_dir(out, "compare")
    base = base_policies(Path(bon_dir))
    by_dir = run_policies(run_dirs, base)  # every run's files read once, for the table and every control
    rows = _paired_rows(base, by_dir, 2000)
    trained = {d: ps[0] for d, ps in by_dir.items() if ps[0]["kind"] == "trained"}
    ctl = "\n".join(render_control(control_rows(rows[0]["ids"], trained, c)) for c in controls)
    folder = prepare_run_dir(out, {}, {"paired": str(bon_dir), "run_dirs": [str(d) for d in run_dirs],
                                       **({"controls": [str(c) for c in controls]} if controls else {})},
                             command="compare")
    path, png = folder / "paired.md", folder / "paired.png"
    save_png(plot_paired(rows, base_curve(base, rows[0]["ids"] if rows else None)), png)
    atomic_write_text(path, render_paired(rows, png.name) + ("\n" + ctl if ctl else ""))
    return path
