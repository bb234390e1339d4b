"""Confidence statistics against hand-computed distributions, the confidence selectors on hand-built pools, and
the summary computing them only where the rows carry their fields (plus the token budgets)."""

import json
import math

import numpy as np
import pytest

from sharpen.engine.confidence import (
    DEFAULT_TAIL,
    DEFAULT_TOP_K,
    DEFAULT_WINDOW,
    KEYS,
    group_confidences,
    summarize_token_stats,
)
from sharpen.metrics import summarize
from sharpen.selection import (
    CONFIDENCE_FIELDS,
    SELECTORS,
    Pool,
    select,
    select_cisc_vote,
    select_deepconf_bottom10,
    select_deepconf_lowest_group,
    select_deepconf_tail,
    select_deepconf_vote,
    select_logprob,
    select_majority,
    select_oracle,
    select_random,
    select_self_certainty,
    select_self_certainty_borda,
)

PAPER = ["logprob", "logprob_mean", "majority", "random", "oracle"]
NEW = ["self_certainty", "self_certainty_borda", "deepconf_lowest_group", "deepconf_bottom10", "deepconf_tail",
       "deepconf_vote", "cisc_vote"]


# ---- per-token statistics --------------------------------------------------------------------------------

def token_stats(logprobs: np.ndarray, k: int = DEFAULT_TOP_K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference per-token statistics of log-distributions `logprobs` (T, V) (natural log, rows normalized):
    entropy H(p_t), self-certainty term KL(U || p_t) (Kang et al. 2025, arXiv 2502.18581) and DeepConf token
    confidence C_t = -(1/k) sum_{j<=k} log p_t(top_j) (Fu et al. 2025, arXiv 2508.15260; k = min(k, V)).

    A probability of exactly 0 makes KL(U || p) and possibly C_t +inf (as they are mathematically); the entropy
    treats 0 log 0 as 0.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] == 0:
        raise ValueError(f"token_stats needs a (T, V) array of log-probs with V >= 1, got shape {lp.shape}")
    v = lp.shape[1]
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        plogp = np.where(p > 0, p * lp, 0.0)
    entropy = -plogp.sum(axis=1)
    kl_u = -math.log(v) - lp.mean(axis=1)
    kk = min(k, v)
    top = -np.sort(-lp, axis=1)[:, :kk]
    conf = -top.mean(axis=1)
    return entropy, kl_u, conf


def test_uniform_distribution_has_zero_self_certainty_and_maximal_entropy():
    v = 50
    h, kl, c = token_stats(np.full((2, v), -math.log(v)))
    assert h == pytest.approx([math.log(v)] * 2)
    assert kl == pytest.approx([0.0, 0.0], abs=1e-12)
    assert c == pytest.approx([math.log(v)] * 2)  # every one of the top 20 has log-prob -log V


def test_hand_computed_distribution():
    p = np.array([[0.5, 0.25, 0.25]])
    h, kl, c = token_stats(np.log(p), k=2)
    assert h[0] == pytest.approx(1.5 * math.log(2))
    assert kl[0] == pytest.approx(-math.log(3) + (math.log(2) + 2 * math.log(4)) / 3)  # -log V - mean log p
    assert c[0] == pytest.approx((math.log(2) + math.log(4)) / 2)  # top 2: 1/2 and 1/4
    _, _, c_all = token_stats(np.log(p))  # k = 20 > V: all three tokens
    assert c_all[0] == pytest.approx((math.log(2) + 2 * math.log(4)) / 3)


def test_peaked_distribution_has_large_self_certainty_and_confidence():
    eps, v = 1e-6, 4
    p = np.array([[1 - 3 * eps, eps, eps, eps]])
    h, kl, c = token_stats(np.log(p), k=2)
    assert kl[0] == pytest.approx(-math.log(v) - (math.log(1 - 3 * eps) + 3 * math.log(eps)) / v)
    assert kl[0] > 8.9 and h[0] < 1e-4
    assert c[0] == pytest.approx(-(math.log(1 - 3 * eps) + math.log(eps)) / 2)
    # Random distributions: KL(U || p) >= 0, 0 <= H <= log V, C >= log k (the top k sum to at most 1).
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 100)) * rng.uniform(0.1, 10, size=(64, 1))
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    h, kl, c = token_stats(lp)
    assert np.all(kl >= -1e-12) and np.all(h >= -1e-12) and np.all(h <= math.log(100) + 1e-12)
    assert np.all(c >= math.log(20) - 1e-12)


# ---- per-sample summaries --------------------------------------------------------------------------------

# Window 3 over 22 finite confidences (a NaN and an inf in the middle are dropped): 20 groups, so the bottom 10%
# is the lowest 2 groups.
CONF = [4, 4, 1, 4, 4, 4, math.nan, 4, 4, 4, 4, math.inf, 4, 4, 4, 4, 4, 4, 2, 2, 2, 4, 4, 6]


def test_group_confidences_by_hand_and_against_a_loop():
    g = group_confidences(CONF, 3)
    assert g.size == 20
    assert g[:3] == pytest.approx([3, 3, 3])  # windows over the 1
    assert g[14:] == pytest.approx([10 / 3, 8 / 3, 2, 8 / 3, 10 / 3, 14 / 3])
    assert group_confidences([1.0, 2.0], 3) == pytest.approx([1.5])  # shorter than the window: one group
    assert group_confidences([], 3).size == 0
    x = np.random.default_rng(1).normal(size=200)
    assert group_confidences(x, 7) == pytest.approx([x[i:i + 7].mean() for i in range(194)])
    with pytest.raises(ValueError):
        group_confidences(x, 0)


def test_summarize_token_stats_by_hand():
    entropy = [0.5, 1.5, math.nan]
    kl_u = [2.0, 4.0, 6.0, -math.inf]
    s = summarize_token_stats(entropy, kl_u, CONF, window=3, tail=3)
    assert set(s) == set(KEYS)
    assert s["entropy_mean"] == pytest.approx(1.0)
    assert s["self_certainty"] == pytest.approx(4.0)
    assert s["conf_mean"] == pytest.approx(81 / 22)
    assert s["conf_lowest_group"] == pytest.approx(2.0)  # the window 2, 2, 2
    assert s["conf_bottom10"] == pytest.approx((2 + 8 / 3) / 2)  # the lowest 2 of 20 groups
    assert s["conf_tail"] == pytest.approx(14 / 3)  # 4, 4, 6
    assert all(type(v) is float for v in s.values())
    short = summarize_token_stats([1.0], [2.0], [1.0, 2.0], window=3, tail=3)
    assert short["conf_lowest_group"] == short["conf_bottom10"] == short["conf_tail"] == pytest.approx(1.5)
    # Fewer than 10 groups: the bottom 10% is the single lowest group.
    few = summarize_token_stats([], [], [3, 1, 2, 5], window=2, tail=1)
    assert few["conf_lowest_group"] == few["conf_bottom10"] == pytest.approx(1.5)
    assert few["conf_tail"] == 5.0


def test_summarize_token_stats_empty_response_and_defaults():
    assert summarize_token_stats([], [], []) == dict.fromkeys(KEYS)
    assert summarize_token_stats([math.nan], [math.inf], [math.nan]) == dict.fromkeys(KEYS)
    assert DEFAULT_WINDOW == 32 and DEFAULT_TAIL == 32
    c = np.arange(100, dtype=float)
    s = summarize_token_stats(c, c, c)
    assert s["conf_lowest_group"] == pytest.approx(c[:32].mean())
    assert s["conf_tail"] == pytest.approx(c[-32:].mean())
    json.dumps(s, allow_nan=False)


# ---- selectors ------------------------------------------------------------------------------------------

def row(index, logprob=-1.0, answer=None, correct=False, sc=None, lg=None, b10=None, tail=None,
        finish_reason="eos", prompt_id="p0", num_tokens=10, fields=CONFIDENCE_FIELDS):
    r = {"prompt_id": prompt_id, "index": index, "text": "", "token_ids": [], "logprob": logprob,
         "num_tokens": num_tokens, "finish_reason": finish_reason, "answer": answer, "correct": correct}
    vals = {"self_certainty": sc, "conf_lowest_group": lg, "conf_bottom10": b10, "conf_tail": tail}
    r.update({f: vals[f] for f in fields})
    return r


def test_registry_order_and_needs():
    assert list(SELECTORS) == PAPER + NEW
    assert all(SELECTORS[s].needs == () for s in PAPER)
    assert SELECTORS["self_certainty"].needs == ("self_certainty",)
    assert SELECTORS["cisc_vote"].needs == SELECTORS["self_certainty_borda"].needs == ("self_certainty",)
    assert SELECTORS["deepconf_vote"].needs == SELECTORS["deepconf_lowest_group"].needs == ("conf_lowest_group",)
    assert SELECTORS["deepconf_bottom10"].needs == ("conf_bottom10",)
    assert SELECTORS["deepconf_tail"].needs == ("conf_tail",)


def test_pool_reads_fields_and_take_keeps_them():
    rows = [row(0, sc=1.0, lg=2.0, b10=3.0, tail=4.0), row(1, finish_reason="early_stop"),
            row(2, fields=())]
    p = Pool.from_rows(rows)
    assert p.self_certainty[0] == 1.0 and p.conf_tail[0] == 4.0
    assert np.isnan(p.self_certainty[1]) and np.isnan(p.conf_bottom10[2])  # None and missing: NaN
    assert list(p.stopped) == [False, True, False]
    sub = p.take(np.array([2, 0]))
    assert list(sub.index) == [2, 0] and sub.conf_lowest_group[1] == 2.0 and not sub.stopped.any()
    # A pool of the five original arrays: unknown confidences, nothing stopped.
    old = Pool(p.index, p.logprob, p.num_tokens, p.answer, p.correct)
    assert np.isnan(old.conf_tail).all() and not old.stopped.any() and len(old.take(np.array([1]))) == 1


def test_argmax_selectors_pick_their_own_score():
    pool = [row(0, -1.0, sc=1.0, lg=5.0, b10=1.0, tail=1.0),
            row(1, -2.0, sc=3.0, lg=1.0, b10=1.0, tail=2.0),
            row(2, -3.0, sc=2.0, lg=2.0, b10=6.0, tail=1.0),
            row(3, -4.0, sc=None, lg=None, b10=None, tail=7.0)]
    assert select_logprob(pool) == 0
    assert select_self_certainty(pool) == 1
    assert select_deepconf_lowest_group(pool) == 0
    assert select_deepconf_bottom10(pool) == 2
    assert select_deepconf_tail(pool) == 3
    assert [select(s, pool) for s in ("self_certainty", "deepconf_bottom10", "deepconf_tail")] == [1, 2, 3]


def test_argmax_ties_go_to_the_lowest_index_and_nan_is_never_best():
    pool = [row(5, sc=2.0), row(2, sc=2.0), row(7, sc=math.nan), row(1, sc=1.0)]
    assert select_self_certainty(pool) == 1  # index 2 beats index 5
    assert select_self_certainty(list(reversed(pool))) == 2  # still index 2
    pool = [row(0, sc=math.inf), row(1, sc=-3.0)]
    assert select_self_certainty(pool) == 1  # +inf is unusable, like a +inf log-prob


def test_missing_fields_fall_back_to_logprob():
    pool = [row(i, lp, answer=a, fields=()) for i, (lp, a) in enumerate([(-3.0, "x"), (-1.0, "y"), (-2.0, "x")])]
    for name in NEW:
        assert select(name, pool) == select_logprob(pool) == 1, name
    all_none = [row(i, lp, answer="x") for i, lp in enumerate([-3.0, -1.0])]  # fields present but None
    for name in NEW:
        assert select(name, all_none) == 1, name


def test_votes_without_answers_fall_back_to_their_argmax():
    pool = [row(0, -1.0, sc=1.0, lg=1.0), row(1, -5.0, sc=3.0, lg=4.0), row(2, -2.0, sc=2.0, lg=2.0)]
    assert select_logprob(pool) == 0
    assert select_self_certainty_borda(pool) == select_cisc_vote(pool) == 1
    assert select_deepconf_vote(pool) == 1
    # Answers only on samples without a usable score: no eligible answer either.
    pool = [row(0, -1.0, answer="a"), row(1, -5.0, sc=3.0, lg=4.0), row(2, -2.0, sc=2.0, lg=2.0)]
    assert select_self_certainty_borda(pool) == select_cisc_vote(pool) == select_deepconf_vote(pool) == 1


def test_borda_worked_out_by_hand():
    # Self-certainty ranks r = 1..5 of indices 0..4; answer A on indices 0, 1, answer B on 2, 3, 4.
    pool = [row(0, sc=5.0, answer="A"), row(1, sc=4.0, answer="A"), row(2, sc=3.0, answer="B"),
            row(3, sc=2.0, answer="B"), row(4, sc=1.0, answer="B")]
    # p = 1: A = 5 + 4 = 9 > B = 3 + 2 + 1 = 6; A's most self-certain sample is index 0.
    assert select_self_certainty_borda(pool, power=1.0) == 0
    # p = 0.5 (default): A = sqrt5 + sqrt4 = 4.236 > B = sqrt3 + sqrt2 + 1 = 4.146.
    assert select_self_certainty_borda(pool) == 0
    # p = 0: one vote each, plain majority: B, its most self-certain sample index 2.
    assert select_self_certainty_borda(pool, power=0.0) == 2 == select_majority(
        [dict(r, logprob=-float(r["index"])) for r in pool])
    # A sample without an answer takes rank 1 (weight 6) but votes for nothing; with p = 1: A = 5 + 4 = 9,
    # B = 3 + 2 + 1 = 6 still. Drop index 1 instead and B wins: A = 4 + 0, B = 3 + 2 + 1 = 6 (N = 4 ranks).
    with_null = pool + [row(5, sc=9.0, answer=None)]
    assert select_self_certainty_borda(with_null, power=1.0) == 0
    without_1 = [r for r in pool if r["index"] != 1]
    assert without_1[select_self_certainty_borda(without_1, power=1.0)]["index"] == 2


def test_borda_ties():
    # p = 1, N = 4: A = 4 + 1, B = 3 + 2: tied; A's best sample (5.0) beats B's (3.0).
    pool = [row(0, sc=5.0, answer="A"), row(1, sc=3.0, answer="B"), row(2, sc=2.0, answer="B"),
            row(3, sc=1.0, answer="A")]
    assert select_self_certainty_borda(pool, power=1.0) == 0
    # Equal self-certainty: the lower index takes the better rank.
    pool = [row(4, sc=1.0, answer="A"), row(3, sc=1.0, answer="B")]
    assert pool[select_self_certainty_borda(pool, power=1.0)]["index"] == 3


def test_deepconf_vote_filters_then_weights():
    # Ten samples: five without an answer (confidence 7), A with 6 and 4.5, B with 5, 5 and 1.
    confs = [(7.0, None)] * 5 + [(6.0, "A"), (5.0, "B"), (5.0, "B"), (4.5, "A"), (1.0, "B")]
    pool = [row(i, -float(i), answer=a, lg=c) for i, (c, a) in enumerate(confs)]
    # eta = 90%: floor(9) kept, the B with 1.0 dropped: A = 6 + 4.5 = 10.5 > B = 5 + 5 = 10; A's most confident.
    assert select_deepconf_vote(pool) == 5
    # No filtering: B = 11 > A = 10.5; B's most confident samples tie at 5.0: the lower index, 6.
    assert select_deepconf_vote(pool, eta=1.0) == 6
    assert select_majority(pool) == 6  # B also has the most votes
    # At least one sample is kept: the most confident one's answer wins.
    assert select_deepconf_vote(pool[5:], eta=0.01) == 0


def test_deepconf_vote_shifts_nonpositive_confidences():
    # Raw weights would give A = -2 < B = -0.5; shifted by 1 - min = 2: A = 1 + 1 = 2 > B = 1.5.
    pool = [row(0, answer="A", lg=-1.0), row(1, answer="A", lg=-1.0), row(2, answer="B", lg=-0.5)]
    assert select_deepconf_vote(pool, eta=1.0) == 0


def test_cisc_vote_by_hand_and_ties():
    # T = 0.5: weights proportional to e^2, e^2 (A) and e^4 (B): B = 54.6 > A = 14.8.
    pool = [row(0, answer="A", sc=1.0), row(1, answer="A", sc=1.0), row(2, answer="B", sc=2.0)]
    assert select_cisc_vote(pool) == 2
    # A high temperature flattens the weights into a majority vote: A.
    assert select_cisc_vote(pool, temperature=100.0) == 0
    # Two answers with equal weight and equal best score: the lower index's answer.
    tie = [row(3, answer="A", sc=1.0), row(1, answer="B", sc=1.0)]
    assert select_cisc_vote(tie) == 1
    assert select_cisc_vote([dict(tie[0], index=0), tie[1]]) == 0


def test_stopped_samples_are_never_picked_nor_counted():
    stop = "early_stop"
    pool = [row(0, -9.0, answer="A", sc=0.5, lg=4.0, b10=1.0, tail=1.0, correct=True),
            row(1, -1.0, answer="B", sc=9.0, lg=9.0, b10=9.0, tail=9.0, finish_reason=stop, correct=True),
            row(2, -1.5, answer="B", sc=8.0, lg=8.0, b10=8.0, tail=8.0, finish_reason=stop),
            row(3, -5.0, answer=None, sc=0.1, lg=1.0, b10=2.0, tail=2.0)]
    for name in PAPER[:3] + NEW:  # B would win every vote and every argmax if its samples counted
        assert select(name, pool) in (0, 3), name
    assert select_majority(pool) == 0 and select_self_certainty_borda(pool) == 0
    assert select_cisc_vote(pool) == 0 and select_deepconf_vote(pool, eta=1.0) == 0
    assert select_oracle(pool) == 0
    rng = np.random.default_rng(0)
    assert {select_random(pool, rng) for _ in range(100)} == {0, 3}
    # Every sample stopped: taken as if none were.
    all_stopped = [dict(r, finish_reason=stop) for r in pool]
    unstopped = [dict(r, finish_reason="eos") for r in pool]
    for name in PAPER[:3] + ["oracle"] + NEW:
        assert select(name, all_stopped) == select(name, unstopped), name
    assert select_majority(all_stopped) == 1


# ---- summary ----------------------------------------------------------------------------------------------

def bon_rows(with_fields=CONFIDENCE_FIELDS):
    """Two prompts, 2 samples each: the correct sample is the less likely but the more confident one."""
    lens = {"p0": [3, 5], "p1": [7, 9]}
    samples = []
    for pid in ("p0", "p1"):
        for i in range(2):
            ok = i == 1
            samples.append(row(i, -1.0 - i, answer=str(i), correct=ok, sc=float(i), lg=float(i), b10=float(i),
                               tail=float(i), prompt_id=pid, num_tokens=lens[pid][i], fields=with_fields))
    greedy = [row(0, -0.5, answer="0", prompt_id="p0", num_tokens=4, fields=()),
              row(0, -0.5, answer="1", correct=True, prompt_id="p1", num_tokens=8, fields=())]
    return samples, greedy


def test_summary_without_fields_keeps_the_paper_selectors_only():
    samples, greedy = bon_rows(with_fields=())
    s = summarize(samples, greedy, n=2, seeds=2, gold={"p0": "1", "p1": "1"}, labels=("0", "1"))
    assert list(s["selectors"]) == PAPER
    assert set(s["self_reward_auroc"]) == {"logprob", "logprob_mean"}
    assert set(s["labels"]["policies"]) == {"greedy", *PAPER}


def test_summary_computes_a_selector_only_when_every_row_has_its_fields():
    samples, greedy = bon_rows()
    s = summarize(samples, greedy, n=2, seeds=2, gold={"p0": "1", "p1": "1"}, labels=("0", "1"))
    assert list(s["selectors"]) == PAPER + NEW
    assert set(s["labels"]["policies"]) == {"greedy", *PAPER, *NEW}
    for name in NEW:  # the confident sample is the correct one
        assert s["selectors"][name]["2"]["accuracy_mean"] == 1.0, name
    assert s["selectors"]["logprob"]["2"]["accuracy_mean"] == 0.0
    auc = s["self_reward_auroc"]
    assert set(auc) == {"logprob", "logprob_mean", *CONFIDENCE_FIELDS}
    assert auc["self_certainty"]["within_prompt"] == 1.0 and auc["logprob"]["within_prompt"] == 0.0
    json.dumps(s, allow_nan=False)
    # One row lacks conf_tail (an older writer): deepconf_tail and its AUROC go, the rest stay.
    del samples[3]["conf_tail"]
    s = summarize(samples, greedy, n=2, seeds=2)
    assert list(s["selectors"]) == PAPER + [x for x in NEW if x != "deepconf_tail"]
    assert "conf_tail" not in s["self_reward_auroc"] and "conf_bottom10" in s["self_reward_auroc"]
    # A row outside the counted pools (index >= n) does not matter.
    extra = dict(samples[0], index=5)
    del extra["self_certainty"]
    assert "self_certainty" in summarize(samples + [extra], greedy, n=2, seeds=1)["selectors"]


def test_self_reward_auroc_skips_nan_and_stopped_samples():
    samples = [row(0, -1.0, correct=True, sc=2.0, prompt_id="a"), row(1, -2.0, sc=1.0, prompt_id="a"),
               row(2, -3.0, sc=None, correct=True, prompt_id="a"),  # no score: skipped
               row(3, -4.0, sc=9.0, finish_reason="early_stop", prompt_id="a")]  # stopped: skipped
    s = summarize(samples, None, n=4, seeds=1)
    assert s["self_reward_auroc"]["self_certainty"] == {"pooled": 1.0, "within_prompt": 1.0, "num_prompts": 1}


def test_token_budgets_by_hand():
    samples, greedy = bon_rows()
    s = summarize(samples, greedy, n=2, seeds=3, prompt_tokens={"p0": 10, "p1": 20, "unused": 1000})
    for name in s["selectors"]:
        st = s["selectors"][name]
        # N = 2: every sample is drawn: (3 + 5 + 7 + 9) / 2 prompts = 12 tokens sampled per prompt.
        assert st["2"]["response_tokens_per_prompt"] == 12.0, name
        assert st["2"]["prompt_tokens_per_prompt"] == st["1"]["prompt_tokens_per_prompt"] == 15.0
    assert s["greedy"]["response_tokens_per_prompt"] == 6.0 and s["greedy"]["prompt_tokens_per_prompt"] == 15.0
    # N = 1 with equal lengths within a prompt: (2 + 4) / 2 = 3 whichever sample is drawn; N = 3: 3 * 3 = 9.
    eq = [row(i, prompt_id=pid, num_tokens=ln) for pid, ln in (("a", 2), ("b", 4)) for i in range(3)]
    s = summarize(eq, None, n=3, seeds=4)
    assert [s["selectors"]["logprob"][k]["response_tokens_per_prompt"] for k in ("1", "2", "3")] == [3.0, 6.0, 9.0]
    assert "prompt_tokens_per_prompt" not in s["selectors"]["logprob"]["1"]


def test_engine_token_stats_match_the_numpy_reference():
    import torch

    from sharpen.engine.sampler import token_stats as engine_stats

    x = np.random.default_rng(0).normal(size=(6, 5000)) * 3
    lp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    ref = np.stack(token_stats(lp), axis=1)
    got = engine_stats(torch.tensor(x, dtype=torch.float32)).double().numpy()
    assert np.allclose(got, ref, atol=1e-3)
