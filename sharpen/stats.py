"""Uncertainty and control statistics for evaluations (pure functions: standard library and numpy only).

* Bootstrap intervals resample *prompts* with replacement: prompts are the independent units, samples of one
  prompt are not. Every bootstrap is deterministic (``np.random.default_rng(seed)``) and gives a percentile
  interval at ``level`` (95% by default).
* pass@k is the unbiased estimator of Chen et al. (2021).
* Label controls for closed answer sets (yes/no, True/False, A-D): a policy that always answers the majority
  label can look accurate, so report the majority baseline, per-label recall and balanced accuracy with it.
  Labels are compared as strings (``str(x)``) so that ``True`` and ``"True"`` are the same label instead of
  silently never matching; a prediction of ``None`` (no parsed answer) is kept apart and always counts as wrong.
* AUROC is the Mann-Whitney statistic with ties counted 1/2.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# Bound the (resamples x prompts) index matrix drawn at once, so large evaluations do not allocate gigabytes.
_MAX_DRAW = 4_000_000


def _finite_array(values: Iterable[float], name: str) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        # A NaN would silently turn the whole interval into NaN; the caller must decide what a missing value means.
        raise ValueError(f"{name} must be finite numbers")
    return a


def _percentile_mean_ci(x: np.ndarray, resamples: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of non-empty `x` over `resamples` resamplings of its entries."""
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got resamples={resamples} level={level}")
    lo_v, hi_v = float(x.min()), float(x.max())
    if lo_v == hi_v:
        # Every resample has the same mean; return it exactly rather than a float-rounded average of copies.
        return lo_v, hi_v
    rng = np.random.default_rng(seed)
    n = len(x)
    chunk = max(1, _MAX_DRAW // n)
    means = np.concatenate([x[rng.integers(0, n, size=(min(chunk, resamples - start), n))].mean(axis=1)
                            for start in range(0, resamples, chunk)])
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    # Rounding can push a mean a hair outside [min, max]; the true interval never leaves it.
    return float(np.clip(lo, lo_v, hi_v)), float(np.clip(hi, lo_v, hi_v))


def bootstrap_ci(values: Iterable[float], resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of per-prompt values (prompts resampled); None when empty."""
    x = _finite_array(values, "values")
    return _percentile_mean_ci(x, resamples, level, seed) if x.size else None


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Interval of mean(a) - mean(b) for two methods scored on the same prompts (same order).

    Both are resampled with the same prompt indices, so prompt difficulty (shared by a and b) cancels and the
    interval is usually much narrower than two independent intervals. Returns {"diff", "diff_ci", "excludes_zero"}.
    """
    xa, xb = _finite_array(a, "a"), _finite_array(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"paired_bootstrap needs a and b over the same prompts, got lengths {xa.size} and {xb.size}")
    if not xa.size:
        return {"diff": None, "diff_ci": None, "excludes_zero": False}
    # Resampling the per-prompt differences is exactly resampling the same indices of a and b.
    lo, hi = _percentile_mean_ci(xa - xb, resamples, level, seed)
    return {"diff": float(xa.mean() - xb.mean()), "diff_ci": [lo, hi], "excludes_zero": bool(lo > 0 or hi < 0)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    # operator.index rejects floats, which would otherwise be truncated silently.
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if min(n, c, k) < 0 or c > n or k > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 0 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): no huge binomials, no overflow.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _label_setup(gold: Sequence[Any], labels: Sequence[Any] | None) -> tuple[list[str], list[str]]:
    """Gold and label set as strings; the label set defaults to the sorted distinct gold labels."""
    if any(g is None for g in gold):
        raise ValueError("gold labels must not be None")
    g = [str(x) for x in gold]
    labs = sorted(set(g)) if labels is None else list(dict.fromkeys(str(x) for x in labels))
    unknown = sorted(set(g) - set(labs))
    if unknown:
        raise ValueError(f"gold labels {unknown} are not in the label set {labs}")
    if "none" in labs:
        # "none" is the key of unanswered prompts in predicted_counts; a label of that name would merge with it.
        raise ValueError('"none" cannot be a label (it counts unanswered prompts)')
    return g, labs


def _majority(g: list[str], labs: list[str]) -> dict[str, Any]:
    """Best constant answer; ties go to the label listed first, so the result does not depend on dict order."""
    if not g:
        return {"label": None, "accuracy": None}
    counts = Counter(g)
    best = max(labs, key=lambda lab: counts[lab])  # max keeps the first of equal counts
    return {"label": best, "accuracy": counts[best] / len(g)}


def label_controls(gold: Sequence[Any], predicted: dict[str, Sequence[Any]] | None = None,
                   labels: Sequence[Any] | None = None) -> dict[str, Any]:
    """Baselines for a closed answer set: gold counts, the accuracy of always answering each label, the majority
    baseline, and (when `predicted` maps policy names to per-prompt predictions) policy_label_stats per policy."""
    g, labs = _label_setup(gold, labels)
    counts = Counter(g)
    out: dict[str, Any] = {
        "labels": labs,
        "gold_counts": {lab: counts[lab] for lab in labs},
        "always": {lab: (counts[lab] / len(g) if g else None) for lab in labs},
        "majority_baseline": _majority(g, labs),
    }
    if predicted is not None:
        out["policies"] = {name: policy_label_stats(gold, pred, labs) for name, pred in predicted.items()}
    return out


def policy_label_stats(gold: Sequence[Any], predicted: Sequence[Any], labels: Sequence[Any] | None) -> dict[str, Any]:
    """How one policy's answers spread over the labels, per-label recall, balanced and plain accuracy.

    Labels compare as str(x); a None prediction means no parsed answer and counts as wrong. Predictions outside
    the label set are counted under their own string in predicted_counts (and are wrong).
    """
    g, labs = _label_setup(gold, labels)
    if len(predicted) != len(g):
        raise ValueError(f"predicted has {len(predicted)} entries for {len(g)} gold labels")
    p = [None if x is None else str(x) for x in predicted]
    hit = [pi == gi for pi, gi in zip(p, g, strict=True)]
    pred_counts: dict[str, int] = {lab: 0 for lab in labs}
    pred_counts["none"] = 0
    for pi in p:
        key = "none" if pi is None else pi
        pred_counts[key] = pred_counts.get(key, 0) + 1
    recall: dict[str, float | None] = {}
    for lab in labs:
        rows = [h for h, gi in zip(hit, g, strict=True) if gi == lab]
        recall[lab] = sum(rows) / len(rows) if rows else None
    defined = [r for r in recall.values() if r is not None]
    accuracy = sum(hit) / len(g) if g else None
    base = _majority(g, labs)["accuracy"]
    return {
        "answer_rate": sum(pi is not None for pi in p) / len(g) if g else None,
        "predicted_counts": pred_counts,
        "recall": recall,
        "balanced_accuracy": float(np.mean(defined)) if defined else None,
        "accuracy": accuracy,
        "beats_majority_baseline": bool(accuracy is not None and accuracy > base),
    }


def _mann_whitney(scores: Iterable[float], labels: Iterable[bool]) -> tuple[float, int]:
    """(U, n_pos * n_neg): U counts positive-negative pairs the positive wins, ties 1/2. NaN scores dropped."""
    s = np.asarray(list(scores), dtype=np.float64).reshape(-1)
    y = np.asarray(list(labels), dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"auroc needs one label per score, got {s.size} scores and {y.size} labels")
    keep = ~np.isnan(s)  # -inf/+inf stay: they sort as the lowest/highest scores
    s, y = s[keep], y[keep]
    pos, neg = s[y], np.sort(s[~y])
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    # Integer counts, halved once at the end, so the statistic is exact.
    u = (2 * int(below.sum()) + int((at_or_below - below).sum())) / 2.0
    return u, int(pos.size) * int(neg.size)


def auroc(scores: Iterable[float], labels: Iterable[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties 1/2; None unless both classes are present."""
    u, pairs = _mann_whitney(scores, labels)
    return u / pairs if pairs else None


def auroc_within_prompt(groups: Iterable[tuple[Sequence[float], Sequence[bool]]]) -> dict[str, Any]:
    """AUROC over pairs from the same prompt: per-prompt AUROCs averaged with weights n_pos * n_neg.

    Only prompts with both classes count; weighting by pair count makes this the AUROC of all within-prompt
    pairs, so a prompt with 1 vs 1 samples does not weigh as much as one with 8 vs 8.
    """
    u_sum, pair_sum, used = 0.0, 0, 0
    for scores, labels in groups:
        u, pairs = _mann_whitney(scores, labels)
        if pairs:
            u_sum, pair_sum, used = u_sum + u, pair_sum + pairs, used + 1
    return {"auroc": u_sum / pair_sum if pair_sum else None, "num_prompts": used}
