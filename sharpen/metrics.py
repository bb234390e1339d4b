"""Statistics over stored rows (pure functions): the best-of-N summary, response summaries, lifts, pass@k.

Stages compute their summaries here while they run; reports only read what was stored.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import SharpenError
from .rows import complete_pools, finite_mean
from .selection import SELECTORS, Pool, as_float, select
from .stats import auroc, pass_at_k


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


def _complete_pools(samples: Sequence[Mapping[str, Any]], n: int) -> tuple[dict[str, Pool], int]:
    """Pools of the prompts that have all n samples (index 0..n-1; first row wins on duplicates)."""
    rows, incomplete = complete_pools(samples, n)
    return {pid: Pool.from_rows(rs) for pid, rs in rows.items()}, incomplete


def _greedy_stats(greedy: Sequence[Mapping[str, Any]] | None, prompt_ids: set[str]) -> dict[str, Any] | None:
    rows = {str(r["prompt_id"]): r for r in greedy or [] if str(r["prompt_id"]) in prompt_ids}
    if not rows:
        return None
    vals = list(rows.values())
    return {
        "accuracy": float(np.mean([bool(r["correct"]) for r in vals])),
        "mean_logprob": _mean([as_float(r["logprob"]) for r in vals]),
        "mean_num_tokens": float(np.mean([int(r["num_tokens"]) for r in vals])),
        "num_prompts": len(vals),
    }


def _selector_stats(pools: list[Pool], n_sub: int, seeds: int, greedy_acc: float | None) -> dict[str, dict]:
    """Accuracy and self-reward of each selector at N = n_sub, over `seeds` independent subsamplings."""
    acc: dict[str, list] = {s: [] for s in SELECTORS}
    lp = {s: [] for s in SELECTORS}
    ntok = {s: [] for s in SELECTORS}
    for seed in range(seeds):
        # One generator per (seed, N): results do not depend on which other N were evaluated.
        rng = np.random.default_rng([seed, n_sub])
        picked: dict[str, list[tuple[bool, float, int]]] = {s: [] for s in SELECTORS}
        for pool in pools:
            sub = pool.take(np.sort(rng.choice(len(pool), size=n_sub, replace=False)))
            for s in SELECTORS:
                pos = select(s, sub, rng)
                picked[s].append((bool(sub.correct[pos]), float(sub.logprob[pos]), int(sub.num_tokens[pos])))
        for s in SELECTORS:
            c, lps, nts = zip(*picked[s], strict=True)
            acc[s].append(float(np.mean(c)))
            lp[s].append(_mean(lps))
            ntok[s].append(float(np.mean(nts)))
    out = {}
    for s in SELECTORS:
        a = np.array(acc[s])
        out[s] = {
            "accuracy_mean": float(a.mean()),
            "accuracy_std": float(a.std(ddof=0)),  # spread over subsampling seeds, not over prompts
            "mean_logprob": _mean([x for x in lp[s] if x is not None]),
            "mean_num_tokens": float(np.mean(ntok[s])),
            "lift_pct_mean": lift_pct(float(a.mean()), greedy_acc),
            "accuracy_per_seed": [float(x) for x in a],
        }
    return out


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
              ns: list[int] | None = None) -> dict:
    """Every selector's statistics at each N, computed from the stored samples (the run's summary.json).

    Only prompts with all n samples (index 0..n-1) count; others are reported in `num_prompts_incomplete`.
    Accuracy at N is averaged over `seeds` subsamplings of N of the n samples without replacement, drawn
    independently per prompt from a numpy Generator seeded with (seed, N); `accuracy_std` is the population
    std (ddof=0) over those seeds. `ns` defaults to 1, 2, 4, ... < n plus n. Means of log-probs skip
    non-finite values. Greedy statistics use the counted prompts that have a greedy row.
    """
    if n < 1 or seeds < 1:
        raise SharpenError(f"summarize needs n >= 1 and seeds >= 1, got n={n} seeds={seeds}")
    ns = default_ns(n) if ns is None else sorted(set(int(k) for k in ns))
    if not ns or ns[0] < 1 or ns[-1] > n:
        raise SharpenError(f"every N in ns must lie in 1..{n}, got {ns}: pick sizes up to the samples per prompt")
    by_id, incomplete = _complete_pools(samples, n)
    if not by_id:
        raise SharpenError(f"no prompt has all {n} samples: finish (resume) the sampling stage first")
    ids = sorted(by_id)
    pools = [by_id[i] for i in ids]
    g = _greedy_stats(greedy, set(ids))
    g_acc = g["accuracy"] if g else None
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
        "selectors": _transpose({str(k): _selector_stats(pools, k, seeds, g_acc) for k in ns}),
        "pass_at_k": {str(k): float(np.mean([pass_at_k(n, int(p.correct.sum()), k) for p in pools]))
                      for k in ns},
        "sample_accuracy": float(np.mean(np.concatenate([p.correct for p in pools]))),
        "truncated_fraction": float(np.mean([f == "length" for f in finish])) if finish else 0.0,
        "invalid_logprobs": int((np.isnan(all_lp) | np.isposinf(all_lp)).sum()),
        "likelihood_vs_correctness": _likelihood_vs_correctness(pools),
    }


def _transpose(by_n: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """{N: {selector: stats}} -> {selector: {N: stats}}."""
    return {s: {k: by_n[k][s] for k in by_n} for s in SELECTORS}


def summarize_responses(rows: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per kind (greedy / sample): accuracy, mean log pi_base, mean log pi (policy), mean length, counts."""
    out = {}
    for kind in ("greedy", "sample"):
        rs = [r for r in rows if r.get("kind") == kind]
        if not rs:
            continue
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
        }
    return out


def top_answer(rows: Sequence[dict]) -> dict[str, Any]:
    """The most common extracted answer over all prompts and its share: a sharpened model that gives one answer
    to everything (e.g. "True" on ProntoQA) scores the base rate of that answer, not reasoning."""
    counts = Counter(r.get("answer") for r in rows)
    answer, k = max(counts.items(), key=lambda kv: (kv[1], str(kv[0])))
    return {"top_answer": answer, "top_answer_fraction": k / len(rows)}


def table1(base: Mapping[str, Any], sharp: Mapping[str, Any]) -> dict[str, Any]:
    """Accuracy lift % and likelihood lift of the sharpened responses over base greedy (Table 1)."""
    out: dict[str, Any] = {}
    # "sample" is Table 1 itself; the others separate the effect of training from that of decoding.
    for name, kind, ref in (("sample", "sample", "greedy"), ("greedy", "greedy", "greedy"),
                            ("sample_vs_base_sample", "sample", "sample")):
        st, g = sharp.get(kind), base.get(ref)
        if not st or not g:
            continue
        lp, glp = st["mean_logprob_base"], g["mean_logprob_base"]
        out[name] = {"accuracy_lift_pct": lift_pct(st["accuracy"], g["accuracy"]),
                     "accuracy_diff": st["accuracy"] - g["accuracy"],
                     "likelihood_lift": None if lp is None or glp is None else lp - glp}
    return out
