"""Power sampling: draws from pi^alpha(y | x), proportional to pi(y | x)^alpha over whole responses, with no training.

pi_base^alpha is the optimum of RLHF-sharpening with beta = 1 / (alpha - 1) (pi_base^(1 + 1/beta), Sec. 2.2), so
power sampling is sharpening at inference time, without a reward model or training. It is not low-temperature
sampling: temperature 1/alpha sharpens each next-token distribution on its own, pi^alpha sharpens whole responses
(a token that leads to likely continuations gains; Karan & Du 2025, "Reasoning with Sampling", arXiv 2510.14901).

Both samplers propose from the token-level tempered model q(y_t | y_<t) = pi(y_t | y_<t)^alpha / Z(y_<t), the
engine at temperature 1/alpha. Along a response the target-to-proposal ratio is a product of normalizers,
pi(y)^alpha / q(y) = prod_t Z(y_<t), and log Z(y_<t) = alpha log pi(y_t | y_<t) - log q(y_t | y_<t) is read off
each drawn token (the engine's raw log-prob and its draw log-prob), so no extra forward pass is needed.

* `power_mh`: Metropolis-Hastings with suffix resampling (Karan & Du 2025), block-wise: the response grows by
  `block` tokens per stage, and after each stage every chain makes `steps` moves: pick a position t uniformly in
  its response y, redraw the suffix from q, accept y' with probability
  min(1, |y| / |y'| * prod_{suffix of y'} Z / prod_{suffix of y} Z). At the last stage the target is pi^alpha
  itself, which the chain leaves invariant (exact in the limit of steps).
* `power_smc`: sequential Monte Carlo (Power-SMC): P particles per prompt grow by `block` tokens per stage from
  q; each weight gains the normalizers of its new tokens; when the effective sample size falls below
  `threshold` x P the particles are resampled (systematic); a final resampling returns P equally weighted draws
  (exact as P grows).

Batched on the engine: every proposal of every chain of every prompt in one `sample` call per step, and
continuations that share their prompt and prefix (SMC particles after resampling) share one prefill. Each prompt
and each chain's current response are decoder heads whose keys and values outlive the call (a
`prefix.PrefixCache` per sampler run, pruned to the current chains after every step): a prompt is prefilled once
per run, a chain's new tokens once when the chain takes them, and a suffix redraw from position t copies its kept
prefix from its chain instead of recomputing it. Tokens spent count every drawn token, rejected proposals
included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .generate import Sample, response_text, sample
from .prefix import PrefixCache
from .sampler import key_hash


@dataclass
class Chain:
    """One chain (MH) or particle (SMC): a response and, per token, log pi and log Z of the proposal."""
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    logzs: list[float] = field(default_factory=list)
    finish: str = "length"

    def open(self, cap: int) -> bool:
        """Still growing: not ended by EOS / a stop string, and shorter than the stage's cap."""
        return self.finish == "length" and len(self.tokens) < cap

    def with_suffix(self, t: int, s: Sample, alpha: float) -> Chain:
        # log pi(token)^alpha / q(token): with q at temperature 1/alpha, the log normalizer log Z(prefix)
        lz = [alpha * lp - lq for lp, lq in zip(s.token_logprobs, s.draw_logprobs or [], strict=True)]
        return Chain(self.tokens[:t] + list(s.token_ids), self.logps[:t] + list(s.token_logprobs),
                     self.logzs[:t] + lz, s.finish_reason)


@dataclass
class PowerStats:
    """Per prompt: what the sampler spent and how it mixed."""
    tokens: int = 0  # every drawn token, rejected proposals included
    proposals: int = 0
    accepted: int = 0
    resamples: int = 0
    ess: list[float] = field(default_factory=list)  # SMC: effective sample size after each stage (before resampling)

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "proposals": self.proposals, "accepted": self.accepted,
                "acceptance_rate": self.accepted / self.proposals if self.proposals else None,
                "resamples": self.resamples, "min_ess": min(self.ess) if self.ess else None,
                "final_ess": self.ess[-1] if self.ess else None}


def _continue(model: Any, requests: Sequence[tuple[list[int], list[int], str]], max_new: Sequence[int],
              temperature: float, seed: int, stop: list[str] | None, dtype: Any, cache: PrefixCache | None = None,
              chains: Sequence[list[int]] = ()) -> list[Sample]:
    """A continuation from q (the engine at `temperature`) of each (prompt, prefix, key) request, at most max_new[i]
    tokens, in as few engine calls as there are distinct group sizes. Requests with the same prompt, prefix and
    key share one prefill; their draws are samples 0, 1, ... of that key's stream. Log-probs are the model's own
    (`sample`'s exact_logprobs) and draw log-probs those of the distribution actually drawn from, so the weights
    alpha log pi - log q are exact importance ratios even when the draw computes in bf16. A call runs to its largest
    budget and each continuation is cut at its own: the same tokens a call with that budget would draw (token h
    depends on (seed, key, index, h) only). chains: the chains' current sequences (prompt + response), heads of
    the decoder beside the prompts, their KV kept in `cache` across calls."""
    heads = [list(h) for h in {**{tuple(p): None for p, _, _ in requests}, **{tuple(c): None for c in chains}}]
    groups: dict[tuple, list[int]] = {}
    for i, (p, pre, key) in enumerate(requests):
        groups.setdefault((tuple(p) + tuple(pre), key), []).append(i)
    by_size: dict[int, list[tuple]] = {}
    for g, members in groups.items():
        by_size.setdefault(len(members), []).append(g)
    out: list[Sample | None] = [None] * len(requests)
    for size, gs in by_size.items():
        budget = max(max_new[i] for g in gs for i in groups[g])
        drawn = sample(model, [list(g[0]) for g in gs], n=size, max_new_tokens=budget, temperature=temperature,
                       seed=seed, stop=stop, keys=[g[1] for g in gs], dtype=dtype, stats=False, record_draw=True,
                       heads=heads, prefix_cache=cache)
        for g, ss in zip(gs, drawn, strict=True):
            for j, i in enumerate(groups[g]):
                out[i] = _cut(ss[j], max_new[i])
    if cache is not None:  # what the next call builds on: the prompts and these chains (a chain that moves
        cache.keep(heads)  # is computed after the prefix it shares with its state here)
    return out  # type: ignore[return-value]


def _sequences(prompts: Sequence[Sequence[int]], state: Sequence[Sequence[Chain]]) -> list[list[int]]:
    """Each started chain's (particle's) prompt + response: the decoder heads whose KV the calls reuse."""
    return [list(prompts[p]) + ch.tokens for p in range(len(prompts)) for ch in state[p] if ch.tokens]


def _cut(s: Sample, budget: int) -> Sample:
    """The first `budget` tokens of a continuation (finish 'length' when that cuts it)."""
    if len(s.token_ids) <= budget:
        return s
    lps = s.token_logprobs[:budget]
    return Sample(text="", token_ids=s.token_ids[:budget], token_logprobs=lps, logprob=math.fsum(lps),
                  finish_reason="length", draw_logprobs=(s.draw_logprobs or [])[:budget])


def _samples(model: Any, chains: Sequence[Chain], stop: list[str] | None) -> list[Sample]:
    """Final chains as engine Samples (text decoded from the whole response, cut at a stop string)."""
    out = []
    for c in chains:
        out.append(Sample(text=response_text(model.tokenizer, c.tokens, c.finish, stop or []),
                          token_ids=list(c.tokens), token_logprobs=list(c.logps), logprob=math.fsum(c.logps),
                          finish_reason=c.finish))
    return out


def _caps(max_new_tokens: int, block: int | None) -> list[int]:
    b = block or max_new_tokens
    return [min(k * b, max_new_tokens) for k in range(1, -(-max_new_tokens // b) + 1)]


def _rng(seed: int, key: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, key_hash(key), *more])


def power_mh(model: Any, prompts: Sequence[Sequence[int]], alpha: float, chains: int, steps: int,
             max_new_tokens: int, block: int | None = None, keys: Sequence[str] | None = None, seed: int = 0,
             stop: list[str] | None = None, dtype: Any = None, temperature: float | None = None
             ) -> tuple[list[list[Sample]], list[PowerStats]]:
    """`chains` draws per prompt from pi^alpha by block-wise MH with suffix resampling (see the module doc);
    returns out[prompt][chain] (the chains' final states, with raw temperature-1 log-probs) and per-prompt stats.
    Deterministic in (seed, key, chain): a chain's proposals, positions and acceptances never depend on the
    batch. temperature: of the proposal (default 1/alpha); any other is corrected for by the same ratio."""
    temp = temperature or 1.0 / alpha
    keys = list(keys) if keys is not None else [str(key_hash(list(p))) for p in prompts]
    state = [[Chain() for _ in range(chains)] for _ in prompts]
    stats = [PowerStats() for _ in prompts]
    cache = PrefixCache()
    for k, cap in enumerate(_caps(max_new_tokens, block)):
        # Grow every open chain to this stage's cap.
        todo = [(p, c) for p in range(len(prompts)) for c in range(chains) if state[p][c].open(cap)]
        if todo:
            # Chains still empty (the first block) share one stream and one prefill of their prompt.
            reqs = [(list(prompts[p]), state[p][c].tokens,
                     f"{keys[p]}/first" if not state[p][c].tokens else f"{keys[p]}/{c}") for p, c in todo]
            new = _continue(model, reqs, [cap - len(state[p][c].tokens) for p, c in todo], temp,
                            seed * 1_000_003 + 7_919 * k, stop, dtype, cache, _sequences(prompts, state))
            for (p, c), s in zip(todo, new, strict=True):
                ch = state[p][c]
                state[p][c] = ch.with_suffix(len(ch.tokens), s, alpha)
                stats[p].tokens += len(s.token_ids)
        # MH moves at this stage's target (pi^alpha of responses cut at `cap`).
        for m in range(steps):
            pos, us, reqs, todo = [], [], [], []
            for p in range(len(prompts)):
                for c in range(chains):
                    ch = state[p][c]
                    if not ch.tokens:
                        continue
                    g = _rng(seed, keys[p], c, k, m)
                    pos.append(int(g.integers(len(ch.tokens))))
                    us.append(float(g.random()))
                    todo.append((p, c))
                    reqs.append((list(prompts[p]), ch.tokens[:pos[-1]], f"{keys[p]}/{c}/{k}/{m}"))
            if not todo:
                break
            step_seed = seed * 1_000_003 + 7_919 * k + 104_729 * (m + 1)
            new = _continue(model, reqs, [cap - t for t in pos], temp, step_seed, stop, dtype, cache,
                            _sequences(prompts, state))
            for (p, c), t, u, s in zip(todo, pos, us, new, strict=True):
                ch = state[p][c]
                prop = ch.with_suffix(t, s, alpha)
                stats[p].tokens += len(s.token_ids)
                stats[p].proposals += 1
                log_a = (math.log(len(ch.tokens)) - math.log(len(prop.tokens))
                         + math.fsum(prop.logzs[t:]) - math.fsum(ch.logzs[t:]))
                if math.isfinite(log_a) and math.log(max(u, 1e-300)) < min(0.0, log_a):
                    state[p][c] = prop
                    stats[p].accepted += 1
    return [_samples(model, cs, stop) for cs in state], stats


def power_smc(model: Any, prompts: Sequence[Sequence[int]], alpha: float, particles: int, max_new_tokens: int,
              block: int = 16, threshold: float = 0.5, keys: Sequence[str] | None = None, seed: int = 0,
              stop: list[str] | None = None, dtype: Any = None, temperature: float | None = None
              ) -> tuple[list[list[Sample]], list[PowerStats]]:
    """`particles` equally weighted draws per prompt approximating pi^alpha by SMC (see the module doc); returns
    out[prompt][particle] and per-prompt stats (resamplings, effective sample sizes). temperature: of the proposal
    (default 1/alpha)."""
    temp = temperature or 1.0 / alpha
    keys = list(keys) if keys is not None else [str(key_hash(list(p))) for p in prompts]
    state = [[Chain() for _ in range(particles)] for _ in prompts]
    logw = [np.zeros(particles) for _ in prompts]
    stats = [PowerStats() for _ in prompts]
    caps = _caps(max_new_tokens, block)
    cache = PrefixCache()  # each particle's sequence is a head: a stage computes only its new block
    for k, cap in enumerate(caps):
        todo = [(p, i) for p in range(len(prompts)) for i in range(particles) if state[p][i].open(cap)]
        if todo:
            # Particles that share a prefix (all of them at the start, copies after a resampling) share one
            # prefill: the stream key names the prefix, and its draws are samples 0, 1, ... of that stream.
            reqs = [(list(prompts[p]), state[p][i].tokens,
                     f"{keys[p]}#{k}#{key_hash(state[p][i].tokens) if state[p][i].tokens else 0}") for p, i in todo]
            new = _continue(model, reqs, [cap - len(state[p][i].tokens) for p, i in todo], temp,
                            seed * 1_000_003 + 7_919 * k, stop, dtype, cache, _sequences(prompts, state))
            for (p, i), s in zip(todo, new, strict=True):
                ch = state[p][i]
                state[p][i] = ch.with_suffix(len(ch.tokens), s, alpha)
                logw[p][i] += math.fsum(state[p][i].logzs[len(ch.tokens):])
                stats[p].tokens += len(s.token_ids)
        last = k == len(caps) - 1
        for p in range(len(prompts)):
            w = _normalized(logw[p])
            ess = float(1.0 / np.sum(w * w))
            stats[p].ess.append(ess)
            if last or ess < threshold * particles:  # the final resampling returns equally weighted draws
                idx = _systematic(w, _rng(seed, keys[p], k))
                state[p] = [Chain(list(state[p][j].tokens), list(state[p][j].logps), list(state[p][j].logzs),
                                  state[p][j].finish) for j in idx]
                logw[p] = np.zeros(particles)
                stats[p].resamples += 0 if last else 1
    return [_samples(model, cs, stop) for cs in state], stats


def _normalized(logw: np.ndarray) -> np.ndarray:
    ok = np.where(np.isfinite(logw), logw, -np.inf)
    if not np.isfinite(ok).any():
        return np.full(len(logw), 1.0 / len(logw))
    w = np.exp(ok - ok.max())
    return w / w.sum()


def _systematic(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling: indices of len(w) draws, ancestor j taken about len(w) * w[j] times."""
    n = len(w)
    positions = (rng.random() + np.arange(n)) / n
    cum = np.cumsum(w)
    cum[-1] = 1.0
    return np.searchsorted(cum, positions, side="right").clip(max=n - 1)
