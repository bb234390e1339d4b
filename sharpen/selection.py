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
            logprob=np.array([as_float(r["logprob"]) for r in rows], dtype=np.float64),
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


def as_float(x: Any) -> float:
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


@dataclass(frozen=True)
class Selector:
    """A registered selector: how it picks (a position in the pool) and one line for reports."""
    pick: Callable[[Pool, np.random.Generator | None], int]
    about: str
    uses_truth: bool = False


# The registry: summaries, reports and `sharpen sft --selector` iterate it in this order. Adding a selector is
# one entry here (and its test).
SELECTORS: dict[str, Selector] = {
    "logprob": Selector(lambda p, rng: select_logprob(p),
                        "argmax of the summed log-prob, the self-reward of Eq. 2 (the paper's BoN)"),
    "logprob_mean": Selector(lambda p, rng: select_logprob_mean(p),
                             "argmax of log-prob per token (length-normalized)"),
    "majority": Selector(lambda p, rng: select_majority(p), "most frequent extracted answer (self-consistency)"),
    "random": Selector(lambda p, rng: select_random(p, _need_rng(rng)),
                       "one random sample (naive temperature-1 sampling, pass@1)"),
    "oracle": Selector(lambda p, rng: select_oracle(p),
                       "correct if any of the N is (pass@N; uses the ground truth, a ceiling)", uses_truth=True),
}


def _need_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("the random selector needs an rng")
    return rng


def select(name: str, pool: PoolLike, rng: np.random.Generator | None = None) -> int:
    """Position in `pool` picked by the selector `name` (a key of SELECTORS); `random` needs `rng`."""
    if name not in SELECTORS:
        raise SharpenError(f"unknown selector {name!r}: choose one of {', '.join(SELECTORS)}")
    return SELECTORS[name].pick(_as_pool(pool), rng)
