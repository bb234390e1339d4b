"""Statistics over stored rows (pure functions): the best-of-N summary, response summaries, lifts, pass@k.

Stages compute their summaries here while they run; reports only read what was stored.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import SharpenError
from .rows import complete_pools, finite_mean, group_by_prompt
from .selection import CONFIDENCE_FIELDS, SELECTORS, Pool, adaptive_majority, as_float, select
from .stats import (
    auroc,
    auroc_within_prompt,
    bootstrap_ci,
    label_controls,
    paired_bootstrap,
    pass_at_k,
    policy_label_stats,
)


def lift_pct(acc: float, greedy_acc: float | None) -> float | None:
    """Percent accuracy lift over greedy, 100 * (acc - greedy) / greedy (the paper's Fig. 1); None if undefined."""
    if greedy_acc is None or greedy_acc == 0 or math.isnan(greedy_acc):
        return None
    return 100.0 * (acc - greedy_acc) / greedy_acc


def default_ns(n: int) -> list[int]:
    """1, 2, 4, ... below n, plus n itself."""
    ns, k = [], 1
    while k < n:
        ns.append(k)
        k *= 2
    return ns + [n]


def _mean(x: Sequence[float] | np.ndarray) -> float | None:
    """Mean of the finite values (invalid and -inf log-probs would swamp a mean); None when there are none."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def _complete_pools(samples: Sequence[Mapping[str, Any]], n: int) -> tuple[dict[str, Pool], int, list[Any]]:
    """Pools of the prompts that have all n samples (index 0..n-1; first row wins on duplicates), how many prompts
    are incomplete, and the rows the pools hold (the counted rows)."""
    rows, incomplete = complete_pools(samples, n)
    return ({pid: Pool.from_rows(rs) for pid, rs in rows.items()}, incomplete,
            [r for rs in rows.values() for r in rs])


def _greedy_stats(greedy: Sequence[Mapping[str, Any]] | None, prompt_ids: set[str],
                  prompt_tokens: Mapping[str, int] | None = None) -> dict[str, Any] | None:
    rows = {str(r["prompt_id"]): r for r in greedy or [] if str(r["prompt_id"]) in prompt_ids}
    if not rows:
        return None
    vals = list(rows.values())
    correct = [float(bool(r["correct"])) for r in vals]
    num_tokens = float(np.mean([int(r["num_tokens"]) for r in vals]))
    return {
        "accuracy": float(np.mean(correct)),
        "mean_logprob": _mean([as_float(r["logprob"]) for r in vals]),
        "mean_num_tokens": num_tokens,
        "num_prompts": len(vals),
        "accuracy_ci": _ci(correct),
        "answer_rate": float(np.mean([r.get("answer") is not None for r in vals])),
        "response_tokens_per_prompt": num_tokens,  # one response per prompt: its mean length
        **({"prompt_tokens_per_prompt": _prompt_tokens(prompt_tokens, rows)} if prompt_tokens is not None else {}),
    }


def _prompt_tokens(prompt_tokens: Mapping[str, int], ids: Iterable[str]) -> float | None:
    """Mean prompt length over the prompts `ids` that `prompt_tokens` knows (each prompt is prefilled once,
    whatever N); None when it knows none of them."""
    lens = [int(prompt_tokens[i]) for i in ids if i in prompt_tokens]
    return float(np.mean(lens)) if lens else None


def computable_selectors(samples: Sequence[Mapping[str, Any]]) -> list[str]:
    """The selectors (in registry order) whose `needs` every row of `samples` has: a run sampled before a field
    was recorded keeps the summary it had."""
    return [s for s, sel in SELECTORS.items() if all(f in r for r in samples for f in sel.needs)]


def accuracy_ci(rows: Sequence[dict]) -> list[float] | None:
    """95% bootstrap interval over prompts of the accuracy of `rows` (a prompt's rows count as its mean)."""
    return _ci(list(per_prompt_accuracy(rows).values()))


def _ci(values: Sequence[float] | np.ndarray) -> list[float] | None:
    """95% bootstrap interval over prompts of the mean of per-prompt values (stats.bootstrap_ci), as a list."""
    ci = bootstrap_ci(np.asarray(values, dtype=np.float64))
    return None if ci is None else [ci[0], ci[1]]


def _selector_stats(pools: list[Pool], n_sub: int, seeds: int, greedy_acc: float | None,
                    greedy_correct: np.ndarray | None, names: Sequence[str],
                    prompt_tokens: float | None = None) -> tuple[dict[str, dict], dict[str, list]]:
    """Accuracy and self-reward of each selector of `names` at N = n_sub, over `seeds` independent subsamplings;
    and the answers picked under the first seed (for the label statistics).

    Intervals are over prompts: each prompt's accuracy is the share of seeds whose pick was correct, and the
    bootstrap resamples prompts; `vs_greedy` pairs it with greedy's correctness on the same prompt. The token
    budget of sampling N is the same for every selector: `response_tokens_per_prompt`, the summed length of the N
    subsampled responses averaged over prompts and seeds, and (when given) `prompt_tokens_per_prompt`, the mean
    prompt length (a prompt is prefilled once, whatever N).
    """
    m = len(pools)
    correct = {s: np.zeros((seeds, m), dtype=bool) for s in names}
    answered = {s: np.zeros((seeds, m), dtype=bool) for s in names}
    first: dict[str, list] = {s: [] for s in names}
    lp: dict[str, list] = {s: [] for s in names}
    ntok: dict[str, list] = {s: [] for s in names}
    budget = np.zeros((seeds, m))  # summed num_tokens of the N subsampled responses
    for seed in range(seeds):
        # One generator per (seed, N): results do not depend on which other N were evaluated.
        rng = np.random.default_rng([seed, n_sub])
        picked: dict[str, list[tuple[float, int]]] = {s: [] for s in names}
        for j, pool in enumerate(pools):
            sub = pool.take(np.sort(rng.choice(len(pool), size=n_sub, replace=False)))
            budget[seed, j] = float(sub.num_tokens.sum())
            for s in names:
                pos = select(s, sub, rng)
                correct[s][seed, j] = bool(sub.correct[pos])
                answered[s][seed, j] = sub.answer[pos] is not None
                picked[s].append((float(sub.logprob[pos]), int(sub.num_tokens[pos])))
                if seed == 0:
                    first[s].append(sub.answer[pos])
        for s in names:
            lps, nts = zip(*picked[s], strict=True)
            lp[s].append(_mean(lps))
            ntok[s].append(float(np.mean(nts)))
    tokens = {"response_tokens_per_prompt": float(budget.mean()),
              **({"prompt_tokens_per_prompt": prompt_tokens} if prompt_tokens is not None else {})}
    out = {}
    for s in names:
        a = correct[s].mean(axis=1)  # (seeds,) accuracy per seed
        per_prompt = correct[s].mean(axis=0)  # (m,) share of seeds correct, per prompt
        out[s] = {
            "accuracy_mean": float(a.mean()),
            "accuracy_std": float(a.std(ddof=0)),  # spread over subsampling seeds, not over prompts
            "mean_logprob": _mean([x for x in lp[s] if x is not None]),
            "mean_num_tokens": float(np.mean(ntok[s])),
            "lift_pct_mean": lift_pct(float(a.mean()), greedy_acc),
            "accuracy_per_seed": [float(x) for x in a],
            "accuracy_ci": _ci(per_prompt),
            "answer_rate": float(answered[s].mean()),
            "vs_greedy": None if greedy_correct is None else _paired(per_prompt, greedy_correct),
            **tokens,
        }
    return out, first


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Paired difference a - b over the prompts where b is known (NaN marks a prompt without b)."""
    known = ~np.isnan(b)
    return paired_bootstrap(a[known], b[known])


def _likelihood_vs_correctness(pools: list[Pool]) -> dict[str, Any]:
    """Do correct samples have higher self-reward? Pooled AUROC, and the within-prompt AUROC that BoN relies on."""
    lp = np.concatenate([p.logprob for p in pools])
    per_tok = np.concatenate([p.logprob / np.maximum(p.num_tokens, 1) for p in pools])
    ok = np.concatenate([p.correct for p in pools])
    valid = ~(np.isnan(lp) | np.isposinf(lp))
    within = [auroc(p.logprob[p.valid], p.correct[p.valid]) for p in pools]
    within = [w for w in within if w is not None]
    return {
        "mean_logprob_correct": _mean(lp[ok & valid]),
        "mean_logprob_incorrect": _mean(lp[~ok & valid]),
        "mean_logprob_per_token_correct": _mean(per_tok[ok & valid]),
        "mean_logprob_per_token_incorrect": _mean(per_tok[~ok & valid]),
        "auroc": auroc(lp[valid], ok[valid]),
        "auroc_per_token": auroc(per_tok[valid], ok[valid]),
        # Selection happens inside one prompt's pool, so this is the AUROC that predicts BoN's gain.
        "auroc_within_prompt": float(np.mean(within)) if within else None,
        "num_prompts_mixed": len(within),
    }


def summarize(samples: list[dict], greedy: list[dict] | None, n: int, seeds: int,
              ns: list[int] | None = None, gold: Mapping[str, Any] | None = None,
              labels: Sequence[str] | None = None, prompt_tokens: Mapping[str, int] | None = None) -> dict:
    """Every selector's statistics at each N, computed from the stored samples (the run's summary.json).

    Only prompts with all n samples (index 0..n-1) count; others are reported in `num_prompts_incomplete`.
    Accuracy at N is averaged over `seeds` subsamplings of N of the n samples without replacement, drawn
    independently per prompt from a numpy Generator seeded with (seed, N); `accuracy_std` is the population
    std (ddof=0) over those seeds. `ns` defaults to 1, 2, 4, ... < n plus n. Means of log-probs skip
    non-finite values. Greedy statistics use the counted prompts that have a greedy row.

    Intervals (95%, bootstrap over prompts, fixed seed): `accuracy_ci` of greedy and of every selector at every
    N, `vs_greedy` (paired difference with greedy on the same prompts, `diff_ci`, `excludes_zero`) and
    `pass_at_k_ci`. pass@k is given for every k up to n. With `gold` (prompt id -> gold answer) and `labels`
    (a closed answer set), `labels` holds the label controls of greedy and of each selector at the largest
    N, first subsampling seed (stats.label_controls).

    A selector is computed only when every counted sample row has the fields it needs (`Selector.needs`), so a
    run sampled before the confidence fields were recorded keeps its summary. Token budgets: every selector at
    N carries `response_tokens_per_prompt` (the tokens sampling N responses cost, averaged over prompts and
    seeds) and, with `prompt_tokens` (prompt id -> prompt length in tokens), `prompt_tokens_per_prompt` (the
    mean prompt length: a prompt is prefilled once whatever N); greedy carries both for its one response.
    """
    if n < 1 or seeds < 1:
        raise SharpenError(f"summarize needs n >= 1 and seeds >= 1, got n={n} seeds={seeds}")
    ns = default_ns(n) if ns is None else sorted(set(int(k) for k in ns))
    if not ns or ns[0] < 1 or ns[-1] > n:
        raise SharpenError(f"every N in ns must lie in 1..{n}, got {ns}: pick sizes up to the samples per prompt")
    by_id, incomplete, counted = _complete_pools(samples, n)
    if not by_id:
        raise SharpenError(f"no prompt has all {n} samples: finish (resume) the sampling stage first")
    ids = sorted(by_id)
    pools = [by_id[i] for i in ids]
    names = computable_selectors(counted)
    present = {f for f in CONFIDENCE_FIELDS if all(f in r for r in counted)}
    g = _greedy_stats(greedy, set(ids), prompt_tokens)
    g_acc = g["accuracy"] if g else None
    g_rows = {str(r["prompt_id"]): r for r in greedy or []}
    g_correct = (np.array([float(bool(g_rows[i]["correct"])) if i in g_rows else np.nan for i in ids])
                 if g else None)
    by_n, picks = {}, {}
    for k in ns:
        by_n[str(k)], picks[k] = _selector_stats(pools, k, seeds, g_acc, g_correct, names,
                                                 None if prompt_tokens is None else _prompt_tokens(prompt_tokens, ids))
    per_prompt_pass = {k: [pass_at_k(n, int(p.correct.sum()), k) for p in pools] for k in range(1, n + 1)}
    all_lp = np.concatenate([p.logprob for p in pools])
    finish = [str(r.get("finish_reason")) for r in samples
              if str(r["prompt_id"]) in by_id and 0 <= int(r["index"]) < n]
    return {
        "num_prompts": len(pools),
        "num_prompts_incomplete": incomplete,
        "n": n,
        "seeds": seeds,
        "ns": ns,
        "greedy": g,
        "selectors": _transpose(by_n, names),
        "pass_at_k": {str(k): float(np.mean(v)) for k, v in per_prompt_pass.items()},
        "sample_accuracy": float(np.mean(np.concatenate([p.correct for p in pools]))),
        "truncated_fraction": float(np.mean([f == "length" for f in finish])) if finish else 0.0,
        "invalid_logprobs": int((np.isnan(all_lp) | np.isposinf(all_lp)).sum()),
        "likelihood_vs_correctness": _likelihood_vs_correctness(pools),
        "pass_at_k_ci": {str(k): _ci(v) for k, v in per_prompt_pass.items()},
        "sample_accuracy_ci": _ci([float(p.correct.mean()) for p in pools]),
        "self_reward_auroc": _self_reward_auroc(pools, present),
        "adaptive_majority": _adaptive(pools, by_n[str(n)]["majority"] if str(n) in by_n else None),
        **({"labels": label_controls([gold[i] for i in ids],
                                     {"greedy": [g_rows[i].get("answer") if i in g_rows else None for i in ids],
                                      **picks[ns[-1]]}, labels)} if gold is not None and labels else {}),
    }


def _adaptive(pools: list[Pool], majority_at_n: Mapping[str, Any] | None) -> dict[str, Any]:
    """Majority vote with adaptive N (selection.adaptive_majority) over each full pool: accuracy with its interval,
    samples and response tokens spent per prompt, and the share of the tokens of sampling all n."""
    correct, used, tokens, full = [], [], [], []
    for pool in pools:
        pos, k = adaptive_majority(pool)
        first = np.argsort(pool.index, kind="stable")[:k]
        correct.append(float(pool.correct[pos]))
        used.append(k)
        tokens.append(float(pool.num_tokens[first].sum()))
        full.append(float(pool.num_tokens.sum()))
    out = {"accuracy": float(np.mean(correct)), "accuracy_ci": _ci(correct),
           "samples_per_prompt": float(np.mean(used)), "response_tokens_per_prompt": float(np.mean(tokens)),
           "token_share": float(np.sum(tokens) / max(np.sum(full), 1.0))}
    if majority_at_n is not None:
        out["majority_accuracy"] = majority_at_n["accuracy_mean"]
    return out


def _self_reward_auroc(pools: list[Pool], fields: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """How well each label-free score separates correct from incorrect samples: pooled over all samples, and
    within prompt (pairs from the same prompt, weighted by their number), the one selection relies on.

    The log-prob scores always; the confidence scores of `fields` (selection.CONFIDENCE_FIELDS the rows have), each
    over the samples where it is usable (NaN skipped). Samples cut by early stopping are left out (no selector
    picks them), unless a prompt's samples were all cut.
    """
    scores: list[tuple[str, Callable[[Pool], np.ndarray]]] = [
        ("logprob", lambda p: p.logprob), ("logprob_mean", lambda p: p.logprob / np.maximum(p.num_tokens, 1))]
    scores += [(f, lambda p, f=f: getattr(p, f)) for f in CONFIDENCE_FIELDS if f in set(fields)]
    out = {}
    for name, score in scores:
        groups = []
        for p in pools:
            s = score(p)
            live = ~p.stopped if (~p.stopped).any() else np.ones(len(p), dtype=bool)
            keep = live & ~(np.isnan(s) | np.isposinf(s))
            groups.append((s[keep], p.correct[keep]))
        within = auroc_within_prompt(groups)
        out[name] = {"pooled": auroc(np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups])),
                     "within_prompt": within["auroc"], "num_prompts": within["num_prompts"]}
    return out


def _transpose(by_n: dict[str, dict[str, dict]], names: Sequence[str]) -> dict[str, dict[str, dict]]:
    """{N: {selector: stats}} -> {selector: {N: stats}} for the selectors `names`, in that order."""
    return {s: {k: by_n[k][s] for k in by_n} for s in names}


def per_prompt_accuracy(rows: Sequence[dict]) -> dict[str, float]:
    """Prompt id -> share of its rows that are correct (a prompt with k samples counts once, weight 1)."""
    return {pid: sum(bool(r["correct"]) for r in rs) / len(rs) for pid, rs in group_by_prompt(rows).items()}


def summarize_responses(rows: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per kind (greedy / sample): accuracy with its 95% interval over prompts, answer rate, mean log pi_base,
    mean log pi (policy), mean length, counts; for samples, unbiased pass@k for k up to the samples per prompt."""
    out = {}
    for kind in ("greedy", "sample"):
        rs = [r for r in rows if r.get("kind") == kind]
        if not rs:
            continue
        per_prompt = per_prompt_accuracy(rs)
        out[kind] = {
            "accuracy": sum(bool(r["correct"]) for r in rs) / len(rs),
            "mean_logprob_base": finite_mean([r.get("logprob_base") for r in rs]),
            "mean_logprob": finite_mean([r.get("logprob") for r in rs]),
            "mean_num_tokens": sum(r["num_tokens"] for r in rs) / len(rs),
            "truncated_fraction": sum(r["finish_reason"] == "length" for r in rs) / len(rs),
            "num_prompts": len({r["prompt_id"] for r in rs}),
            "num_responses": len(rs),
            "empty_fraction": sum(not r["text"].strip() for r in rs) / len(rs),
            **top_answer(rs),
            "accuracy_ci": _ci(list(per_prompt.values())),
            "answer_rate": sum(r.get("answer") is not None for r in rs) / len(rs),
        }
        if kind == "sample":
            out[kind]["pass_at_k"] = _pass_at_k_of_rows(rs)
    return out


def _pass_at_k_of_rows(rows: Sequence[dict]) -> dict[str, float]:
    """Unbiased pass@k (stats.pass_at_k) for k up to the fewest samples any prompt has."""
    counts = [(len(rs), sum(bool(r["correct"]) for r in rs)) for rs in group_by_prompt(rows).values()]
    kmax = min(n for n, _ in counts)
    return {str(k): float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in range(1, kmax + 1)}


def compare_responses(base_rows: Sequence[dict], sharp_rows: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Paired 95% bootstrap intervals of accuracy differences over the prompts both models answered, for the
    pairs of `table1` (sharpened sample vs base greedy, greedy vs greedy, sample vs sample)."""
    out = {}
    for name, kind, ref in TABLE1_PAIRS:
        a = per_prompt_accuracy([r for r in sharp_rows if r.get("kind") == kind])
        b = per_prompt_accuracy([r for r in base_rows if r.get("kind") == ref])
        common = sorted(set(a) & set(b))
        if common:
            out[name] = paired_bootstrap([a[p] for p in common], [b[p] for p in common])
    return out


def label_summary(gold: Mapping[str, Any], policies: Mapping[str, Sequence[dict]],
                  labels: Sequence[str] | None) -> dict[str, Any] | None:
    """Label controls (stats.label_controls) of the evaluated prompts, and for each policy (name -> response
    rows; several rows per prompt count as several answers): answer rate, predicted labels, recall per label,
    balanced accuracy. None when the task has no closed answer set."""
    if not labels:
        return None
    ids = sorted({str(r["prompt_id"]) for rows in policies.values() for r in rows})
    out = label_controls([gold[i] for i in ids], None, labels)
    out["policies"] = {name: policy_label_stats([gold[str(r["prompt_id"])] for r in rows],
                                                [r.get("answer") for r in rows], labels)
                       for name, rows in policies.items() if rows}
    base = out["majority_baseline"]["accuracy"]
    for st in out["policies"].values():  # against the evaluated prompts' baseline, not the rows' own
        st["beats_majority_baseline"] = base is not None and st["accuracy"] > base
    return out


def before_after(base_rows: Sequence[dict], sharp_rows: Sequence[dict], gold: Mapping[str, Any],
                 labels: Sequence[str] | None) -> dict[str, Any]:
    """The evaluation part of a training stage's summary: base and sharpened response statistics, the Table 1
    quantities with paired intervals, and (closed answer sets) the label controls of all four response kinds."""
    base, sharp = summarize_responses(base_rows), summarize_responses(sharp_rows)
    out = {"base": base, "sharpened": sharp, "table1": table1(base, sharp, compare_responses(base_rows, sharp_rows))}
    policies = {f"{who} {kind}": [r for r in rows if r.get("kind") == kind]
                for who, rows in (("base", base_rows), ("sharpened", sharp_rows)) for kind in ("greedy", "sample")}
    lab = label_summary(gold, policies, labels)
    return {**out, "labels": lab} if lab else out


def top_answer(rows: Sequence[dict]) -> dict[str, Any]:
    """The most common extracted answer over all prompts and its share: a sharpened model that gives one answer
    to everything (e.g. "True" on ProntoQA) scores the base rate of that answer, not reasoning."""
    counts = Counter(r.get("answer") for r in rows)
    answer, k = max(counts.items(), key=lambda kv: (kv[1], str(kv[0])))
    return {"top_answer": answer, "top_answer_fraction": k / len(rows)}


# (name, sharpened kind, base kind): "sample" is Table 1 itself; the others separate the effect of training from
# that of decoding.
TABLE1_PAIRS = (("sample", "sample", "greedy"), ("greedy", "greedy", "greedy"),
                ("sample_vs_base_sample", "sample", "sample"))


def table1(base: Mapping[str, Any], sharp: Mapping[str, Any],
           paired: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Accuracy lift % and likelihood lift of the sharpened responses over base greedy (Table 1); with `paired`
    (compare_responses), the paired interval of each accuracy difference and whether it excludes zero."""
    out: dict[str, Any] = {}
    for name, kind, ref in TABLE1_PAIRS:
        st, g = sharp.get(kind), base.get(ref)
        if not st or not g:
            continue
        lp, glp = st["mean_logprob_base"], g["mean_logprob_base"]
        out[name] = {"accuracy_lift_pct": lift_pct(st["accuracy"], g["accuracy"]),
                     "accuracy_diff": st["accuracy"] - g["accuracy"],
                     "likelihood_lift": None if lp is None or glp is None else lp - glp}
        if paired and name in paired:
            out[name]["diff_ci"] = paired[name]["diff_ci"]
            out[name]["excludes_zero"] = paired[name]["excludes_zero"]
    return out


def summarize_adaptive(samples: list[dict], greedy: list[dict] | None, n: int, rule: str,
                       gold: Mapping[str, Any] | None = None, labels: Sequence[str] | None = None) -> dict:
    """summary.json of a run sampled with adaptive N (each prompt's samples stop when `rule` holds, so pools differ
    in size and the selectors are not subsampled): the rule's pick (majority vote, or for 'appd' the logprob pick
    that App. D trains on) with its interval and paired difference with greedy, the samples and response tokens
    spent per prompt, greedy, and the label controls of both."""
    by_prompt = group_by_prompt(samples)
    if not by_prompt:
        raise SharpenError("no samples yet: finish (resume) the sampling stage first")
    ids = sorted(by_prompt)
    g = _greedy_stats(greedy, set(ids))
    g_rows = {str(r["prompt_id"]): r for r in greedy or []}
    picks, correct, used, tokens = [], [], [], []
    for pid in ids:
        pool = Pool.from_rows(sorted(by_prompt[pid], key=lambda r: int(r["index"])))
        pos = select("majority" if rule == "majority" else "logprob", pool)
        picks.append(pool.answer[pos])
        correct.append(float(pool.correct[pos]))
        used.append(len(pool))
        tokens.append(float(pool.num_tokens.sum()))
    g_correct = np.array([float(bool(g_rows[i]["correct"])) if i in g_rows else np.nan for i in ids])
    out = {
        "num_prompts": len(ids), "n": n, "ns": [], "seeds": 0, "greedy": g, "selectors": {},
        "adaptive": {"rule": rule, "accuracy": float(np.mean(correct)), "accuracy_ci": _ci(correct),
                     "vs_greedy": _paired(np.array(correct), g_correct) if g else None,
                     "samples_per_prompt": float(np.mean(used)), "response_tokens_per_prompt": float(np.mean(tokens)),
                     "sample_share": float(np.mean(used)) / n},
        "sample_accuracy": float(np.mean([bool(r["correct"]) for r in samples])),
        "truncated_fraction": float(np.mean([r.get("finish_reason") == "length" for r in samples])),
        "invalid_logprobs": int(sum(not math.isfinite(as_float(r["logprob"])) or as_float(r["logprob"]) == math.inf
                                    for r in samples if as_float(r["logprob"]) != -math.inf)),
    }
    if gold is not None and labels:
        out["labels"] = label_controls([gold[i] for i in ids], {
            "greedy": [g_rows[i].get("answer") if i in g_rows else None for i in ids], f"adaptive {rule}": picks},
            labels)
    return out
