"""Collapse guards of the training core: what a sharpened policy's validation responses look like next to the base
model's on the same prompts, and which limit (TrainConfig guard_*) that crosses. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .config import TrainConfig


def guard_stats(rows: Sequence[dict], base_rows: Sequence[dict]) -> dict[str, float]:
    """What a collapse guard watches in a policy's validation responses, against the base model's on the same
    prompts: empty and truncated shares, mean length relative to the base, the share of repeated token 3-grams,
    the drop of the answer rate, and (from samples with both log-probs) the estimate of KL(pi || pi_base)."""
    def mean(xs: Sequence[float]) -> float:
        return float(np.mean(xs)) if len(xs) else 0.0

    def repeated(tokens: Sequence[int]) -> float:
        grams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
        return 1.0 - len(set(grams)) / len(grams) if grams else 0.0

    def shares(rs: Sequence[dict]) -> tuple[float, float, float]:
        return (mean([not r["text"].strip() for r in rs]), mean([r["finish_reason"] == "length" for r in rs]),
                mean([repeated(r["token_ids"]) for r in rs]))

    base_len = mean([r["num_tokens"] for r in base_rows]) or 1.0
    (empty, trunc, rep), (empty_b, trunc_b, rep_b) = shares(rows), shares(base_rows)
    kl = [r["logprob"] - r["logprob_base"] for r in rows if r.get("kind") == "sample"
          and r.get("logprob") is not None and r.get("logprob_base") is not None
          and math.isfinite(r["logprob"]) and math.isfinite(r["logprob_base"])]
    return {
        "empty_rate": empty, "truncated_rate": trunc, "repetition": rep,
        "empty_rate_base": empty_b, "truncated_rate_base": trunc_b, "repetition_base": rep_b,
        "length_ratio": mean([r["num_tokens"] for r in rows]) / base_len,
        "answer_rate_drop": mean([r.get("answer") is not None for r in base_rows])
        - mean([r.get("answer") is not None for r in rows]),
        **({"kl": float(np.mean(kl))} if kl else {}),
    }


# A share guard fires only when the policy is also this much worse than the base on the same prompts: a base
# model that already runs every response to the token limit has not collapsed.
GUARD_MARGIN = 0.1


def guard_reason(stats: Mapping[str, float], cfg: TrainConfig) -> str | None:
    """The first collapse-guard limit of `cfg` (TrainConfig guard_*) that `stats` (guard_stats) crosses, said in
    words; None when none is crossed. The empty, truncated and repetition shares must pass the limit and exceed
    the base's own share by GUARD_MARGIN."""
    checks = [("empty_rate", cfg.guard_empty, "of the responses are empty"),
              ("truncated_rate", cfg.guard_truncated, "of the responses hit the token limit"),
              ("repetition", cfg.guard_repetition, "of the responses' token 3-grams repeat"),
              ("answer_rate_drop", cfg.guard_answer_drop, "fewer responses give an answer than the base's")]
    for key, limit, what in checks:
        worse = stats.get(f"{key}_base") is None or stats[key] > stats[f"{key}_base"] + GUARD_MARGIN
        if key in stats and stats[key] >= limit and worse:
            return f"{100 * stats[key]:.0f}% {what} (limit {100 * limit:.0f}%)"
    ratio = stats.get("length_ratio")
    if ratio is not None and not 1 / cfg.guard_length <= ratio <= cfg.guard_length:
        return f"mean length is {ratio:.2f}x the base's (limit {cfg.guard_length:g}x either way)"
    if cfg.guard_kl and stats.get("kl", 0.0) > cfg.guard_kl:
        return f"estimated KL to pi_base is {stats['kl']:.1f} nats (limit {cfg.guard_kl:g})"
    return None


GUARDS = ("guard_empty", "guard_truncated", "guard_length", "guard_repetition", "guard_answer_drop", "guard_kl")


def guards(stopped: str | None, cfg: TrainConfig) -> dict[str, Any]:
    """The `guards` section of a training stage's summary: whether a collapse guard stopped it, why, the limits."""
    return {"stopped": stopped is not None, "reason": stopped, "limits": {k: getattr(cfg, k) for k in GUARDS}}
