"""Selectors and statistics over a stored pool of samples (pure functions).

Best-of-N is scored offline: generation stores every sample once (samples.jsonl), and each selector of
Sec. 2 / App. A.1 of the paper picks one response per prompt from that pool. Smaller N are obtained by
subsampling the stored n samples without replacement, as in the paper's protocol. Besides the paper's five
selectors, the registry holds label-free confidence selectors from the literature, scored from per-sample
summaries recorded while sampling (sharpen.engine.confidence): self-certainty and its Borda vote (Kang et al. 2025,
arXiv 2502.18581), DeepConf's confidences and filtered confidence-weighted vote (Fu et al. 2025, arXiv
2508.15260) and confidence-informed self-consistency (Taubenfeld et al. 2025, arXiv 2502.06233).

Conventions (the papers are silent on these; our choices):
* Ties in a score are broken by the lowest sample `index`, so a selector's pick does not depend on the
  order of the rows it is given (and subsampling with N = n gives the full-pool pick).
* A log-prob of NaN or +inf comes from a broken model: such a sample is *invalid*, never chosen as the best,
  and counted in the summary's `invalid_logprobs`. -inf is legitimate (a response of probability ~0).
  When no sample of a pool has a valid log-prob, the lowest-index sample is taken.
* A confidence score is usable unless NaN (the row lacks it, or the response was empty) or +inf. Samples
  without a usable score are never picked by, nor vote in, that score's selectors; when no sample has one, the
  selector falls back to the `logprob` pick. A vote with no usable non-null answer falls back to the argmax of
  its score (then to `logprob`).
* A sample cut by online early stopping (finish_reason "early_stop") is not a finished response: no selector
  picks it and no vote counts it, unless every sample of the pool was cut (then the pool is taken as it is).
* Weighted votes sum the weights in sample-index order; answers whose totals agree to a relative 1e-9 are tied
  and ranked by their best sample's score, then by that sample's lowest index.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .errors import SharpenError

# The per-sample confidence fields of a row that selectors read (written by rows.sample_rows, computed by
# confidence.summarize_token_stats); NaN in a Pool where a row lacks one.
CONFIDENCE_FIELDS = ("self_certainty", "conf_lowest_group", "conf_bottom10", "conf_tail")
# The finish reason of a sample that online early stopping cut.
EARLY_STOP = "early_stop"
# Kang et al. 2025's Borda vote weights rank r (1 = most self-certain) of N by (N - r + 1)^p; p = 0.5 is their
# default (p = 0 is plain majority, large p approaches the self-certainty argmax).
BORDA_POWER = 0.5
# DeepConf offline keeps the top eta of the traces by confidence before voting; eta = 90% is DeepConf-high, the
# conservative setting (DeepConf-low keeps 10%, too few for our N).
DEEPCONF_ETA = 0.9
# CISC's softmax temperature is tuned per model and confidence method on held-out data; we have not tuned it.
# Self-certainties of one prompt's samples differ by tenths of a nat to a few nats, so T = 0.5 lets a clearly more
# certain sample count several times as much as a less certain one without one sample outvoting all others.
CISC_TEMPERATURE = 0.5


@dataclass(frozen=True)
class Pool:
    """One prompt's samples as parallel arrays (length m).

    The confidence arrays come from the rows' per-sample summaries (sharpen.engine.confidence); they are NaN where a row
    lacks the field (runs sampled before they were recorded), and `stopped` marks the samples that online early
    stopping cut (finish_reason "early_stop").
    """
    index: np.ndarray  # (m,) int, the sample's `index` in the run
    logprob: np.ndarray  # (m,) float, summed token log-probs (Eq. 2), ending token included
    num_tokens: np.ndarray  # (m,) int
    answer: tuple[str | None, ...]  # (m,) extracted answers, None = no answer
    correct: np.ndarray  # (m,) bool
    self_certainty: np.ndarray = None  # type: ignore[assignment]  # (m,) float, mean KL(U || p_t); NaN unknown
    conf_lowest_group: np.ndarray = None  # type: ignore[assignment]  # (m,) float, DeepConf lowest group conf.
    conf_bottom10: np.ndarray = None  # type: ignore[assignment]  # (m,) float, DeepConf bottom-10% group conf.
    conf_tail: np.ndarray = None  # type: ignore[assignment]  # (m,) float, DeepConf tail confidence
    stopped: np.ndarray = None  # type: ignore[assignment]  # (m,) bool, cut by online early stopping

    def __post_init__(self) -> None:
        # Pools built from the five original arrays get "unknown" confidences and no stopped sample.
        m = len(self.index)
        for name in CONFIDENCE_FIELDS:
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(m, np.nan))
        if self.stopped is None:
            object.__setattr__(self, "stopped", np.zeros(m, dtype=bool))

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> Pool:
        def conf(name: str) -> np.ndarray:
            return np.array([as_float(r.get(name)) for r in rows], dtype=np.float64)

        return cls(
            index=np.array([int(r["index"]) for r in rows], dtype=np.int64),
            logprob=np.array([as_float(r["logprob"]) for r in rows], dtype=np.float64),
            num_tokens=np.array([int(r["num_tokens"]) for r in rows], dtype=np.int64),
            answer=tuple(r.get("answer") for r in rows),
            correct=np.array([bool(r["correct"]) for r in rows], dtype=bool),
            **{name: conf(name) for name in CONFIDENCE_FIELDS},
            stopped=np.array([r.get("finish_reason") == EARLY_STOP for r in rows], dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.index)

    def take(self, positions: np.ndarray) -> Pool:
        """The sub-pool at `positions` (used for subsampling N of the n samples)."""
        positions = np.asarray(positions, dtype=np.int64)
        return Pool(**{f.name: (tuple(self.answer[p] for p in positions) if f.name == "answer"
                                else getattr(self, f.name)[positions]) for f in fields(self)})

    @property
    def valid(self) -> np.ndarray:
        """(m,) bool: log-prob usable as a score (not NaN, not +inf)."""
        return _usable(self.logprob)


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


def _usable(score: np.ndarray) -> np.ndarray:
    """(m,) bool: a score that may be compared (not NaN, not +inf)."""
    return ~(np.isnan(score) | np.isposinf(score))


def _best(pool: Pool, score: np.ndarray, mask: np.ndarray | None = None) -> int | None:
    """Position of the highest valid `score` among `mask`, ties to the lowest index.

    Falls back to the lowest-index sample in `mask` when none of them has a valid score; None if `mask` is empty.
    """
    mask = np.ones(len(pool), dtype=bool) if mask is None else mask
    if not mask.any():
        return None
    ok = mask & _usable(score)
    cand = np.flatnonzero(ok) if ok.any() else np.flatnonzero(mask)
    if ok.any():
        top = score[cand].max()
        cand = cand[score[cand] == top]
    return int(cand[np.argmin(pool.index[cand])])


def _skip_stopped(fn: Callable[..., int]) -> Callable[..., int]:
    """Run the selector on the samples that early stopping did not cut (all of them if it cut every one), and map
    its pick back to a position in the whole pool."""
    @functools.wraps(fn)
    def wrapped(pool: PoolLike, *args: Any, **kwargs: Any) -> int:
        p = _as_pool(pool)
        live = np.flatnonzero(~p.stopped)
        if live.size in (0, len(p)):
            return fn(p, *args, **kwargs)
        return int(live[fn(p.take(live), *args, **kwargs)])

    return wrapped


def reward_logprob(p: Pool) -> np.ndarray:
    """The self-reward of Eq. 2, log pi(y|x), of each sample."""
    return p.logprob


def reward_logprob_mean(p: Pool) -> np.ndarray:
    """Length-normalized self-reward, log pi(y|x) / |y| (App. A.1)."""
    with np.errstate(invalid="ignore"):  # NaN / inf stay invalid after the division
        return p.logprob / np.maximum(p.num_tokens, 1)


def vote_share(answers: Sequence[str | None], answer: str | None) -> float:
    """log of `answer`'s share of the votes among `answers` (the prompt's samples): the answer-level reward that
    amortizes majority vote (TTRL's majority reward, made graded). No answer, or an answer nobody else gave, gets
    half a vote, so the reward stays finite."""
    m = max(1, len(answers))
    c = sum(a == answer for a in answers) if answer is not None else 0
    return math.log(max(c, 0.5) / m)


def reward_vote(p: Pool) -> np.ndarray:
    """vote_share of each sample's answer within the pool."""
    return np.array([vote_share(p.answer, a) for a in p.answer], dtype=np.float64)


def reward_self_certainty(p: Pool) -> np.ndarray:
    """Self-certainty, the mean KL(U || p_t) over the response's tokens (Kang et al. 2025, arXiv 2502.18581)."""
    return p.self_certainty


# Label-free rewards of one sample within its prompt's pool: the scores behind the selectors of the same name,
# and the rewards `sharpen dpo` / `sharpen xpo` train on (--reward). One source for both.
REWARDS: dict[str, Callable[[Pool], np.ndarray]] = {
    "logprob": reward_logprob, "logprob_mean": reward_logprob_mean, "vote": reward_vote,
    "self_certainty": reward_self_certainty,
}


@_skip_stopped
def select_logprob(pool: PoolLike) -> int:
    """Position of the sample with the largest self-reward log pi(y|x) (Eq. 2): BoN with self-reward."""
    p = _as_pool(pool)
    return _best(p, reward_logprob(p))  # type: ignore[return-value]


@_skip_stopped
def select_logprob_mean(pool: PoolLike) -> int:
    """Position of the largest length-normalized log-prob, log pi(y|x) / |y| (App. A.1)."""
    p = _as_pool(pool)
    return _best(p, reward_logprob_mean(p))  # type: ignore[return-value]


@_skip_stopped
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


@_skip_stopped
def select_random(pool: PoolLike, rng: np.random.Generator) -> int:
    """A uniformly random sample: naive temperature-1 sampling, whose expected accuracy is pass@1."""
    return int(rng.integers(len(_as_pool(pool))))


@_skip_stopped
def select_oracle(pool: PoolLike) -> int:
    """Pass@N skyline (uses ground truth): the highest-log-prob correct sample, else the `logprob` pick."""
    p = _as_pool(pool)
    pos = _best(p, p.logprob, p.correct)
    return select_logprob(p) if pos is None else pos


# ---- confidence selectors --------------------------------------------------------------------------------

def _argmax(p: Pool, score: np.ndarray) -> int:
    """Position of the highest usable `score` (ties to the lowest index); none usable: the `logprob` pick."""
    ok = _usable(score)
    return _best(p, score, ok) if ok.any() else select_logprob(p)  # type: ignore[return-value]


def _ranked(p: Pool, score: np.ndarray) -> np.ndarray:
    """Positions of the samples with a usable `score`, best first (ties: lowest index first)."""
    ok = np.flatnonzero(_usable(score))
    return ok[np.lexsort((p.index[ok], -score[ok]))]


def _vote(p: Pool, weight: np.ndarray, voters: np.ndarray, score: np.ndarray) -> int | None:
    """Weighted vote of the `voters` (bool mask) that carry a non-null answer: the answer with the largest summed
    `weight` wins, and the pick is its voter with the highest `score` (all voters have a usable score). Weights are
    summed in sample-index order (the total does not depend on row order); answers within a relative 1e-9 of the
    top total are tied and ranked by their best voter's score, then that voter's lowest index. None: no voter
    carries an answer."""
    totals: dict[str, float] = {}
    for i in np.argsort(p.index, kind="stable"):
        a = p.answer[i]
        if voters[i] and a is not None:
            totals[a] = totals.get(a, 0.0) + float(weight[i])
    if not totals:
        return None
    top = max(totals.values())
    tol = 1e-9 * max(1.0, abs(top))
    answers = np.array(p.answer, dtype=object)
    best_of = [_best(p, score, voters & (answers == a)) for a, t in totals.items() if t >= top - tol]
    return max(best_of, key=lambda pos: (score[pos], -int(p.index[pos])))  # type: ignore[arg-type,return-value]


@_skip_stopped
def select_self_certainty(pool: PoolLike) -> int:
    """Position of the most self-certain sample: the largest mean KL(U || p_t) over its tokens (Kang et al. 2025,
    "Scalable Best-of-N Selection for Large Language Models via Self-Certainty", arXiv 2502.18581)."""
    p = _as_pool(pool)
    return _argmax(p, reward_self_certainty(p))


@_skip_stopped
def select_self_certainty_borda(pool: PoolLike, power: float = BORDA_POWER) -> int:
    """Borda vote with self-certainty (Kang et al. 2025, arXiv 2502.18581, Sec. 3.3): the N samples with a usable
    self-certainty are ranked by it (r = 1 the most self-certain; ties by lowest index), each votes for its answer
    with weight (N - r + 1)^power (samples without an answer take a rank but do not vote), and the pick is the
    winning answer's most self-certain sample. power = 0 is plain majority voting."""
    p = _as_pool(pool)
    sc = p.self_certainty
    ranked = _ranked(p, sc)
    weight = np.zeros(len(p))
    weight[ranked] = (ranked.size - np.arange(ranked.size, dtype=np.float64)) ** power
    voters = np.zeros(len(p), dtype=bool)
    voters[ranked] = True
    pos = _vote(p, weight, voters, sc)
    return _argmax(p, sc) if pos is None else pos


@_skip_stopped
def select_deepconf_lowest_group(pool: PoolLike) -> int:
    """Position of the largest lowest-group confidence: the least confident stretch of `window` tokens is the
    most confident (Fu et al. 2025, "Deep Think with Confidence", arXiv 2508.15260)."""
    p = _as_pool(pool)
    return _argmax(p, p.conf_lowest_group)


@_skip_stopped
def select_deepconf_bottom10(pool: PoolLike) -> int:
    """Position of the largest bottom-10% group confidence (Fu et al. 2025, DeepConf, arXiv 2508.15260)."""
    p = _as_pool(pool)
    return _argmax(p, p.conf_bottom10)


@_skip_stopped
def select_deepconf_tail(pool: PoolLike) -> int:
    """Position of the largest tail confidence, the mean token confidence of the response's last tokens (Fu et
    al. 2025, DeepConf, arXiv 2508.15260)."""
    p = _as_pool(pool)
    return _argmax(p, p.conf_tail)


@_skip_stopped
def select_deepconf_vote(pool: PoolLike, eta: float = DEEPCONF_ETA) -> int:
    """DeepConf offline (Fu et al. 2025, arXiv 2508.15260, Sec. 3.2): keep the top `eta` of the samples by
    lowest-group confidence (floor(eta * N), at least one; ties by lowest index), take a confidence-weighted
    majority vote over their answers and pick the winning answer's most confident sample.

    The weight is the lowest-group confidence itself, as in DeepConf: a true token confidence is at least log k > 0
    (the k largest probabilities sum to at most 1), so the weights are positive. Should a kept confidence be <= 0
    (rows from another recorder), every kept weight is shifted by 1 - min (the least confident kept sample weighs
    1), which keeps the order of the weights and makes them positive.
    """
    p = _as_pool(pool)
    c = p.conf_lowest_group
    ranked = _ranked(p, c)
    keep = ranked[:max(1, int(math.floor(eta * ranked.size + 1e-9)))]
    voters = np.zeros(len(p), dtype=bool)
    voters[keep] = True
    pos = None
    if keep.size:
        low = float(c[keep].min())
        pos = _vote(p, c if low > 0 else c - low + 1.0, voters, c)
    return _argmax(p, c) if pos is None else pos


@_skip_stopped
def select_cisc_vote(pool: PoolLike, temperature: float = CISC_TEMPERATURE) -> int:
    """Confidence-informed self-consistency (Taubenfeld et al. 2025, "Confidence Improves Self-Consistency in
    LLMs", arXiv 2502.06233) with self-certainty as the confidence: each sample with a usable self-certainty votes
    with weight softmax(self_certainty / temperature) over those samples; the pick is the winning answer's most
    self-certain sample. temperature -> inf is plain majority, -> 0 the self-certainty argmax."""
    p = _as_pool(pool)
    sc = p.self_certainty
    voters = _usable(sc)
    weight = np.zeros(len(p))
    if voters.any():
        z = sc[voters]
        top = z.max()
        w = np.ones(z.size) if np.isneginf(top) else np.exp((z - top) / temperature)
        weight[voters] = w / w.sum()
    pos = _vote(p, weight, voters, sc)
    return _argmax(p, sc) if pos is None else pos


@dataclass(frozen=True)
class Selector:
    """A registered selector: how it picks (a position in the pool), one line for reports, and the row fields it
    needs (a summary computes it only when every sample row has them)."""
    pick: Callable[[Pool, np.random.Generator | None], int]
    about: str
    uses_truth: bool = False
    needs: tuple[str, ...] = ()


# The registry: summaries, reports and `sharpen sft --selector` iterate it in this order (the paper's five first,
# then the confidence selectors). Adding a selector is one entry here (and its test).
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
    "self_certainty": Selector(lambda p, rng: select_self_certainty(p),
                               "argmax of self-certainty, mean KL(uniform || p) per token (Kang et al. 2025)",
                               needs=("self_certainty",)),
    "self_certainty_borda": Selector(lambda p, rng: select_self_certainty_borda(p),
                                     f"Borda vote, self-certainty rank weights (N-r+1)^{BORDA_POWER:g} "
                                     "(Kang et al. 2025)", needs=("self_certainty",)),
    "deepconf_lowest_group": Selector(lambda p, rng: select_deepconf_lowest_group(p),
                                      "argmax of the lowest sliding-window token confidence (DeepConf)",
                                      needs=("conf_lowest_group",)),
    "deepconf_bottom10": Selector(lambda p, rng: select_deepconf_bottom10(p),
                                  "argmax of the mean of the lowest 10% window confidences (DeepConf)",
                                  needs=("conf_bottom10",)),
    "deepconf_tail": Selector(lambda p, rng: select_deepconf_tail(p),
                              "argmax of the token confidence of the response's tail (DeepConf)",
                              needs=("conf_tail",)),
    "deepconf_vote": Selector(lambda p, rng: select_deepconf_vote(p),
                              f"top {DEEPCONF_ETA:.0%} by lowest-group confidence, confidence-weighted vote "
                              "(DeepConf offline)", needs=("conf_lowest_group",)),
    "cisc_vote": Selector(lambda p, rng: select_cisc_vote(p),
                          f"vote weighted by softmax(self-certainty / {CISC_TEMPERATURE:g}) (CISC, Taubenfeld et al. "
                          "2025)", needs=("self_certainty",)),
}


def rewards_of(name: str, rows: Sequence[Mapping[str, Any]], voters: Sequence[str | None] | None = None
               ) -> np.ndarray:
    """REWARDS[name] of each row (sample-row fields: logprob, num_tokens, answer, self_certainty); `vote` counts
    the answers of `voters` (DPO / XPO: the prompt's base samples) instead of the rows' own."""
    if name == "vote" and voters is not None:
        return np.array([vote_share(voters, r.get("answer")) for r in rows], dtype=np.float64)
    return np.array(REWARDS[name](Pool.from_rows(rows)), dtype=np.float64)


# The selector that maximizes each reward over a prompt's pool: an SFT target chosen "by reward" is that
# selector's pick (vote: majority, whose pick carries the answer with the largest vote share).
REWARD_SELECTORS = {"logprob": "logprob", "logprob_mean": "logprob_mean", "vote": "majority",
                    "self_certainty": "self_certainty"}


def reward_gold(p: Pool) -> np.ndarray:
    """1 for a correct sample, else 0: the ground-truth reward (uses labels; an upper-bound control, not
    label-free)."""
    return p.correct.astype(np.float64)


def reward_random(p: Pool, rng: np.random.Generator) -> np.ndarray:
    """A fair coin per sample, whatever it says: the spurious-reward control (Shao et al. 2025, "Spurious
    Rewards: Rethinking Training Signals in RLVR")."""
    return rng.integers(0, 2, size=len(p)).astype(np.float64)


def _need_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("the random selector needs an rng")
    return rng


def select(name: str, pool: PoolLike, rng: np.random.Generator | None = None) -> int:
    """Position in `pool` picked by the selector `name` (a key of SELECTORS); `random` needs `rng`."""
    if name not in SELECTORS:
        raise SharpenError(f"unknown selector {name!r}: choose one of {', '.join(SELECTORS)}")
    return SELECTORS[name].pick(_as_pool(pool), rng)


def majority_decided(answers: Sequence[str | None], n: int) -> bool:
    """Adaptive N for majority vote: the leading answer among `answers` (the first samples of a prompt) cannot be
    overtaken by the n - len(answers) samples not drawn yet (its count exceeds the runner-up's plus them)."""
    top = Counter(a for a in answers if a is not None).most_common(2)
    lead, second = (top[0][1] if top else 0), (top[1][1] if len(top) > 1 else 0)
    return lead > second + (n - len(answers)) or len(answers) >= n


def appd_decided(logprobs: Sequence[float], delta: float) -> bool:
    """The adaptive stopping rule of App. D for SFT-sharpening: stop once 1 / max_j pi(y_j|x) <= k / mu, with k the
    samples drawn and mu = ln(2 / delta), i.e. once k * max_j pi(y_j|x) >= mu."""
    best = max((lp for lp in logprobs if lp is not None and math.isfinite(lp)), default=-math.inf)
    return len(logprobs) * math.exp(best) >= math.log(2 / delta)


def adaptive_majority(pool: PoolLike) -> tuple[int, int]:
    """Adaptive N for majority vote: read the samples in index order and stop at the first k where the leading
    answer cannot be overtaken by the samples left (its count exceeds the runner-up's plus the m - k unread ones);
    returns (the majority pick among the first k, k). The leader then wins the full pool too, strictly, so the
    answer never differs from `majority` over all m; since sample i is the same whenever it is drawn
    (counter-based streams), k is what sampling one at a time and stopping would spend.
    """
    p = _as_pool(pool)
    order = np.argsort(p.index, kind="stable")
    m = len(order)
    votes = [p.answer[pos] if not p.stopped[pos] and p.valid[pos] else None for pos in order]
    k = next(k for k in range(1, m + 1) if majority_decided(votes[:k], m))
    first = np.sort(order[:k])
    return int(first[select_majority(p.take(first))]), k
