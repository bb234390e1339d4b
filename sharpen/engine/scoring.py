"""Token log-probabilities of given responses: the one primitive that best-of-N, training and evaluation share.

The self-reward of the paper is r_self(y | x) = sum_h log pi(y_h | x, y_<h) (Eq. 2), taken from the model's raw
next-token distribution (temperature 1). Everything here computes log-softmax in fp32, whatever the model's dtype.

Memory: Gemma 3 has a 262k-token vocabulary, so a (B x T x V) logits tensor does not fit for real batches.
`sequence_logprobs` runs the transformer body once, then applies the LM head only at response positions, a
`chunk` of positions at a time; with gradients on, each chunk is checkpointed so backward recomputes its logits
instead of keeping them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..errors import SharpenError
from .arch import backbone, cache_keyword, causal_lm, lm_logits
from .prefix import shared_prefix


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[labels] in fp32: logits (..., V), labels (...) -> (...)."""
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def response_token_logprobs(module: Any, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                            chunk: int = 256) -> Tensor:
    """Log-probs of the response tokens, flattened in row-major order: (B, T) masks -> (K,), K = mask.sum().

    response_mask[b, t] = 1 marks input_ids[b, t] as a response token, scored given input_ids[b, :t]; position 0
    can never be scored. Differentiable.
    """
    hidden = backbone(module)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    mask = response_mask.bool().clone()
    mask[:, 0] = False
    b_idx, t_idx = mask.nonzero(as_tuple=True)  # (K,), (K,) row-major
    h = hidden[b_idx, t_idx - 1]  # (K, H): the state before token t predicts token t
    labels = input_ids[b_idx, t_idx]  # (K,)
    return head_logprobs(module, h, labels, chunk)


def head_logprobs(module: Any, h: Tensor, labels: Tensor, chunk: int = 256) -> Tensor:
    """log softmax(LM head(h))[labels], `chunk` rows at a time: (K, H), (K,) -> (K,) fp32. Differentiable."""
    pieces = []
    grad = torch.is_grad_enabled() and h.requires_grad
    head = _frozen_head(module) if grad else None
    for start in range(0, h.shape[0], chunk):
        hs, ls = h[start:start + chunk], labels[start:start + chunk]
        if head is not None:
            # Frozen LM head (LoRA): d logp / d h computed in forward, no (chunk x V) logits kept or recomputed.
            pieces.append(_FrozenHeadLogprob.apply(hs, ls, head[0], head[1]))
        elif grad:
            # Recompute this chunk's (chunk x V) logits in backward instead of keeping them alive.
            pieces.append(checkpoint(_chunk_logprobs, module, hs, ls, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(module, hs, ls))
    if not pieces:
        return h.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def _chunk_logprobs(module: Any, h: Tensor, labels: Tensor) -> Tensor:
    return token_logprobs(lm_logits(module, h), labels)


def _frozen_head(module: Any) -> tuple[Tensor, float | None] | None:
    """(weight, soft-cap) of a bias-free linear LM head that takes no gradient (LoRA training), else None."""
    lm = causal_lm(module)
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return head.weight, getattr(lm.config, "final_logit_softcapping", None)


class _FrozenHeadLogprob(torch.autograd.Function):
    """log softmax(cap(h W^T))[label] with W frozen: (K, H) -> (K,) fp32.

    d logp / d h = ((onehot - p) * cap') W is computed chunk by chunk in forward, so backward is one scaling:
    two (K x V x H) matmuls per step instead of three with checkpointing, and no (K x V) tensor outlives a chunk.
    """
    @staticmethod
    def forward(ctx: Any, h: Tensor, labels: Tensor, weight: Tensor, cap: float | None) -> Tensor:
        with torch.no_grad():
            a = torch.nn.functional.linear(h, weight).float()  # (K, V)
            if cap:
                t = torch.tanh(a / cap)
                a = t * cap
            lp = token_logprobs(a, labels)  # (K,)
            g = torch.softmax(a, dim=-1).neg_()  # (K, V): onehot - p
            g.scatter_add_(-1, labels.unsqueeze(-1), torch.ones_like(lp).unsqueeze(-1))
            if cap:
                g.mul_(1 - t * t)  # d cap*tanh(a/cap) / da
            grad_h = torch.matmul(g.to(weight.dtype), weight)  # (K, H)
        ctx.save_for_backward(grad_h.to(h.dtype))
        return lp

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        (grad_h,) = ctx.saved_tensors
        return grad_out.to(grad_h.dtype).unsqueeze(-1) * grad_h, None, None, None


def sequence_logprobs(module: Any, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                      chunk: int = 256) -> Tensor:
    """Per-sequence sum of response-token log-probs (Eq. 2), differentiable: (B, T) -> (B,) fp32."""
    mask = response_mask.bool().clone()
    mask[:, 0] = False
    lp = response_token_logprobs(module, input_ids, attention_mask, mask, chunk)  # (K,)
    rows = mask.nonzero(as_tuple=True)[0]  # (K,) the row of each scored token
    out = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    return out.index_add(0, rows, lp)


def headed_sequence_logprobs(model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                             chunk: int = 256) -> Tensor:
    """(B,) summed response log-probs (Eq. 2) of a training batch, differentiable: when the prompts share a head of
    at least `decoder.MIN_SHARED_PREFIX` tokens (a task's few-shot examples), the head runs once for the batch (its
    forward and its gradient shared), then each prompt's own tail with its response; otherwise the padded batch.
    The same values and gradients as `sequence_logprobs` on the collated batch (tested)."""
    head = shared_prefix([list(p) for p in prompts])
    if not head:
        ids, attn, resp = collate(model, prompts, responses)
        return sequence_logprobs(model.module, ids, attn, resp, chunk)
    H, dev = len(head), model.device
    body = backbone(model.module)
    kw = cache_keyword(body)
    pre = body(input_ids=torch.tensor([head], device=dev), use_cache=True)
    ids, _, resp = collate(model, [p[H:] for p in prompts], responses)  # (B, L) tails + responses, right-padded
    B, L = ids.shape
    cache = getattr(pre, kw)
    cache.batch_repeat_interleave(B)  # (B, heads, H, D) per layer, still attached to the head's graph
    # Right padding after the real tokens: causal attention never lets a real token see a pad.
    h = body(input_ids=ids, **{kw: cache}, use_cache=True,
             attention_mask=torch.ones((B, H + L), dtype=torch.long, device=dev),
             position_ids=torch.arange(H, H + L, device=dev).expand(B, L)).last_hidden_state  # (B, L, H)
    b_idx, t_idx = resp.nonzero(as_tuple=True)  # (K,): each tail is non-empty, so t >= 1
    lp = head_logprobs(model.module, h[b_idx, t_idx - 1], ids[b_idx, t_idx], chunk)  # (K,)
    return torch.zeros(B, dtype=torch.float32, device=dev).index_add(0, b_idx, lp)


def collate(model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, response) token-id pairs -> right-padded input_ids, attention_mask, response_mask, all (B, T).

    Right padding leaves the positions of real tokens unchanged; the response mask marks the tokens a loss
    scores (the prompt is never a target).
    """
    T = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    pad = model.tokenizer.pad_token_id or 0
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), T), dtype=torch.long)
    resp = torch.zeros((len(prompts), T), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        n = len(p) + len(r)
        ids[b, :n] = torch.tensor([*p, *r], dtype=torch.long)
        attn[b, :n] = 1
        resp[b, len(p):n] = True
    return ids.to(model.device), attn.to(model.device), resp.to(model.device)


def _as_batch(ids: list[list[int]] | list[int]) -> tuple[list[list[int]], bool]:
    if len(ids) > 0 and isinstance(ids[0], int):
        return [list(ids)], True  # type: ignore[arg-type]
    return [list(x) for x in ids], False  # type: ignore[union-attr]


@torch.no_grad()
def score(model: Any, prompt_token_ids: list[list[int]] | list[int],
          response_token_ids: list[list[int]] | list[int], batch_size: int = 8,
          chunk: int = 256, progress: str | None = None, share_prompts: bool = True
          ) -> list[list[float]] | list[float]:
    """Per-token log-probs of each response given its prompt (raw distribution, fp32).

    `model` is a sharpen Model; prompts already include any BOS (see engine.encode_prompts). Single lists in,
    a single list out. The sum of a row is the self-reward r_self (Eq. 2). progress: a progress-bar label.
    share_prompts: responses to the same prompt reuse one prefill of it (same values, much less compute when
    prompts are long and responses short; off runs every sequence in full).
    """
    from tqdm.auto import tqdm

    prompts, single = _as_batch(prompt_token_ids)
    responses, single_r = _as_batch(response_token_ids)
    if single != single_r or len(prompts) != len(responses):
        raise SharpenError(f"score got {len(prompts)} prompts and {len(responses)} responses: "
                           "pass one response per prompt, both as lists of token-id lists")
    if any(len(p) == 0 for p in prompts):
        raise SharpenError("score got an empty prompt: every prompt needs at least one token (e.g. BOS)")
    module = model.module
    was_training = module.training
    module.eval()
    try:
        out: list[list[float]] = [[] for _ in prompts]
        # Responses that share a prompt (N samples of one prompt, a DPO pair) share one prefill of it.
        groups: dict[Any, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(tuple(p) if share_prompts else i, []).append(i)
        # Prompts that start alike (a task's few-shot header) run that prefix once, then each its own tail.
        head = shared_prefix([prompts[g[0]] for g in groups.values()]) if share_prompts else []
        pre_head = _prefill(model, head) if head else None
        shared = [g for g in groups.values() if len(g) > 1 or pre_head is not None]
        # Longest first so that padding within a batch stays small.
        alone = sorted((g[0] for g in groups.values() if len(g) == 1 and pre_head is None),
                        key=lambda i: -(len(prompts[i]) + len(responses[i])))
        with tqdm(total=len(prompts), desc=progress, unit="seq", disable=progress is None,
                  dynamic_ncols=True) as bar:
            for g in shared:
                _score_shared(model, prompts[g[0]], [responses[i] for i in g], chunk, [out[i] for i in g],
                              batch_size, (len(head), pre_head) if pre_head is not None else None)
                bar.update(len(g))
            for start in range(0, len(alone), batch_size):
                batch = alone[start:start + batch_size]
                _score_batch(model, [prompts[i] for i in batch], [responses[i] for i in batch], chunk,
                             [out[i] for i in batch])
                bar.update(len(batch))
    finally:
        module.train(was_training)
    return out[0] if single else out


def _score_batch(model: Any, prompts: list[list[int]], responses: list[list[int]], chunk: int,
                 outs: list[list[float]]) -> None:
    ids, attn, resp = collate(model, prompts, responses)
    _extend(outs, responses, response_token_logprobs(model.module, ids, attn, resp, chunk).tolist())


def _extend(outs: list[list[float]], responses: list[list[int]], flat: list[float]) -> None:
    """Split row-major per-token values back into one list per response."""
    pos = 0
    for r, out in zip(responses, outs, strict=True):
        out.extend(flat[pos:pos + len(r)])
        pos += len(r)


def _score_shared(model: Any, prompt: list[int], responses: list[list[int]], chunk: int, outs: list[list[float]],
                  batch_size: int, head: tuple[int, Any] | None = None) -> None:
    """Responses to one prompt: the prompt runs once, its KV cache is repeated for each batch of responses.
    head: (H, backbone output of the prompt's first H tokens), then only the rest of the prompt runs."""
    pre = _prefill(model, prompt) if head is None else _prefill_after(model, head[1], head[0], prompt[head[0]:])
    todo = sorted((i for i, r in enumerate(responses) if r), key=lambda i: -len(responses[i]))
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        rs = [responses[i] for i in batch]
        _extend([outs[i] for i in batch], rs, _after_prefill(model, pre, len(prompt), rs, chunk, copy_cache=True)
                .tolist())


def _prefill(model: Any, prompt: list[int]) -> Any:
    """The backbone's output (hidden states and KV cache) for one prompt."""
    return backbone(model.module)(input_ids=torch.tensor([prompt], device=model.device), use_cache=True)


def _prefill_after(model: Any, pre: Any, P: int, tail: list[int]) -> Any:
    """The backbone's output for a prompt whose first P tokens ran already (`pre`, kept intact): its remaining
    tokens `tail` run on a copy of that cache; the result holds the whole prompt's cache (no gradient)."""
    body, dev = backbone(model.module), model.device
    kw = cache_keyword(body)
    return body(input_ids=torch.tensor([tail], device=dev), **{kw: copy.deepcopy(getattr(pre, kw))}, use_cache=True,
                attention_mask=torch.ones((1, P + len(tail)), dtype=torch.long, device=dev),
                position_ids=torch.arange(P, P + len(tail), device=dev)[None])


def _after_prefill(model: Any, pre: Any, P: int, responses: list[list[int]], chunk: int, copy_cache: bool) -> Tensor:
    """(K,) log-probs of the tokens of `responses` (non-empty, row-major) given a prompt of P tokens whose
    backbone output is `pre`; its KV cache is repeated for the B responses (a copy first with copy_cache, so
    `pre` serves another batch). Differentiable, through the prompt's forward too."""
    body, dev = backbone(model.module), model.device
    kw = cache_keyword(body)
    h_last = pre.last_hidden_state[:, -1:]  # (1, 1, H): predicts each response's first token
    ids, _, mask = collate(model, [[]] * len(responses), responses)  # (B, L) responses alone, right-padded
    B, L = ids.shape
    cache = copy.deepcopy(getattr(pre, kw)) if copy_cache else getattr(pre, kw)
    cache.batch_repeat_interleave(B)  # (B, heads, P, D) per layer
    # Right padding after the real tokens: causal attention never lets a real token see a pad.
    h = body(input_ids=ids, **{kw: cache}, use_cache=True,
             attention_mask=torch.ones((B, P + L), dtype=torch.long, device=dev),
             position_ids=torch.arange(P, P + L, device=dev).expand(B, L)).last_hidden_state  # (B, L, H)
    before = torch.cat([h_last.expand(B, 1, -1), h[:, :-1]], dim=1)  # (B, L, H): state before each token
    return head_logprobs(model.module, before[mask], ids[mask], chunk)


def grouped_token_logprobs(model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                           chunk: int = 256) -> Tensor:
    """(K,) fp32 log-probs of every response token, differentiable: response i's tokens in order, responses in
    order (K = total response length; the same values as `response_token_logprobs` on the collated batch).

    Responses that share a prompt (GRPO's group of samples, a DPO pair) share one forward pass of it, so its cost
    and its gradient are taken once; responses alone with their prompt run as one right-padded batch.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(i)
    parts: list[Tensor] = [torch.zeros(0, device=model.device)] * len(prompts)
    alone = [g[0] for g in groups.values() if len(g) == 1]
    if alone:
        ids, attn, resp = collate(model, [prompts[i] for i in alone], [responses[i] for i in alone])
        flat = response_token_logprobs(model.module, ids, attn, resp, chunk)
        for i, piece in zip(alone, flat.split([len(responses[i]) for i in alone]), strict=True):
            parts[i] = piece
    for g in (g for g in groups.values() if len(g) > 1):
        live = [i for i in g if responses[i]]
        if not live:
            continue
        rs = [list(responses[i]) for i in live]
        flat = _after_prefill(model, _prefill(model, list(prompts[g[0]])), len(prompts[g[0]]), rs, chunk,
                              copy_cache=False)
        for i, piece in zip(live, flat.split([len(r) for r in rs]), strict=True):
            parts[i] = piece
    return torch.cat(parts) if parts else torch.zeros(0, device=model.device)


def grouped_sequence_logprobs(model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                              chunk: int = 256) -> Tensor:
    """(B,) summed response log-probs (Eq. 2) of `grouped_token_logprobs`, differentiable."""
    flat = grouped_token_logprobs(model, prompts, responses, chunk)
    rows = torch.repeat_interleave(torch.arange(len(responses), device=flat.device),
                                   torch.tensor([len(r) for r in responses], device=flat.device))
    return torch.zeros(len(responses), dtype=torch.float32, device=flat.device).index_add(0, rows, flat)
