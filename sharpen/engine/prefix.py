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


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix of two token tuples (binary search on slice equality, which runs in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PrefixCache:
    """Keys and values of token prefixes kept across engine calls, for callers that come back to the same
    sequences: power sampling's chains redraw suffixes of the same responses step after step, so each chain's
    current response is a decoder head whose KV survives the call, and a redraw from position t prefills nothing
    of its kept prefix. Bound to one module's weights and compute dtype (anything else clears it); `keep` drops
    the prefixes a caller no longer needs."""

    def __init__(self) -> None:
        self.kv: dict[tuple[int, ...], tuple[list, list]] = {}  # tokens -> per-layer keys, values (1, Hkv, n, D)
        self._owner: tuple | None = None

    def bind(self, owner: tuple) -> dict[tuple[int, ...], tuple[list, list]]:
        """The store for this owner (a signature of the weights and dtype), emptied when the owner changed."""
        if owner != self._owner:
            self.kv.clear()
            self._owner = owner
        return self.kv

    def keep(self, prefixes: list[list[int]] | set[tuple[int, ...]]) -> None:
        wanted = {tuple(p) for p in prefixes}
        for k in [k for k in self.kv if k not in wanted]:
            del self.kv[k]
