"""The engine's generic decoder: any causal LM through its own forward and cache (the fast decoder's fallback).

It prefills one prompt, repeats its cache for the rows, and calls the model's forward; its rows cannot restart
(refill_rows = False). Same phases as `decoder.FastDecoder`: prefill, start_logits, decode_step. Imports nothing
of the package: `make_decoder` gives it the model's cache keyword (arch.cache_keyword).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class HFDecoder:
    """Generic fallback through the model's own forward and cache: one prompt at a time, its cache repeated
    for the rows after a single prefill. Rows cannot restart on their own (refill_rows = False)."""
    refill_rows = False
    slots = 1

    def __init__(self, lm: Any, rows: int, device: torch.device, cache_kw: str) -> None:
        self.lm, self.rows, self.device = lm, rows, device
        self.prompt: list[int] = []
        self.cache: Any = None
        self.cache_kw = cache_kw

    def prefill(self, slots: list[int], prompts: list[list[int]]) -> None:
        (self.prompt,) = prompts  # run by start_logits, when the rows (re)start on it

    def set_rows(self, row_slot: list[int]) -> None:
        pass

    def start_rows(self, rows: list[int]) -> None:
        pass

    def start_logits(self, live: Tensor | None = None) -> Tensor:
        out = self.lm(input_ids=torch.tensor([self.prompt], device=self.device), use_cache=True)
        self.cache = getattr(out, self.cache_kw)
        self.cache.batch_repeat_interleave(self.rows)  # (1, ...) -> (B, ...): no second prefill
        return out.logits[:, -1].expand(self.rows if live is None else len(live), -1)  # (B or A, V)

    def decode_step(self, tokens: Tensor, resp_pos: Tensor, width: int, fresh: Tensor,
                    live: Tensor | None = None) -> Tensor:
        out = self.lm(input_ids=tokens[:, None], use_cache=True, **{self.cache_kw: self.cache})
        self.cache = getattr(out, self.cache_kw)
        logits = out.logits[:, -1]  # (B, V)
        return logits if live is None else logits.index_select(0, live)
