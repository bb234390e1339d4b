"""Selectors and statistics over a stored pool of samples (pure functions).

Best-of-N is scored offline: generation stores every sample once (samples.jsonl), and each selector of
Sec. 2 / App. A.1 of the paper picks one response per prompt from that pool. Smaller N are obtained by
subsampling the stored n samples without replacement, as in the paper's protocol.

Conventions (the paper is silent on these; our choices):
* Ties in a score are broken by the lowest sample `index`, so a selector's pick does not depend on the
  order of the rows it is given (and subsampling with N = n gives the full-pool pick).
* A log-prob of NaN or +inf comes from a broken model: such a sample is *invalid*, never chosen as the best,
  and counted in the summary's `invalid_logprobs`. -inf is legitimate (a response of probability ~0).
  When no sample of a pool has a valid log-prob, the lowest-index sample is taken.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SharpenError

SELECTORS = ("logprob", "logprob_mean", "majority", "random", "oracle")


@dataclass(frozen=True)
class Pool:
    """One prompt's samples as parallel arrays (length m)."""

    index: np.ndarray  # (m,) int, the sample's `index` in the run
    logprob: np.ndarray  # (m,) float, summed token log-probs (Eq. 2), ending token included
    num_tokens: np.ndarray  # (m,) int
    answer: tuple[str | None, ...]  # (m,) extracted answers, None = no answer
    correct: np.ndarray  # (m,) bool

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> Pool:
        return cls(
            index=np.array([int(r["index"]) for r in rows], dtype=np.int64),
            logprob=np.array([_float(r["logprob"]) for r in rows], dtype=np.float64),
            num_tokens=np.array([int(r["num_tokens"]) for r in rows], dtype=np.int64),
            answer=tuple(r.get("answer") for r in rows),
            correct=np.array([bool(r["correct"]) for r in rows], dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.index)

    def take(self, positions: np.ndarray) -> Pool:
        """The sub-pool at `positions` (used for subsampling N of the n samples)."""
        return Pool(self.index[positions], self.logprob[positions], self.num_tokens[positions],
                    tuple(self.answer[p] for p in positions), self.correct[positions])

    @property
    def valid(self) -> np.ndarray:
        """(m,) bool: log-prob usable as a score (not NaN, not +inf)."""
        return ~(np.isnan(self.logprob) | np.isposinf(self.logprob))


PoolLike = Pool | Sequence[Mapping[str, Any]]


def _float(x: Any) -> float:
    # JSON has no NaN/inf literals in strict mode; writers may store them as null or as strings.
    return math.nan if x is None else float(x)


def _as_pool(pool: PoolLike) -> Pool:
    if isinstance(pool, Pool):
        return pool
    if len(pool) == 0:
        raise ValueError("cannot select from an empty pool")
    return Pool.from_rows(pool)


def _best(pool: Pool, score: np.ndarray, mask: np.ndarray | None = None) -> int | None:
    """Position of the highest valid `score` among `mask`, ties to the lowest index.

    Falls back to the lowest-index sample in `mask` when none of them has a valid score; None if `mask` is empty.
    """
    mask = np.ones(len(pool), dtype=bool) if mask is None else mask
    if not mask.any():
        return None
    ok = mask & ~(np.isnan(score) | np.isposinf(score))
    cand = np.flatnonzero(ok) if ok.any() else np.flatnonzero(mask)
    if ok.any():
        top = score[cand].max()
        cand = cand[score[cand] == top]
    return int(cand[np.argmin(pool.index[cand])])


def select_logprob(pool: PoolLike) -> int:
    """Position of the sample with the largest self-reward log pi(y|x) (Eq. 2): BoN with self-reward."""
    p = _as_pool(pool)
    return _best(p, p.logprob)  # type: ignore[return-value]


def select_logprob_mean(pool: PoolLike) -> int:
    """Position of the largest length-normalized log-prob, log pi(y|x) / |y| (App. A.1)."""
    p = _as_pool(pool)
    with np.errstate(invalid="ignore"):  # NaN / inf stay invalid after the division
        score = p.logprob / np.maximum(p.num_tokens, 1)
    return _best(p, score)  # type: ignore[return-value]


def select_majority(pool: PoolLike) -> int:
    """Self-consistency: a sample carrying the most frequent non-null answer.

    Every sample votes, whatever its log-prob, but an answer carried only by invalid samples cannot win while
    the pool has a valid one (invalid samples are never picked). Tied answers are ranked by their best sample's
    log-prob (then by that sample's lowest index); the pick is the answer's highest-log-prob sample. No
    eligible answer: `logprob`.
    """
    p = _as_pool(pool)
    any_valid = bool(p.valid.any())
    eligible = {a for a, ok in zip(p.answer, p.valid, strict=True) if a is not None and (ok or not any_valid)}
    counts = Counter(a for a in p.answer if a in eligible)
    if not counts:
        return select_logprob(p)
    top = max(counts.values())
    answers = np.array(p.answer, dtype=object)
    best_of = {a: _best(p, p.logprob, answers == a) for a, c in counts.items() if c == top}
    # Rank tied answers by their best sample's (valid log-prob, log-prob, -index): NaN sorts last.
    def rank(a: str) -> tuple[bool, float, int]:
        pos = best_of[a]
        return bool(p.valid[pos]), (p.logprob[pos] if p.valid[pos] else -math.inf), -int(p.index[pos])

    return best_of[max(best_of, key=rank)]  # type: ignore[return-value]


def select_random(pool: PoolLike, rng: np.random.Generator) -> int:
    """A uniformly random sample: naive temperature-1 sampling, whose expected accuracy is pass@1."""
    return int(rng.integers(len(_as_pool(pool))))


def select_oracle(pool: PoolLike) -> int:
    """Pass@N skyline (uses ground truth): the highest-log-prob correct sample, else the `logprob` pick."""
    p = _as_pool(pool)
    pos = _best(p, p.logprob, p.correct)
    return select_logprob(p) if pos is None else pos


_DETERMINISTIC: dict[str, Callable[[Pool], int]] = {
    "logprob": select_logprob, "logprob_mean": select_logprob_mean,
    "majority": select_majority, "oracle": select_oracle,
}


def select(name: str, pool: PoolLike, rng: np.random.Generator | None = None) -> int:
    """Position in `pool` picked by the selector `name` (one of SELECTORS); `random` needs `rng`."""
    if name == "random":
        if rng is None:
            raise ValueError("the random selector needs an rng")
        return select_random(pool, rng)
    if name not in _DETERMINISTIC:
        raise SharpenError(f"unknown selector {name!r}: choose one of {', '.join(SELECTORS)}")
    return _DETERMINISTIC[name](_as_pool(pool))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), in the stable product form."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


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


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties count 1/2 (Mann-Whitney); None without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    npos, nneg = int(labels.sum()), int((~labels).sum())
    if npos == 0 or nneg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_s = scores[order]
    # Average ranks over ties (1-based), so tied scores contribute 1/2.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _mean(x: Sequence[float] | np.ndarray) -> float | None:
    """Mean of the finite values (invalid and -inf log-probs would swamp a mean); None when there are none."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def _complete_pools(samples: Sequence[Mapping[str, Any]], n: int) -> tuple[dict[str, Pool], int]:
    """Pools of the prompts that have all n samples (index 0..n-1; first row wins on duplicates)."""
    by_prompt: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in samples:
        idx = int(row["index"])
        if 0 <= idx < n:
            by_prompt.setdefault(str(row["prompt_id"]), {}).setdefault(idx, row)
    pools = {pid: Pool.from_rows([rows[i] for i in range(n)])
             for pid, rows in by_prompt.items() if len(rows) == n}
    return pools, len(by_prompt) - len(pools)


def _greedy_stats(greedy: Sequence[Mapping[str, Any]] | None, prompt_ids: set[str]) -> dict[str, Any] | None:
    rows = {str(r["prompt_id"]): r for r in greedy or [] if str(r["prompt_id"]) in prompt_ids}
    if not rows:
        return None
    vals = list(rows.values())
    return {
        "accuracy": float(np.mean([bool(r["correct"]) for r in vals])),
        "mean_logprob": _mean([_float(r["logprob"]) for r in vals]),
        "mean_num_tokens": float(np.mean([int(r["num_tokens"]) for r in vals])),
        "num_prompts": len(vals),
    }


def _selector_stats(pools: list[Pool], n_sub: int, seeds: int, greedy_acc: float | None) -> dict[str, dict]:
    """Accuracy and self-reward of each selector at N = n_sub, over `seeds` independent subsamplings."""
    acc = {s: [] for s in SELECTORS}
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


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.1f}%" if signed else f"{100 * x:.1f}"


def format_table(summary: Mapping[str, Any], n: int | None = None) -> str:
    """Plain-text table of the selectors at N (default the largest): accuracy mean ± std (%), lift over greedy."""
    ns = [int(k) for k in summary["ns"]]
    n = ns[-1] if n is None else int(n)
    if n not in ns:
        raise SharpenError(f"N={n} was not evaluated: choose one of {ns}")
    head = f"{'selector':<14}{'accuracy %':>16}{'lift vs greedy':>16}{'mean logprob':>14}{'tokens':>9}"
    lines = [f"N = {n}   prompts = {summary['num_prompts']}   seeds = {summary['seeds']}", head,
             "-" * len(head)]

    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    g = summary.get("greedy")
    if g:
        lines.append(f"{'greedy':<14}{_pct(g['accuracy']):>16}{'':>16}{num(g['mean_logprob'], '.2f'):>14}"
                     f"{g['mean_num_tokens']:>9.1f}")
    for name, by_n in summary["selectors"].items():
        st = by_n[str(n)]
        acc = f"{_pct(st['accuracy_mean'])} ± {_pct(st['accuracy_std'])}"
        lines.append(f"{name:<14}{acc:>16}{_pct(st['lift_pct_mean'], signed=True):>16}"
                     f"{num(st['mean_logprob'], '.2f'):>14}{st['mean_num_tokens']:>9.1f}")
    return "\n".join(lines)
