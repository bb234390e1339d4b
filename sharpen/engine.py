"""The one fast sampling path: N samples per prompt with their raw log-probs (the self-reward of Eq. 2).

Phases (gpt-fast style): `prefill` runs each prompt through the model ONCE; `decode_step` advances every row of
the batch by one token; `draw` (sharpen.sampler) picks the next tokens. A batch holds `slots` prompts with
`rows_per_slot` response rows each; the N samples of a prompt share the prompt's KV cache (see
sharpen.decoder). Rows that finish start the prompt's next sample, and a slot whose prompt is done takes the
next prompt (continuous batching).

Guarantees:
* Log-probs are those of the raw model (temperature 1, no top-k/top-p) whatever temperature the draw uses,
  taken from the same logits as the draw, accumulated in fp32 or better. The ending token (EOS, or the token
  that completes a stop string) is included; responses cut by `max_new_tokens` have finish_reason "length".
* Determinism: token h of sample i of a prompt depends only on (seed, key, i, h) through a counter-based
  random stream, never on the batch size, the other prompts in the call, or the order rows finish. Token
  choices are therefore identical across batch compositions (barring a uniform that falls within float
  rounding of a cumulative-probability boundary, which happens with probability ~1e-7 per token); log-probs
  are identical up to float rounding when batch shapes differ, and bit-identical for identical calls.
* Precision: in fp32, per-token log-probs match `sharpen.scoring.score` to 1e-4 (tested). In bf16 compute
  (dtype=torch.bfloat16) they differ from the fp32 scores by up to MEASURED_BF16_TOLERANCE per token (see the
  constant; measured on the embedded Gemma 3 270M).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import SharpenError
from .sampler import draw, key_hash, uniforms

# Largest |bf16 engine log-prob - fp32 score| per token seen on the embedded model (tests/test_engine.py).
MEASURED_BF16_TOLERANCE = 0.25


@dataclass
class Sample:
    """One sampled response and its raw log-probs."""

    text: str  # decoded response, cut before a matched stop string, without EOS text
    token_ids: list[int]  # response tokens, including the ending token (EOS or the one completing a stop)
    token_logprobs: list[float]  # raw temperature-1 log-probs of token_ids
    logprob: float  # their sum: the self-reward r_self (Eq. 2)
    finish_reason: str  # "eos" | "stop" | "length"
    prompt_index: int = field(default=0, repr=False)
    sample_index: int = field(default=0, repr=False)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def encode_prompts(model: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's special tokens (BOS)."""
    return [list(model.tokenizer.encode(p, add_special_tokens=True)) for p in prompts]


def sample(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], n: int, max_new_tokens: int,
           temperature: float = 1.0, seed: int = 0, stop: list[str] | None = None,
           keys: list[str] | None = None, ignore_eos: bool = False, progress: bool = False, *,
           dtype: torch.dtype | str | None = None, max_rows: int | None = None,
           backend: str = "auto") -> list[list[Sample]]:
    """Draw `n` responses per prompt; returns out[prompt][sample index].

    prompts: strings (encoded with BOS) or token-id lists. temperature 0 is greedy. keys: one string per prompt
    naming its random stream (default: a hash of its token ids). dtype: compute dtype (default the model's;
    torch.bfloat16 is fast on CPUs with AVX-512 BF16 or AMX). max_rows: rows decoded together (default from
    a memory budget). backend: "auto" (fast path when the architecture is supported), "fast" or "hf".
    """
    if n < 1 or max_new_tokens < 1:
        raise SharpenError(f"n={n} and max_new_tokens={max_new_tokens} must both be at least 1")
    if temperature < 0 or not math.isfinite(temperature):
        raise SharpenError(f"temperature {temperature} must be >= 0 (0 means greedy)")
    ids = _prompt_ids(model, prompts)
    if keys is not None and len(keys) != len(ids):
        raise SharpenError(f"got {len(keys)} keys for {len(ids)} prompts: give one key per prompt or none")
    key_ids = [key_hash(k) for k in keys] if keys is not None else [key_hash(p) for p in ids]
    if not ids:
        return []
    from .decoder import make_decoder

    stops = [s for s in (stop or []) if s]
    eos = set() if ignore_eos else set(model.eos_token_ids)
    module = model.module
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            decoder = make_decoder(model, ids, n, max_new_tokens, dtype=dtype, max_rows=max_rows,
                                   backend=backend)
            loop = _Loop(decoder, model.tokenizer, ids, key_ids, n, max_new_tokens, temperature, seed,
                         eos, stops, progress)
            return loop.run()
    finally:
        module.train(was_training)


def greedy(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], max_new_tokens: int,
           stop: list[str] | None = None, ignore_eos: bool = False, progress: bool = False,
           **kwargs: Any) -> list[Sample]:
    """Greedy decoding (temperature 0, one sample per prompt) through the same code path as `sample`."""
    out = sample(model, prompts, 1, max_new_tokens, temperature=0.0, stop=stop, ignore_eos=ignore_eos,
                 progress=progress, **kwargs)
    return [s[0] for s in out]


def _prompt_ids(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(prompts, str):
        raise SharpenError("prompts must be a list of strings or of token-id lists, not a single string")
    if all(isinstance(p, str) for p in prompts):
        ids = encode_prompts(model, prompts)  # type: ignore[arg-type]
    else:
        ids = [[int(t) for t in p] for p in prompts]
    if any(len(p) == 0 for p in ids):
        raise SharpenError("an empty prompt has nothing to condition on: give at least one token (e.g. BOS)")
    return ids


class _Loop:
    """Host-side bookkeeping of the decode loop: which row holds which sample, when rows end, refills."""

    def __init__(self, decoder: Any, tokenizer: Any, ids: list[list[int]], key_ids: list[int], n: int,
                 max_new: int, temperature: float, seed: int, eos: set[int], stops: list[str],
                 progress: bool) -> None:
        self.dec, self.tok, self.ids, self.key_ids = decoder, tokenizer, ids, key_ids
        self.n, self.max_new, self.temperature, self.seed = n, max_new, temperature, seed
        self.eos, self.stops = eos, stops
        self.stop_window = max((len(s) for s in stops), default=0) + 8  # tokens decoded for the stop check
        self.S, self.R = decoder.slots, decoder.rows_per_slot
        self.B = self.S * self.R
        self.queue = deque(range(len(ids)))
        self.next_index = [0] * len(ids)  # next sample index to start, per prompt
        self.slot_prompt = [-1] * self.S
        self.row: list[tuple[int, int] | None] = [None] * self.B  # (prompt, sample index) or idle
        self.row_tokens: list[list[int]] = [[] for _ in range(self.B)]
        self.row_lps: list[list[float]] = [[] for _ in range(self.B)]
        self.results: list[list[Sample | None]] = [[None] * n for _ in ids]
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(ids) * n, desc="sampling", unit="sample")

    def run(self) -> list[list[Sample]]:
        dev = self.dec.device
        self.keys_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) prompt-key hash per row
        self.index_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) sample index per row
        self.step_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) tokens drawn so far per row
        self.active_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) 1 while the row has a sample
        self.first_logits: torch.Tensor | None = None  # (S, V) next-token logits right after each prompt
        fresh = self._fill_slots(list(range(self.S)))
        logits = self.first_logits[torch.arange(self.B, device=dev) // self.R].clone()  # (B, V)
        while True:
            u = uniforms(self.seed, self.keys_t, self.index_t, self.step_t) if self.temperature > 0 else None
            tok, lp = draw(logits, self.temperature, u)  # (B,), (B,)
            self.step_t += 1
            tok_l, lp_l = tok.tolist(), lp.tolist()  # the one host sync per step
            finished = [r for r in range(self.B) if self.row[r] is not None and self._append(r, tok_l, lp_l)]
            fresh = self._refill(finished)
            busy = [r for r in range(self.B) if self.row[r] is not None]
            if not busy:
                break
            if len(fresh) < len(busy):  # some rows continue a response: advance them
                # Response index of the fed token; idle and fresh rows write a harmless dummy at index 0.
                resp_pos = (self.step_t - 1).clamp_(min=0) * self.active_t  # (B,)
                width = max(len(self.row_tokens[r]) for r in busy)
                logits = self.dec.decode_step(tok, resp_pos, max(1, width))  # (B, V)
            if fresh:
                rows = torch.tensor(fresh, device=dev)
                logits[rows] = self.first_logits[rows // self.R].to(logits.dtype)
        if self.bar is not None:
            self.bar.close()
        return self.results  # type: ignore[return-value]

    def _append(self, r: int, tok_l: list[int], lp_l: list[float]) -> bool:
        """Record row r's new token; True when the row's response has ended."""
        t = tok_l[r]
        self.row_tokens[r].append(t)
        self.row_lps[r].append(lp_l[r])
        if t in self.eos:
            return self._finish(r, "eos")
        if self.stops and self._stop_hit(self.row_tokens[r]):
            return self._finish(r, "stop")
        if len(self.row_tokens[r]) >= self.max_new:
            return self._finish(r, "length")
        return False

    def _stop_hit(self, tokens: list[int]) -> bool:
        tail = self.tok.decode(tokens[-self.stop_window:], skip_special_tokens=True)
        return any(s in tail for s in self.stops)

    def _finish(self, r: int, reason: str) -> bool:
        p, i = self.row[r]  # type: ignore[misc]
        tokens, lps = self.row_tokens[r], self.row_lps[r]
        if reason == "stop":
            full = self.tok.decode(tokens, skip_special_tokens=True)
            text = full[:min(j for j in (full.find(s) for s in self.stops) if j >= 0)]
        else:
            text = self.tok.decode(tokens[:-1] if reason == "eos" else tokens, skip_special_tokens=True)
        self.results[p][i] = Sample(text=text, token_ids=tokens, token_logprobs=lps, logprob=math.fsum(lps),
                                    finish_reason=reason, prompt_index=p, sample_index=i)
        self.row[r] = None
        self.active_t[r] = 0
        if self.bar is not None:
            self.bar.update(1)
        return True

    def _refill(self, finished: list[int]) -> list[int]:
        """Give finished rows the next sample of their prompt, or new prompts to empty slots; returns new rows."""
        fresh = []
        if self.dec.refill_rows:
            for r in finished:
                p = self.slot_prompt[r // self.R]
                if self.next_index[p] < self.n:
                    self._start_row(r, p)
                    fresh.append(r)
        empty = [s for s in range(self.S) if all(self.row[r] is None for r in range(s * self.R, (s + 1) * self.R))]
        fresh += self._fill_slots(empty)
        return fresh

    def _fill_slots(self, slots: list[int]) -> list[int]:
        """Prefill the next prompts into `slots` (a prompt keeps its slot while it has samples left)."""
        todo: list[tuple[int, int]] = []
        for s in slots:
            p = self.slot_prompt[s]
            if p < 0 or self.next_index[p] >= self.n:
                if not self.queue:
                    continue
                p = self.queue.popleft()
            todo.append((s, p))
        if not todo:
            return []
        first = self.dec.prefill([s for s, _ in todo], [self.ids[p] for _, p in todo])  # (len(todo), V)
        if self.first_logits is None:
            self.first_logits = first.new_zeros(self.S, first.shape[-1])
        self.first_logits[torch.tensor([s for s, _ in todo], device=first.device)] = first
        fresh = []
        for s, p in todo:
            self.slot_prompt[s] = p
            for r in range(s * self.R, (s + 1) * self.R):
                if self.next_index[p] < self.n:
                    self._start_row(r, p)
                    fresh.append(r)
        return fresh

    def _start_row(self, r: int, p: int) -> None:
        i = self.next_index[p]
        self.next_index[p] += 1
        self.row[r] = (p, i)
        self.row_tokens[r], self.row_lps[r] = [], []
        self.keys_t[r] = self.key_ids[p]
        self.index_t[r] = i
        self.step_t[r] = 0
        self.active_t[r] = 1
