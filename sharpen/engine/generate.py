"""The one fast sampling path: N samples per prompt with their raw log-probs (the self-reward of Eq. 2).

Phases (gpt-fast style): `prefill` runs each prompt through the model ONCE, into a prompt slot of the
decoder's cache; `decode_step` advances every row of the batch by one token; `draw` (engine.sampler) picks
the next tokens. All N samples of a prompt attend to that one copy of its KV (see engine.decoder).
Continuous batching: a row that finishes starts a pending sample of a loaded prompt at once, and prompts are
loaded into free slots as the loaded ones run out of samples to start.

Guarantees:
* Log-probs are those of the raw model (temperature 1, no top-k/top-p) whatever temperature the draw uses,
  taken from the same logits as the draw, accumulated in fp32 or better. The ending token (EOS, or the token
  that completes a stop string) is included; responses cut by `max_new_tokens` have finish_reason "length".
* Numerics: a drawn token's log-prob is finite whenever the logits are (the draw never picks a token of zero
  probability). A NaN or infinite one means the forward pass broke (NaN weights, fp16 overflow): the row
  stops at that token with finish_reason "invalid" and logprob NaN, which selectors never pick as best.
* Determinism: token h of sample i of a prompt depends only on (seed, key, i, h) through a counter-based
  random stream, never on the batch size, the other prompts in the call, or the order rows finish. Token
  choices are therefore identical across batch compositions (barring a uniform that falls within float
  rounding of a cumulative-probability boundary, which happens with probability ~1e-7 per token); log-probs
  are identical up to float rounding when batch shapes differ, and bit-identical for identical calls. In bf16
  compute the logits themselves round differently with the batch shape, so another composition changes a
  token more often (identical calls still reproduce exactly).
* Precision: in fp32, per-token log-probs match `engine.scoring.score` to 1e-4 (tested; typically 1e-6).
  In bf16 compute (dtype=torch.bfloat16, or a model loaded in bf16) the logits themselves are bf16: on the
  embedded Gemma 3 270M, 768 sampled tokens differed from fp32 scores by median 0.02, p99 0.15, max 0.33 nats
  per token, and 32-token sums by 0.17 on average (max 0.8). MEASURED_BF16_TOLERANCE bounds one token.
  bf16 is about 2.2x faster on CPUs with AVX-512 BF16 or AMX (bench/sampling.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import SharpenError
from .arch import causal_lm
from .confidence import DEFAULT_WINDOW, lowest_group
from .decoder import make_decoder
from .models import sampling_dtype
from .prefix import PrefixCache
from .sampler import TOKEN_STATS, draw, key_hash, token_stats, uniforms
from .scoring import score

# Bound on |bf16 engine log-prob - fp32 score| per token: 0.33 was the largest of 768 tokens on the embedded model.
MEASURED_BF16_TOLERANCE = 0.5


@dataclass
class Sample:
    """One sampled response and its raw log-probs."""
    text: str  # decoded response, cut before a matched stop string, without EOS text
    token_ids: list[int]  # response tokens, including the ending token (EOS or the one completing a stop)
    token_logprobs: list[float]  # raw temperature-1 log-probs of token_ids
    logprob: float  # their sum: the self-reward r_self (Eq. 2)
    finish_reason: str  # "eos" | "stop" | "length" | "invalid" (NaN/inf log-prob: logprob is NaN)
    # Per token of token_ids, from the raw distribution it was drawn from (sampler.token_stats): "entropy",
    # "kl_uniform" (self-certainty term), "confidence" (DeepConf top-k); None when not recorded.
    token_stats: dict[str, list[float]] | None = None
    # Log-probs of token_ids under the distribution each was drawn from (softmax(logits / temperature)); power
    # sampling reads the tempered normalizer from them. None unless the call asked for them (record_draw).
    draw_logprobs: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class EarlyStop:
    """Online early stopping of low-confidence samples (DeepConf-online, Fu et al. 2025, arXiv 2508.15260).

    The first `warmup` samples of a prompt run in full; the threshold is the (1 - keep) quantile of their lowest
    group confidence (the least confident window of `window` tokens, DeepConf's token confidence averaged over
    the window). A later sample stops at the first full window whose confidence falls below it, with
    finish_reason "early_stop"; votes then ignore it. A prompt's later samples start only once its warm-up has
    finished, so whether a sample stops depends on its own tokens and the warm-up alone, never on the batch.
    """

    warmup: int = 8
    keep: float = 0.9  # DeepConf's eta: the share of warm-up traces above the threshold
    window: int = DEFAULT_WINDOW

    def threshold(self, lowest_groups: Sequence[float]) -> float:
        vals = sorted(v for v in lowest_groups if math.isfinite(v))
        if not vals:
            return -math.inf
        q = (1.0 - self.keep) * (len(vals) - 1)  # linear interpolation between order statistics
        lo = math.floor(q)
        return vals[lo] + (vals[min(lo + 1, len(vals) - 1)] - vals[lo]) * (q - lo)


def encode_prompts(model: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's special tokens (BOS)."""
    return [list(model.tokenizer.encode(p, add_special_tokens=True)) for p in prompts]


def sample(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], n: int, max_new_tokens: int,
           temperature: float = 1.0, seed: int = 0, stop: list[str] | None = None,
           keys: list[str] | None = None, ignore_eos: bool = False, progress: bool | str | None = False, *,
           dtype: torch.dtype | str | None = None, max_rows: int | None = None,
           backend: str = "auto", stats: bool = True, early_stop: EarlyStop | None = None,
           first_index: int = 0, exact_logprobs: bool = True, record_draw: bool = False,
           share_prefix: bool = True, heads: list[list[int]] | None = None,
           prefix_cache: PrefixCache | None = None) -> list[list[Sample]]:
    """Draw `n` responses per prompt; returns out[prompt][sample index].

    prompts: strings (encoded with BOS) or token-id lists. temperature 0 is greedy. keys: one string per prompt
    naming its random stream (default: a hash of its token ids). dtype: compute dtype (default the model's;
    "auto" picks bfloat16 for an fp32 model where the CPU has AVX-512 BF16 or AMX, or on a GPU). max_rows:
    rows decoded together (default from a memory budget). backend: "auto" (fast path when the architecture
    is supported), "fast" or "hf". stats: record each token's entropy, self-certainty term and DeepConf
    confidence (`Sample.token_stats`; sampler.token_stats), computed from the logits the token was drawn from.
    early_stop: stop low-confidence samples once each prompt's warm-up has set a threshold (EarlyStop; needs
    stats). first_index: draw samples first_index .. first_index + n - 1 of each prompt's stream (out[p][i] is
    sample first_index + i), so a prompt can be sampled in rounds and get the same samples as in one call.
    exact_logprobs: when the compute dtype is below the model's (bf16 sampling of a float32 model), re-score the
    finished responses teacher-forced in the model's own dtype (`rescore`), so the stored log-probs, and the
    self-reward, are the model's and not the bf16 kernels' (the per-token statistics stay those of the draw).
    record_draw: also keep each token's log-prob under the tempered distribution it was drawn from
    (`Sample.draw_logprobs`, computed while sampling, never re-scored). share_prefix: the fast decoder prefills
    the token prefix all prompts share (few-shot examples) once (`prefix.shared_prefix`); the same values up to
    float rounding, False runs every prompt whole. heads: token sequences to prefill once each instead, every
    prompt starting after the longest prefix it shares with one (power sampling's prompts and chains);
    prefix_cache: keeps the heads' KV across calls (prefix.PrefixCache), for callers that come back to them.
    """
    return _generate(model, prompts, n, max_new_tokens, temperature, seed, stop, keys, ignore_eos, progress,
                     dtype=dtype, max_rows=max_rows, backend=backend, stats=stats, early_stop=early_stop,
                     first_index=first_index, exact_logprobs=exact_logprobs, record_draw=record_draw,
                     share_prefix=share_prefix, heads=heads, prefix_cache=prefix_cache, with_greedy=False)


def sample_with_greedy(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], n: int, max_new_tokens: int,
                       temperature: float = 1.0, seed: int = 0, stop: list[str] | None = None,
                       keys: list[str] | None = None, **kwargs: Any) -> tuple[list[Sample], list[list[Sample]]]:
    """Each prompt's greedy response and its `n` samples from ONE call: one prefill per prompt serves both, and
    greedy rows are decoded beside the sampled ones. Returns (greedy[prompt], samples[prompt][index]), the same
    responses as `greedy` and `sample` with these arguments (up to float rounding of the batch shape)."""
    if kwargs.get("early_stop") is not None:
        raise SharpenError("early stopping applies to samples: draw the greedy responses in a call of their own")
    out = _generate(model, prompts, n, max_new_tokens, temperature, seed, stop, keys, with_greedy=True, **kwargs)
    return [row[n] for row in out], [row[:n] for row in out]


def _generate(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], n: int, max_new_tokens: int,
              temperature: float, seed: int, stop: list[str] | None, keys: list[str] | None,
              ignore_eos: bool = False, progress: bool | str | None = False, *, dtype: torch.dtype | str | None = None,
              max_rows: int | None = None, backend: str = "auto", stats: bool = True,
              early_stop: EarlyStop | None = None, first_index: int = 0, exact_logprobs: bool = True,
              record_draw: bool = False, share_prefix: bool = True, heads: list[list[int]] | None = None,
              prefix_cache: PrefixCache | None = None, with_greedy: bool = False) -> list[list[Sample]]:
    """`sample`; with_greedy: each prompt also gets a greedy response, as its row index n."""
    if n < 1 or max_new_tokens < 1:
        raise SharpenError(f"n={n} and max_new_tokens={max_new_tokens} must both be at least 1")
    if early_stop is not None and not stats:
        raise SharpenError("early stopping needs the per-token statistics: leave stats on")
    if early_stop is not None and first_index:
        raise SharpenError("early stopping needs each prompt's warm-up in the same call: use first_index=0")
    if temperature < 0 or not math.isfinite(temperature):
        raise SharpenError(f"temperature {temperature} must be >= 0 (0 means greedy)")
    ids = _prompt_ids(model, prompts)
    if keys is not None and len(keys) != len(ids):
        raise SharpenError(f"got {len(keys)} keys for {len(ids)} prompts: give one key per prompt or none")
    key_ids = [key_hash(k) for k in keys] if keys is not None else [key_hash(p) for p in ids]
    if not ids:
        return []
    stops = [s for s in (stop or []) if s]
    eos = set() if ignore_eos else set(model.eos_token_ids)
    module = model.module
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            dt = sampling_dtype(dtype, next(causal_lm(module).parameters()).dtype, model.device, exact_logprobs)
            rows = n + with_greedy
            decoder = make_decoder(model, ids, rows, max_new_tokens, dtype=dt, max_rows=max_rows, backend=backend,
                                   share_prefix=share_prefix, heads=heads, prefix_cache=prefix_cache)
            loop = _Loop(decoder, model.tokenizer, ids, key_ids, rows, max_new_tokens, temperature, seed,
                         eos, stops, progress, stats, early_stop, first_index, record_draw,
                         greedy_index=n if with_greedy else None)
            out = loop.run()
    finally:
        module.train(was_training)
    if exact_logprobs and dt != next(causal_lm(module).parameters()).dtype:
        rescore(model, ids, out)
    return out


def logprob_method(model: Any, dtype: torch.dtype | str | None, exact_logprobs: bool = True) -> str:
    """How `sample` computes the stored log-probs for this model and --sample-dtype: for summaries."""
    own = next(causal_lm(model.module).parameters()).dtype
    dt = sampling_dtype(dtype, own, model.device, exact_logprobs)
    name = str(own).removeprefix("torch.")
    if dt == own:
        return f"{name}, while sampling"
    if exact_logprobs:
        return f"{name}, re-scored after sampling in {str(dt).removeprefix('torch.')}"
    return f"{str(dt).removeprefix('torch.')}, while sampling (not re-scored: off by request)"


def rescore(model: Any, prompts: list[list[int]], out: list[list[Sample]], batch_size: int = 32) -> None:
    """Replace each sample's log-probs by a teacher-forced pass in the model's own dtype (`scoring.score`: one
    prefill per prompt, shared by its samples). Samples whose draw broke ("invalid") keep their NaN."""
    todo = [(p, s) for p, ss in zip(prompts, out, strict=True) for s in ss
            if s.token_ids and s.finish_reason != "invalid"]
    if not todo:
        return
    per_token = score(model, [p for p, _ in todo], [list(s.token_ids) for _, s in todo], batch_size=batch_size)
    for (_, s), lp in zip(todo, per_token, strict=True):
        s.token_logprobs = list(lp)
        s.logprob = float(math.fsum(lp))


def greedy(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], max_new_tokens: int,
           stop: list[str] | None = None, ignore_eos: bool = False, progress: bool | str | None = False,
           **kwargs: Any) -> list[Sample]:
    """Greedy decoding (temperature 0, one sample per prompt) through the same code path as `sample`."""
    out = sample(model, prompts, 1, max_new_tokens, temperature=0.0, stop=stop, ignore_eos=ignore_eos,
                 progress=progress, **kwargs)
    return [s[0] for s in out]


def response_text(tokenizer: Any, tokens: list[int], finish: str, stops: Sequence[str]) -> str:
    """A response's text: without the EOS token, cut before the stop string that ended it."""
    if finish == "stop":
        full = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = [j for j in (full.find(s) for s in stops if s) if j >= 0]
        return full[:min(cut)] if cut else full
    return tokenizer.decode(tokens[:-1] if finish == "eos" else tokens, skip_special_tokens=True)


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
    """Host-side bookkeeping of the decode loop: which row holds which sample, when rows end, refills.

    A row can take any pending sample of any loaded prompt (continuous batching); prompts are loaded into
    free slots of the decoder's prompt cache when the loaded ones have no samples left to start.
    """
    def __init__(self, decoder: Any, tokenizer: Any, ids: list[list[int]], key_ids: list[int], n: int,
                 max_new: int, temperature: float, seed: int, eos: set[int], stops: list[str],
                 progress: bool | str | None, stats: bool = True, early: EarlyStop | None = None,
                 first_index: int = 0, record_draw: bool = False, greedy_index: int | None = None) -> None:
        self.dec, self.tok, self.ids, self.key_ids = decoder, tokenizer, ids, key_ids
        # Sample index decoded greedily instead of drawn (sample_with_greedy: index n of n + 1), or None.
        self.greedy_index = greedy_index
        self.record_draw = record_draw
        self.n, self.max_new, self.temperature, self.seed = n, max_new, temperature, seed
        self.eos, self.stops, self.stats, self.first_index = eos, stops, stats, first_index
        self.early = early if early is not None and early.warmup < n else None
        self.warm: list[list[float]] = [[] for _ in ids]  # lowest group confidence of finished warm-up samples
        self.threshold: list[float | None] = [None] * len(ids)
        self.stop_window = max((len(s) for s in stops), default=0) + 8  # tokens decoded for the stop check
        self.B, self.S = decoder.rows, decoder.slots
        self.queue = deque(range(len(ids)))
        self.next_index = [0] * len(ids)  # next sample index to start, per prompt
        self.slot_prompt = [-1] * self.S
        self.slot_rows = [0] * self.S  # rows currently sampling each slot's prompt
        self.row: list[tuple[int, int] | None] = [None] * self.B  # (prompt, sample index) or idle
        self.row_slot = [-1] * self.B
        self.row_tokens: list[list[int]] = [[] for _ in range(self.B)]
        self.row_lps: list[list[float]] = [[] for _ in range(self.B)]
        self.row_lqs: list[list[float]] = [[] for _ in range(self.B)]
        self.row_stats: list[list[tuple[float, ...]]] = [[] for _ in range(self.B)]
        self.results: list[list[Sample | None]] = [[None] * n for _ in ids]
        dev = decoder.device
        self.keys_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) prompt-key hash per row
        self.index_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) sample index per row
        self.step_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) tokens drawn so far per row
        self.active_t = torch.zeros(self.B, dtype=torch.long, device=dev)  # (B,) 1 while the row has a sample
        self.greedy_t = torch.zeros(self.B, dtype=torch.bool, device=dev)  # (B,) rows decoding greedily
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            labelled = isinstance(progress, str)  # a caller's inner bar: gone when the call ends
            self.bar = tqdm(total=len(ids) * n, desc=progress if labelled else "sampling", unit="sample",
                            dynamic_ncols=True, leave=not labelled)

    def run(self) -> list[list[Sample]]:
        self._assign(list(range(self.B)))
        dev = self.dec.device
        # The rows with a response in progress: logits are computed for these only.
        live = [r for r in range(self.B) if self.row[r] is not None]
        logits = self.dec.start_logits(None if len(live) == self.B else torch.tensor(live, device=dev))  # (A, V)
        work = torch.empty(self.B, logits.shape[1], dtype=torch.float32, device=logits.device)  # for every draw
        # fp32 rows for the statistics of non-fp32 logits, reused by every step (sampler.token_stats)
        stats_buf = (torch.empty(min(16, self.B), logits.shape[1], dtype=torch.float32,
                                 device=logits.device) if self.stats and logits.dtype != torch.float32 else None)
        while True:
            # Rows that ended and were not refilled cost nothing below: the output layer and the draw (the
            # largest costs of a small model with a large vocabulary) run on the live rows only.
            lt = None if len(live) == self.B else torch.tensor(live, device=dev)  # (A,) or all rows

            def at(t: Tensor, lt: Tensor | None = lt) -> Tensor:
                return t if lt is None else t.index_select(0, lt)

            u = uniforms(self.seed, at(self.keys_t), at(self.index_t), at(self.step_t)) if self.temperature > 0 \
                else None
            w = work[:len(live)]
            drawn = draw(logits, self.temperature, u, w, with_draw=self.record_draw)  # (A,) each
            tok, lp = drawn[0], drawn[1]
            if self.greedy_index is not None and self.temperature > 0:
                tok, lp = self._greedy_rows(logits, tok, lp, at(self.greedy_t))
            # (A, 3) from the same raw logits; at temperature 0 and 1 `w` holds their softmax already
            parts = [tok[:, None].double(), lp[:, None].double()]
            if self.stats:
                p = w if self.temperature in (0.0, 1.0) else None
                parts.append(token_stats(logits, p, buf=stats_buf).double())
            if self.record_draw:
                parts.append(drawn[2][:, None].double())
            self.step_t += 1
            # The one host sync per step (float64 holds token ids and fp32 log-probs exactly).
            step = dict(zip(live, torch.cat(parts, dim=1).tolist(), strict=True))
            tok_l, lp_l = [0] * self.B, [math.nan] * self.B
            for r, st in step.items():
                tok_l[r], lp_l[r] = int(st[0]), st[1]
                if self.record_draw:
                    self.row_lqs[r].append(st[-1])
                if self.stats:
                    self.row_stats[r].append(tuple(st[2:2 + len(TOKEN_STATS)]))
            finished = [r for r in live if self._append(r, tok_l, lp_l)]
            if self.early is not None:  # rows left idle while a warm-up ran can start now
                finished = [r for r in range(self.B) if self.row[r] is None]
            fresh = self._assign(finished) if finished else []
            busy = [r for r in range(self.B) if self.row[r] is not None]
            if not busy:
                break
            bt = None if len(busy) == self.B else torch.tensor(busy, device=dev)
            live = busy
            if len(fresh) == len(busy):  # every row starts a new response: no token to feed
                logits = self.dec.start_logits(bt)
                continue
            # Response index of the fed token; idle and fresh rows write a harmless dummy at index 0.
            resp_pos = (self.step_t - 1).clamp_(min=0) * self.active_t  # (B,)
            width = max(len(self.row_tokens[r]) for r in busy)
            is_fresh = torch.zeros(self.B, dtype=torch.bool)
            is_fresh[fresh] = True
            fed = torch.tensor(tok_l, dtype=torch.long, device=dev)  # (B,) idle rows feed a dummy 0
            logits = self.dec.decode_step(fed, resp_pos, max(1, width), is_fresh.to(dev), bt)  # (A, V)
        if self.bar is not None:
            self.bar.close()
        return self.results  # type: ignore[return-value]

    def _greedy_rows(self, logits: Tensor, tok: Tensor, lp: Tensor, greedy: Tensor) -> tuple[Tensor, Tensor]:
        """The greedy rows' (mask `greedy`) tokens (argmax) and raw log-probs in place of the draw's, computed on
        those rows only."""
        g = greedy.nonzero().squeeze(-1)
        if not g.numel():
            return tok, lp
        x = logits.index_select(0, g).float()  # (G, V)
        best = x.argmax(-1)  # the first maximum, as draw's greedy path takes it
        glp = x.gather(-1, best[:, None]).squeeze(-1) - torch.logsumexp(x, dim=-1)
        return tok.index_copy(0, g, best), lp.index_copy(0, g, glp.to(lp.dtype))

    def _append(self, r: int, tok_l: list[int], lp_l: list[float]) -> bool:
        """Record row r's new token; True when the row's response has ended."""
        t = tok_l[r]
        self.row_tokens[r].append(t)
        self.row_lps[r].append(lp_l[r])
        if not math.isfinite(lp_l[r]):  # broken logits: this token is arbitrary and so is all that follows
            return self._finish(r, "invalid")
        if t in self.eos:
            return self._finish(r, "eos")
        if self.stops and self._stop_hit(self.row_tokens[r]):
            return self._finish(r, "stop")
        if len(self.row_tokens[r]) >= self.max_new:
            return self._finish(r, "length")
        if self.early is not None and self._below_threshold(r):
            return self._finish(r, "early_stop")
        return False

    def _below_threshold(self, r: int) -> bool:
        """DeepConf-online: the last full window of this (post-warm-up) sample is below its prompt's threshold."""
        p, i = self.row[r]  # type: ignore[misc]
        t, w = self.threshold[p], self.early.window  # type: ignore[union-attr]
        if i < self.early.warmup or t is None or len(self.row_stats[r]) < w:  # type: ignore[union-attr]
            return False
        return sum(st[2] for st in self.row_stats[r][-w:]) / w < t

    def _stop_hit(self, tokens: list[int]) -> bool:
        tail = self.tok.decode(tokens[-self.stop_window:], skip_special_tokens=True)
        return any(s in tail for s in self.stops)

    def _finish(self, r: int, reason: str) -> bool:
        p, i = self.row[r]  # type: ignore[misc]
        tokens, lps = self.row_tokens[r], self.row_lps[r]
        text = response_text(self.tok, tokens, reason, self.stops)
        logprob = math.nan if reason == "invalid" else math.fsum(lps)
        stats = ({name: [float(t[j]) for t in self.row_stats[r]] for j, name in enumerate(TOKEN_STATS)}
                 if self.stats else None)
        self.results[p][i] = Sample(text=text, token_ids=tokens, token_logprobs=lps, logprob=logprob,
                                    finish_reason=reason, token_stats=stats,
                                    draw_logprobs=self.row_lqs[r] if self.record_draw else None)
        if self.early is not None and i < self.early.warmup:
            self.warm[p].append(lowest_group(stats["confidence"], self.early.window))  # type: ignore[index]
            if len(self.warm[p]) == self.early.warmup:
                self.threshold[p] = self.early.threshold(self.warm[p])
        self.row[r] = None
        self.slot_rows[self.row_slot[r]] -= 1
        self.row_slot[r] = -1
        if self.bar is not None:
            self.bar.update(1)
        return True

    def _assign(self, free: list[int]) -> list[int]:
        """Start pending samples in the free rows; load prompts into free slots when needed. Returns the rows
        that start (their first token comes from their prompt's state)."""
        # A decoder without row refill restarts its rows only all together.
        can_start = self.dec.refill_rows or all(r is None for r in self.row)
        fresh: list[int] = []
        for r in free if can_start else []:
            s = self._pick_slot()
            if s is None and self._load_prompts():
                s = self._pick_slot()
            if s is None:
                break
            p = self.slot_prompt[s]
            i = self.next_index[p]
            self.next_index[p] += 1
            self.row[r], self.row_slot[r] = (p, i), s
            self.slot_rows[s] += 1
            self.row_tokens[r], self.row_lps[r], self.row_stats[r], self.row_lqs[r] = [], [], [], []
            fresh.append(r)
        idle = [r for r in free if self.row[r] is None]
        dev = self.dec.device
        if fresh:
            self.dec.start_rows(fresh)
            rows = torch.tensor(fresh, device=dev)
            self.keys_t[rows] = torch.tensor([self.key_ids[self.row[r][0]] for r in fresh], device=dev)
            self.index_t[rows] = torch.tensor([self.row[r][1] + self.first_index for r in fresh], device=dev)
            self.step_t[rows] = 0
            self.active_t[rows] = 1
            if self.greedy_index is not None:
                self.greedy_t[rows] = torch.tensor([self.row[r][1] == self.greedy_index for r in fresh], device=dev)
        if idle:
            self.active_t[torch.tensor(idle, device=dev)] = 0
        self.dec.set_rows(self.row_slot)
        return fresh

    def _pick_slot(self) -> int | None:
        """The loaded prompt with samples left and the fewest rows (keeps the slot groups balanced)."""
        best = None
        for s, p in enumerate(self.slot_prompt):
            if p >= 0 and self.next_index[p] < self.n and self._may_start(p) and (
                    best is None or self.slot_rows[s] < self.slot_rows[best]):
                best = s
        return best

    def _may_start(self, p: int) -> bool:
        """With early stopping, a prompt's samples after the warm-up wait for its threshold."""
        return self.early is None or self.next_index[p] < self.early.warmup or self.threshold[p] is not None

    def _load_prompts(self) -> bool:
        """Prefill queued prompts into every free slot (no rows, no samples left); False if none loaded."""
        free = [s for s in range(self.S) if self.slot_rows[s] == 0
                and (self.slot_prompt[s] < 0 or self.next_index[self.slot_prompt[s]] >= self.n)]
        todo = [(s, self.queue.popleft()) for s in free[:len(self.queue)]]
        if not todo:
            return False
        for s, p in todo:
            self.slot_prompt[s] = p
        self.dec.prefill([s for s, _ in todo], [self.ids[p] for _, p in todo])
        return True
