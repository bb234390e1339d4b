"""sharpen.stats: hand-worked values for the bootstrap intervals, pass@k, label controls and AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sharpen.stats import (
    auroc,
    auroc_within_prompt,
    bootstrap_ci,
    label_controls,
    paired_bootstrap,
    pass_at_k,
    policy_label_stats,
)

# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_constant_inputs_are_exact():
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert bootstrap_ci([0, 0, 0]) == (0.0, 0.0)
    assert bootstrap_ci([True, True]) == (1.0, 1.0)
    # The mean of three copies of 0.1 is not exactly 0.1 in floating point; the interval still is.
    assert bootstrap_ci([0.1, 0.1, 0.1]) == (0.1, 0.1)


def test_bootstrap_ci_empty_is_none():
    assert bootstrap_ci([]) is None


def test_bootstrap_ci_contains_mean_and_stays_in_range():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    lo, hi = bootstrap_ci(values)
    assert 0.0 <= lo < np.mean(values) < hi <= 1.0
    # Binomial standard error sqrt(.7 * .3 / 10) ~ 0.145: a 95% interval is roughly +-0.28 around 0.7.
    assert 0.3 < hi - lo < 0.8


def test_bootstrap_ci_single_resample_is_one_resampled_mean():
    values = np.array([0.0, 1.0, 2.0, 5.0])
    lo, hi = bootstrap_ci(values, resamples=1, seed=3)
    idx = np.random.default_rng(3).integers(0, 4, size=(1, 4))
    assert lo == hi == pytest.approx(values[idx].mean())


def test_bootstrap_ci_deterministic_per_seed():
    values = np.random.default_rng(123).random(50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values) == bootstrap_ci(values, seed=0)
    assert bootstrap_ci(values, seed=0) != bootstrap_ci(values, seed=1)


def test_bootstrap_ci_wider_at_higher_level():
    values = np.random.default_rng(5).random(40)
    lo90, hi90 = bootstrap_ci(values, level=0.90)
    lo99, hi99 = bootstrap_ci(values, level=0.99)
    assert lo99 <= lo90 and hi90 <= hi99


@pytest.mark.parametrize("kw", [{"level": 1.0}, {"level": 0.0}, {"resamples": 0}])
def test_bootstrap_ci_rejects_bad_parameters(kw):
    with pytest.raises(ValueError):
        bootstrap_ci([0, 1], **kw)


def test_bootstrap_ci_rejects_nan():
    with pytest.raises(ValueError):
        bootstrap_ci([0.5, float("nan")])


def test_paired_bootstrap_always_better():
    out = paired_bootstrap([1, 1, 1, 1], [0, 0, 0, 0])
    assert out == {"diff": 1.0, "diff_ci": [1.0, 1.0], "excludes_zero": True}


def test_paired_bootstrap_identical_inputs():
    a = [0, 1, 1, 0, 1]
    assert paired_bootstrap(a, list(a)) == {"diff": 0.0, "diff_ci": [0.0, 0.0], "excludes_zero": False}


def test_paired_bootstrap_empty_and_mismatched():
    assert paired_bootstrap([], []) == {"diff": None, "diff_ci": None, "excludes_zero": False}
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])


def test_paired_interval_is_narrower_than_unpaired():
    # Prompt difficulty varies widely, but a beats b by exactly 0.1 on every prompt.
    b = np.random.default_rng(0).random(30) * 0.9
    a = b + 0.1
    out = paired_bootstrap(a, b)
    lo, hi = out["diff_ci"]
    assert out["diff"] == pytest.approx(0.1)
    assert hi - lo < 1e-9
    assert lo == pytest.approx(0.1) and out["excludes_zero"]
    # Intervals of each mean alone are wide, so comparing them unpaired could not resolve a 0.1 gap.
    a_lo, a_hi = bootstrap_ci(a)
    b_lo, b_hi = bootstrap_ci(b)
    assert a_hi - a_lo > 0.1 and b_hi - b_lo > 0.1
    assert a_lo < b_hi  # the unpaired intervals overlap


def test_paired_bootstrap_deterministic_and_signed():
    rng = np.random.default_rng(9)
    a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    assert paired_bootstrap(a, b, seed=4) == paired_bootstrap(a, b, seed=4)
    ab, ba = paired_bootstrap(a, b), paired_bootstrap(b, a)
    assert ab["diff"] == pytest.approx(-ba["diff"])
    assert ab["diff_ci"][0] <= ab["diff"] <= ab["diff_ci"][1]


# ---------------------------------------------------------------- pass@k


def _closed_form(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 0, 3), (5, 5, 3), (10, 3, 1), (10, 3, 2), (10, 3, 7),
                                   (10, 3, 8), (16, 1, 4), (20, 7, 10), (100, 13, 50)])
def test_pass_at_k_matches_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_closed_form(n, c, k), abs=1e-12)


def test_pass_at_k_special_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 4, 7) == 1.0  # n - c = 6 < k: every k-subset has a correct sample
    for c in range(11):
        assert pass_at_k(10, c, 1) == pytest.approx(c / 10)


def test_pass_at_k_large_n_is_stable():
    # The binomials here overflow a float; the product form does not.
    assert 0.0 < pass_at_k(2000, 3, 500) < 1.0
    assert pass_at_k(2000, 3, 500) == pytest.approx(_closed_form(2000, 3, 500))


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, 1, 6), (-1, 0, 0), (5, -1, 1), (5, 1, -1)])
def test_pass_at_k_rejects_invalid(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_float_counts():
    with pytest.raises(TypeError):
        pass_at_k(10.0, 3, 1)


# ---------------------------------------------------------------- label controls

GOLD = [True, True, True, False]


def test_label_controls_baselines():
    out = label_controls(GOLD)
    assert out["labels"] == ["False", "True"]
    assert out["gold_counts"] == {"False": 1, "True": 3}
    assert out["always"] == {"False": 0.25, "True": 0.75}
    assert out["majority_baseline"] == {"label": "True", "accuracy": 0.75}
    assert "policies" not in out


def test_label_controls_explicit_labels_and_ties():
    out = label_controls(["A", "B"], labels=["B", "A", "C"])
    assert out["labels"] == ["B", "A", "C"]
    assert out["gold_counts"] == {"B": 1, "A": 1, "C": 0}
    assert out["majority_baseline"] == {"label": "B", "accuracy": 0.5}  # ties go to the label listed first
    with pytest.raises(ValueError):
        label_controls(["A", "D"], labels=["A", "B"])


def test_always_majority_has_balanced_accuracy_one_half():
    out = label_controls(GOLD, predicted={"always_true": ["True"] * 4, "perfect": GOLD})
    always = out["policies"]["always_true"]
    assert always["accuracy"] == 0.75
    assert always["balanced_accuracy"] == 0.5
    assert always["recall"] == {"False": 0.0, "True": 1.0}
    assert always["beats_majority_baseline"] is False  # equal to the baseline is not beating it
    perfect = out["policies"]["perfect"]
    assert perfect["accuracy"] == perfect["balanced_accuracy"] == 1.0
    assert perfect["beats_majority_baseline"] is True


def test_none_prediction_lowers_answer_rate_and_counts_wrong():
    stats = policy_label_stats(GOLD, [True, None, True, False], ["False", "True"])
    assert stats["answer_rate"] == 0.75
    assert stats["predicted_counts"] == {"False": 1, "True": 2, "none": 1}
    assert stats["accuracy"] == 0.75
    assert stats["recall"] == {"False": 1.0, "True": pytest.approx(2 / 3)}
    assert stats["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_labels_compare_as_strings():
    # A parser that returns "True" must match a gold of True; the string "None" is an answer, None is not.
    stats = policy_label_stats([True, False], ["True", "None"], None)
    assert stats["accuracy"] == 0.5
    assert stats["answer_rate"] == 1.0
    assert stats["predicted_counts"] == {"False": 0, "True": 1, "none": 0, "None": 1}


def test_policy_label_stats_undefined_recall_and_errors():
    stats = policy_label_stats(["A", "A"], ["A", "B"], ["A", "B"])
    assert stats["recall"] == {"A": 0.5, "B": None}
    assert stats["balanced_accuracy"] == 0.5  # mean over labels that occur in gold only
    with pytest.raises(ValueError):
        policy_label_stats(["A", "A"], ["A"], ["A"])
    with pytest.raises(ValueError):
        policy_label_stats(["A", None], ["A", "A"], ["A"])


def test_label_controls_empty():
    out = label_controls([], predicted={"p": []}, labels=["A", "B"])
    assert out["always"] == {"A": None, "B": None}
    assert out["majority_baseline"] == {"label": None, "accuracy": None}
    p = out["policies"]["p"]
    assert p["accuracy"] is None and p["answer_rate"] is None and p["balanced_accuracy"] is None
    assert p["beats_majority_baseline"] is False


# ---------------------------------------------------------------- AUROC


def _brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_hand_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    # Positive 2 beats neg 1 and ties neg 2 (1.5), positive 3 beats both (2): 3.5 / 4.
    assert auroc([1, 2, 2, 3], [False, True, False, True]) == 0.875


def test_auroc_one_class_is_none():
    assert auroc([1, 2], [True, True]) is None
    assert auroc([1, 2], [False, False]) is None
    assert auroc([], []) is None


def test_auroc_matches_brute_force():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert auroc(scores, labels) == pytest.approx(_brute_auroc(scores.tolist(), labels.tolist()))


def test_auroc_nan_dropped_and_inf_ordered():
    nan, inf = float("nan"), float("inf")
    # Without the NaN negative this is perfectly separated.
    assert auroc([nan, 0.0, 1.0], [False, False, True]) == 1.0
    assert auroc([-inf, 0.0], [False, True]) == 1.0
    assert auroc([-inf, -inf], [False, True]) == 0.5
    assert auroc([inf, 0.0], [True, False]) == 1.0
    assert auroc([nan, 1.0], [True, False]) is None  # the only positive was dropped
    with pytest.raises(ValueError):
        auroc([1.0, 2.0], [True])


def test_auroc_within_prompt_weights_by_pairs():
    groups = [
        ([0.0, 1.0], [False, True]),  # 1 pair, AUROC 1
        ([3.0, 4.0, 1.0, 2.0], [False, False, True, True]),  # 4 pairs, AUROC 0
        ([5.0, 6.0], [True, True]),  # one class: not used
        ([float("nan"), 1.0], [True, False]),  # one class once NaN is dropped: not used
    ]
    out = auroc_within_prompt(groups)
    assert out == {"auroc": pytest.approx(1 / 5), "num_prompts": 2}
    assert auroc_within_prompt([]) == {"auroc": None, "num_prompts": 0}
    assert auroc_within_prompt([([1.0], [True])]) == {"auroc": None, "num_prompts": 0}
