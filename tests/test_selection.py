"""Selectors on hand-made pools, subsampling statistics against closed forms, pass@k, lift, table."""

import json
import math
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharpen.errors import SharpenError
from sharpen.metrics import default_ns, lift_pct, summarize
from sharpen.report.bon import format_table
from sharpen.selection import (
    SELECTORS,
    Pool,
    select,
    select_logprob,
    select_logprob_mean,
    select_majority,
    select_oracle,
    select_random,
)
from sharpen.stats import auroc, pass_at_k


def row(index, logprob, answer=None, correct=False, num_tokens=10, prompt_id="p0", finish_reason="eos"):
    return {"prompt_id": prompt_id, "index": index, "text": "", "token_ids": [], "logprob": logprob,
            "num_tokens": num_tokens, "finish_reason": finish_reason, "answer": answer, "correct": correct}


def test_logprob_picks_argmax():
    pool = [row(0, -5.0), row(1, -1.0), row(2, -3.0)]
    assert select_logprob(pool) == 1


def test_logprob_tie_goes_to_lowest_index_not_position():
    pool = [row(3, -1.0), row(1, -1.0), row(2, -4.0)]
    assert select_logprob(pool) == 1  # position of index 1
    assert select_logprob(list(reversed(pool))) == 1  # index 1 is at position 1 again


def test_nan_and_posinf_are_never_best_but_neginf_is_valid():
    pool = [row(0, math.nan), row(1, math.inf), row(2, -math.inf), row(3, None)]
    assert select_logprob(pool) == 2
    assert select_logprob([row(0, math.nan), row(1, -50.0)]) == 1


def test_all_invalid_falls_back_to_lowest_index():
    assert select_logprob([row(4, math.nan), row(2, math.inf)]) == 1


def test_logprob_mean_normalizes_by_length():
    pool = [row(0, -10.0, num_tokens=100), row(1, -2.0, num_tokens=2)]
    assert select_logprob(pool) == 1
    assert select_logprob_mean(pool) == 0  # -0.1 per token beats -1.0 per token


def test_majority_most_frequent_answer_and_its_best_sample():
    pool = [row(0, -1.0, "7"), row(1, -9.0, "3"), row(2, -5.0, "3"), row(3, -2.0, None), row(4, -0.5, None)]
    assert select_majority(pool) == 2  # "3" wins 2-1; its best sample is index 2; nulls don't vote


def test_majority_tie_broken_by_best_logprob_of_tied_answers():
    pool = [row(0, -4.0, "a"), row(1, -6.0, "a"), row(2, -3.0, "b"), row(3, -8.0, "b")]
    assert select_majority(pool) == 2
    # Equal best log-probs too: the answer whose best sample has the lower index.
    pool = [row(0, -6.0, "a"), row(1, -3.0, "b"), row(2, -3.0, "a"), row(3, -9.0, "b")]
    assert select_majority(pool) == 1


def test_majority_all_null_falls_back_to_logprob():
    pool = [row(0, -4.0), row(1, -2.0), row(2, -3.0)]
    assert select_majority(pool) == select_logprob(pool) == 1


def test_majority_invalid_logprob_votes_but_is_not_picked():
    pool = [row(0, math.nan, "x"), row(1, -9.0, "x"), row(2, -1.0, "y")]
    assert select_majority(pool) == 1


def test_oracle_prefers_correct_sample_with_highest_logprob():
    pool = [row(0, -1.0, "1", False), row(1, -7.0, "2", True), row(2, -3.0, "2", True)]
    assert select_oracle(pool) == 2
    none_correct = [row(0, -5.0), row(1, -2.0)]
    assert select_oracle(none_correct) == select_logprob(none_correct) == 1


def test_random_is_uniform_and_select_dispatches():
    pool = Pool.from_rows([row(i, -1.0) for i in range(4)])
    rng = np.random.default_rng(0)
    counts = np.bincount([select_random(pool, rng) for _ in range(4000)], minlength=4)
    assert np.all(np.abs(counts / 4000 - 0.25) < 0.03)
    assert select("logprob", pool) == 0
    with pytest.raises(ValueError):
        select("random", pool)
    with pytest.raises(SharpenError):
        select("nope", pool)


def test_pass_at_k_closed_form():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 3) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0  # only 2 wrong samples: any 3 contain a correct one
    assert pass_at_k(50, 5, 10) == pytest.approx(1 - comb(45, 10) / comb(50, 10))
    # Huge n: the product form stays finite where the binomials overflow floats.
    assert pass_at_k(5000, 10, 100) == pytest.approx(1 - math.exp(
        math.lgamma(4991) - math.lgamma(4891) - math.lgamma(5001) + math.lgamma(4901)))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_lift_pct():
    assert lift_pct(0.6, 0.5) == pytest.approx(20.0)
    assert lift_pct(0.4, 0.5) == pytest.approx(-20.0)
    assert lift_pct(0.4, 0.0) is None
    assert lift_pct(0.4, None) is None


def test_default_ns():
    assert default_ns(50) == [1, 2, 4, 8, 16, 32, 50]
    assert default_ns(8) == [1, 2, 4, 8]
    assert default_ns(1) == [1]


def test_auroc_hand_values():
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([True, False, False])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([True, False])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert auroc(np.array([1.0, 2.0]), np.array([True, True])) is None


def one_of_four(num_prompts):
    """Each prompt: 4 samples, one correct (the least likely one); greedy correct on half the prompts."""
    samples, greedy = [], []
    for p in range(num_prompts):
        for i in range(4):
            samples.append(row(i, -1.0 - i, answer=str(i), correct=(i == 3), prompt_id=f"q{p}",
                               num_tokens=5 + i))
        greedy.append(row(0, -0.5, answer="0", correct=p % 2 == 0, prompt_id=f"q{p}"))
    return samples, greedy


def test_summarize_expectations_worked_out_by_hand():
    samples, greedy = one_of_four(50)
    s = summarize(samples, greedy, n=4, seeds=40)
    assert s["ns"] == [1, 2, 4] and s["num_prompts"] == 50 and s["greedy"]["accuracy"] == 0.5
    sel = s["selectors"]
    # Random pick: 1 correct of 4 -> 0.25 in expectation (std of the mean over 2000 draws ~0.01).
    assert abs(sel["random"]["4"]["accuracy_mean"] - 0.25) < 0.04
    # Oracle at N=k is pass@k in expectation: 1 - C(3,k)/C(4,k).
    for k in (1, 2, 4):
        expect = 1 - comb(3, k) / comb(4, k)
        assert abs(sel["oracle"][str(k)]["accuracy_mean"] - expect) < 0.04
        assert s["pass_at_k"][str(k)] == pytest.approx(expect)
    # The correct sample is the least likely: logprob selection is wrong unless N=1 draws it alone.
    assert sel["logprob"]["4"]["accuracy_mean"] == 0.0
    assert abs(sel["logprob"]["1"]["accuracy_mean"] - 0.25) < 0.04
    # Selected self-reward grows with N for logprob; at N=4 it is the pool max.
    assert sel["logprob"]["4"]["mean_logprob"] == -1.0
    assert sel["logprob"]["1"]["mean_logprob"] < sel["logprob"]["2"]["mean_logprob"] < -1.0
    assert sel["logprob"]["4"]["lift_pct_mean"] == pytest.approx(-100.0)
    assert s["sample_accuracy"] == 0.25
    lvc = s["likelihood_vs_correctness"]
    assert lvc["auroc"] == 0.0 and lvc["auroc_within_prompt"] == 0.0
    assert lvc["mean_logprob_correct"] == -4.0 and lvc["mean_logprob_incorrect"] == -2.0


def test_summarize_full_pool_equals_deterministic_selectors_and_std_is_zero():
    rng = np.random.default_rng(1)
    samples = [row(i, float(rng.normal()), answer=str(rng.integers(3)), correct=bool(rng.random() < 0.4),
                   num_tokens=int(rng.integers(1, 20)), prompt_id=f"p{p}") for p in range(20) for i in range(6)]
    s = summarize(samples, None, n=6, seeds=3)
    for name in ("logprob", "logprob_mean", "majority", "oracle"):
        pools = [[r for r in samples if r["prompt_id"] == f"p{p}"] for p in range(20)]
        expect = np.mean([pool[select(name, pool)]["correct"] for pool in pools])
        stats = s["selectors"][name]["6"]
        assert stats["accuracy_mean"] == pytest.approx(expect)
        assert stats["accuracy_std"] == pytest.approx(0.0, abs=1e-12)
        assert stats["accuracy_per_seed"] == [pytest.approx(expect)] * 3
    assert s["greedy"] is None and s["selectors"]["logprob"]["6"]["lift_pct_mean"] is None


def test_summarize_is_deterministic_and_json_safe():
    samples, greedy = one_of_four(10)
    samples[0]["logprob"] = math.nan
    samples[5]["logprob"] = math.inf
    samples[6]["finish_reason"] = "length"
    a = summarize(samples, greedy, n=4, seeds=5)
    b = summarize(samples, greedy, n=4, seeds=5)
    assert a == b
    assert a["invalid_logprobs"] == 2
    assert a["truncated_fraction"] == pytest.approx(1 / 40)
    json.dumps(a, allow_nan=False)  # strict JSON: no NaN/inf leaked into the summary


def test_summarize_counts_only_complete_prompts():
    samples, greedy = one_of_four(3)
    samples = [r for r in samples if not (r["prompt_id"] == "q1" and r["index"] == 2)]
    s = summarize(samples, greedy, n=4, seeds=2, ns=[4, 2])
    assert s["num_prompts"] == 2 and s["num_prompts_incomplete"] == 1 and s["ns"] == [2, 4]
    assert s["greedy"]["num_prompts"] == 2
    with pytest.raises(SharpenError):
        summarize(samples, greedy, n=5, seeds=2)
    with pytest.raises(SharpenError):
        summarize(samples, greedy, n=4, seeds=2, ns=[8])


def test_format_table_content():
    samples, greedy = one_of_four(8)
    s = summarize(samples, greedy, n=4, seeds=3)
    table = format_table(s)
    lines = table.splitlines()
    assert lines[0].startswith("N = 4")
    # Rows without confidence fields: exactly the selectors that need none, in registry order.
    assert list(s["selectors"]) == [name for name, sel in SELECTORS.items() if not sel.needs]
    rows = lines[3:4 + len(s["selectors"])]  # then the adaptive-N line
    assert [ln.split()[0] for ln in rows] == ["greedy", *s["selectors"]]
    assert lines[4 + len(s["selectors"])].startswith("majority with adaptive N")
    oracle = next(ln for ln in lines if ln.startswith("oracle"))
    # greedy 50%, oracle 100% on every prompt: an interval of one point, a paired difference that excludes zero
    assert "100.0 [100.0, 100.0]" in oracle and "+100.0%" in oracle and "*" in oracle
    assert "N = 2" in format_table(s, n=2)
    with pytest.raises(SharpenError):
        format_table(s, n=3)


lp_values = st.sampled_from([-3.0, -1.0, -1.0, -0.5, math.nan, math.inf, -math.inf])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(lp_values, st.sampled_from([None, "a", "b"]), st.booleans(), st.integers(1, 9)),
                min_size=1, max_size=7), st.randoms(use_true_random=False))
def test_selectors_ignore_row_order_and_skip_invalid(spec, shuffler):
    pool = [row(i, lp, ans, ok, num_tokens=nt) for i, (lp, ans, ok, nt) in enumerate(spec)]
    shuffled = pool[:]
    shuffler.shuffle(shuffled)
    has_valid = any(not (math.isnan(r["logprob"]) or r["logprob"] == math.inf) for r in pool)
    for name in ("logprob", "logprob_mean", "majority", "oracle"):
        picked = pool[select(name, pool)]
        assert shuffled[select(name, shuffled)]["index"] == picked["index"]
        if name in ("logprob", "logprob_mean") and has_valid:
            assert not (math.isnan(picked["logprob"]) or picked["logprob"] == math.inf)
    assert pool[select("oracle", pool)]["correct"] == any(r["correct"] for r in pool)


conf_values = st.sampled_from([None, math.nan, math.inf, -1.0, 0.5, 0.5, 2.0, 3.0])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(lp_values, st.sampled_from([None, "a", "b"]), st.booleans(), conf_values, conf_values,
                          st.booleans()), min_size=1, max_size=7), st.randoms(use_true_random=False))
def test_every_selector_ignores_row_order_and_never_picks_a_stopped_sample(spec, shuffler):
    pool = [{**row(i, lp, ans, ok, finish_reason="early_stop" if stop else "eos"), "self_certainty": sc,
             "conf_lowest_group": lg, "conf_bottom10": lg, "conf_tail": sc}
            for i, (lp, ans, ok, sc, lg, stop) in enumerate(spec)]
    shuffled = pool[:]
    shuffler.shuffle(shuffled)
    any_live = any(r["finish_reason"] != "early_stop" for r in pool)
    for name in SELECTORS:
        if name == "random":
            continue
        picked = pool[select(name, pool)]
        assert shuffled[select(name, shuffled)]["index"] == picked["index"], name
        assert picked["finish_reason"] != "early_stop" or not any_live, name
    rng = np.random.default_rng(0)
    assert all(pool[select("random", pool, rng)]["finish_reason"] != "early_stop" or not any_live
               for _ in range(5))


def test_existing_selectors_ignore_the_confidence_fields():
    """Rows with confidence fields and without: the paper's selectors pick the same samples."""
    rng = np.random.default_rng(2)
    for _ in range(50):
        pool = [row(i, float(rng.normal()), answer=str(rng.integers(3)), correct=bool(rng.random() < 0.5),
                    num_tokens=int(rng.integers(1, 9))) for i in range(6)]
        with_conf = [{**r, "self_certainty": float(rng.normal()), "conf_lowest_group": float(rng.normal()),
                      "conf_bottom10": None, "conf_tail": 1.0} for r in pool]
        for name in ("logprob", "logprob_mean", "majority", "oracle"):
            assert select(name, pool) == select(name, with_conf)
        assert select("random", pool, np.random.default_rng(3)) == select("random", with_conf, np.random.default_rng(3))
