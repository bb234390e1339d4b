"""The token prefix the prompts of a call share (a task's few-shot examples): run once by the decoder and by
teacher-forced scoring. Plain Python, no torch."""

from __future__ import annotations

MIN_SHARED_PREFIX = 32  # tokens: below this a separate prefix pass saves less than it costs


def shared_prefix(prompts: list[list[int]], min_len: int | None = None) -> list[int]:
    """The token prefix all prompts of a call share (few-shot examples, a system prompt), leaving each prompt at
    least one token of its own; empty when shorter than min_len (default MIN_SHARED_PREFIX) or when there is a
    single prompt."""
    min_len = MIN_SHARED_PREFIX if min_len is None else min_len
    if len(prompts) < 2:
        return []
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    k = 0
    while k < n and all(p[k] == first[k] for p in prompts):
        k += 1
    return list(first[:k]) if k >= min_len else []
