"""Decoders for the engine: a fast shared-prompt KV cache over Hugging Face weights, and a generic fallback.

A decoder holds `slots` prompts with `rows_per_slot` response rows each (B = slots * rows_per_slot rows) and
offers two phases:
  prefill(slots, prompts) -> (k, V) logits of the first response token of each prompt (one forward per prompt)
  decode_step(tokens (B,), resp_pos (B,), width) -> (B, V) next-token logits after feeding `tokens`

FastDecoder (Llama, Mistral, Qwen2/3, Phi-3, Gemma 3 text) keeps ONE copy of each prompt's KV, shape
(slots, kv_heads, max_prompt, head_dim), plus per-row response KV (B, kv_heads, max_new, head_dim), both
preallocated. In attention the R rows of a slot act as R x (heads per kv head) queries against their shared
prompt keys, so the prompt part is one batched matmul per layer and no prompt KV is copied. It reuses the
model's own modules (projections, norms, MLPs, rotary embedding), so LoRA adapters apply unchanged; only the
attention and the cache are written here. A row can restart at response position 0 at any step, which the
engine uses to start the prompt's next sample in a finished row.

The generic fallback for any other causal LM is `hf_decoder.HFDecoder`.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SharpenError
from .arch import attention_windows, backbone, cache_keyword, causal_lm, head_dim, kv_heads, lm_logits
from .hf_decoder import HFDecoder
from .prefix import PrefixCache, common_prefix, shared_prefix

FAST_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"}
_CAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (signature, cast copy)


def make_decoder(model: Any, prompts: list[list[int]], n: int, max_new: int, dtype: torch.dtype,
                 max_rows: int | None = None, backend: str = "auto", share_prefix: bool = True,
                 heads: list[list[int]] | None = None, prefix_cache: PrefixCache | None = None) -> Any:
    """Pick the decoder and its batch shape for this call; `dtype` is the compute dtype (models.sampling_dtype).
    share_prefix: the fast decoder runs the prefix all prompts share once (`shared_prefix`). heads: token prefixes
    to run once each instead (power sampling: each prompt and each chain, whose redraws share their prefixes);
    prefix_cache: where the heads' KV is kept across calls (prefix.PrefixCache)."""
    dt = dtype
    lm = module_in_dtype(causal_lm(model.module), dt)
    kind = getattr(lm.config, "model_type", "")
    if backend not in ("auto", "fast", "hf"):
        raise SharpenError(f"unknown backend {backend!r}: use auto, fast or hf")
    fast = kind in FAST_TYPES and backend != "hf"
    if backend == "fast" and not fast:
        raise SharpenError(f"no fast decoder for model type {kind!r}: use backend='hf' (or 'auto')")
    L = max(len(p) for p in prompts)
    per_token = _kv_bytes_per_token(lm.config, dt)
    budget, cap = _budget(model.device)
    if not fast:  # B copies of prompt + response in the model's own cache
        B = max_rows or max(1, min(cap, n, budget // max(1, per_token * (L + max_new))))
        return HFDecoder(lm, max(1, min(B, n)), model.device, cache_keyword(lm))
    B = min(max_rows or cap, len(prompts) * n)
    if heads is None:
        heads = [h for h in [shared_prefix(prompts)] if h] if share_prefix else []
    while True:
        # Enough prompt slots to keep every row busy while some prompts finish their last samples.
        S = max(1, min(len(prompts), B, -(-3 * B // (2 * n)) + 1))
        if max_rows or B == 1 or per_token * (B * max_new + S * L) <= budget:
            return FastDecoder(lm, B, S, L, max_new, model.device, heads=heads, cache=prefix_cache)
        B = max(1, B * 3 // 4)


def _kv_bytes_per_token(cfg: Any, dtype: torch.dtype) -> int:
    return 2 * cfg.num_hidden_layers * kv_heads(cfg) * head_dim(cfg) * dtype.itemsize


def _budget(device: torch.device) -> tuple[int, int]:
    """KV-cache budget in bytes and the most rows per step: a quarter of free memory, at most 4 GiB on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4, 1024
    free = 16 << 30
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        pass
    return min(4 << 30, free // 4), 256


def module_in_dtype(lm: Any, dtype: torch.dtype) -> Any:
    """`lm` itself if it already computes in `dtype`, else a cached copy cast to it (refreshed after training
    steps change the weights)."""
    if next(lm.parameters()).dtype == dtype:
        return lm
    sig = (dtype, tuple((p.data_ptr(), p._version) for p in lm.parameters()))
    hit = _CAST.get(lm)
    if hit is not None and hit[0] == sig:
        return hit[1]
    _CAST.pop(lm, None)
    cast = copy.deepcopy(lm).to(dtype).eval()
    _CAST[lm] = (sig, cast)
    return cast


_LLAMA_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm"}


def _fast_norm(mod: Any) -> Any:
    """The norm module as one fused rms_norm call, with the exact rounding of its Hugging Face forward."""
    name = type(mod).__name__
    if name == "Gemma3RMSNorm":  # x * rsqrt(mean x^2 + eps) * (1 + w), all in fp32
        w, eps = 1.0 + mod.weight.float(), mod.eps
        return lambda x: F.rms_norm(x.float(), (w.numel(),), w, eps).to(x.dtype)
    if name in _LLAMA_NORMS:  # normalized in fp32, cast back, then scaled by w
        w, eps = mod.weight, mod.variance_epsilon
        return lambda x: w * F.rms_norm(x.float(), (w.numel(),), None, eps).to(x.dtype)
    return mod


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the first cos.shape[-1] dims of x (..., D) (partial rotary as in Phi-3)."""
    d = cos.shape[-1]
    xr, xp = x[..., :d], x[..., d:]
    x1, x2 = xr[..., : d // 2], xr[..., d // 2:]
    rot = xr * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((rot, xp), dim=-1) if xp.shape[-1] else rot


class FastDecoder:
    """Shared-prompt KV decoding over a Hugging Face decoder-only model's own modules."""
    refill_rows = True
    compact = True  # shrink the compute set when most rows have ended (off: every step runs all B rows)

    def __init__(self, lm: Any, rows: int, slots: int, max_prompt: int, max_new: int,
                 device: torch.device, heads: list[list[int]] | None = None, cache: PrefixCache | None = None
                 ) -> None:
        cfg = lm.config
        self.lm, self.body = lm, backbone(lm)
        self.device, self.rows, self.slots = device, rows, slots
        self.layers = list(self.body.layers)[: cfg.num_hidden_layers]
        self.Hq, self.Hkv, self.D = cfg.num_attention_heads, kv_heads(cfg), head_dim(cfg)
        self.windows = attention_windows(cfg)
        types = getattr(cfg, "layer_types", None)
        takes_type = "layer_type" in inspect.signature(self.body.rotary_emb.forward).parameters
        self.rope_keys = [types[i] if takes_type else None for i in range(len(self.layers))]
        self.softcap = getattr(cfg, "attn_logit_softcapping", None)
        self.sandwich = hasattr(self.layers[0], "pre_feedforward_layernorm")  # Gemma: norms around each block
        names = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"]
        self.norms = [{k: _fast_norm(getattr(layer, k)) for k in names if hasattr(layer, k)}
                      | {k: _fast_norm(getattr(layer.self_attn, k)) for k in ("q_norm", "k_norm")
                         if hasattr(layer.self_attn, k)} for layer in self.layers]
        self.final_norm = _fast_norm(self.body.norm)
        head = lm.get_output_embeddings()
        plain = type(head) is torch.nn.Linear and head.bias is None
        self.head_w = head.weight if plain and not getattr(cfg, "final_logit_softcapping", None) else None
        self.logits_buf: Tensor | None = None
        dt = next(lm.parameters()).dtype
        kv = dict(dtype=dt, device=device)
        self.Lp, self.Lr = max_prompt, max_new
        # Preallocated caches, one pair per layer: prompt KV per slot (shared by all rows sampling that
        # prompt) and response KV per row.
        self.kp = [torch.zeros(slots, self.Hkv, max_prompt, self.D, **kv) for _ in self.layers]
        self.vp = [torch.zeros(slots, self.Hkv, max_prompt, self.D, **kv) for _ in self.layers]
        self.kr = [torch.zeros(rows, self.Hkv, max_new, self.D, **kv) for _ in self.layers]
        self.vr = [torch.zeros(rows, self.Hkv, max_new, self.D, **kv) for _ in self.layers]
        self.prompt_len = torch.ones(slots, dtype=torch.long, device=device)  # (S,)
        self.last_hidden = torch.zeros(slots, cfg.hidden_size, **kv)  # (S, H) final state after each prompt
        # Heads: token sequences (the few-shot header all prompts of the call share; power sampling's prompts and
        # chains) whose KV is computed once, when a prompt that shares tokens with one is first prefilled, and
        # copied into each such prompt's slot up to the tokens they share (keys and values of a causal model at
        # position j depend on tokens 0..j only), so a slot's prefill runs only the tokens after that. A head is
        # itself computed after the longest prefix it shares with a head already computed. With a cache, the
        # heads' KV outlives the call (prefix.PrefixCache).
        self.heads = [tuple(h) for h in heads or [] if h]
        sig = (id(lm), str(dt), tuple((p.data_ptr(), p._version) for p in lm.parameters())) if cache else None
        self.head_kv: dict[tuple[int, ...], tuple[list[Tensor], list[Tensor]]] = (
            cache.bind(sig) if cache is not None else {})
        # Compaction: the loop names rows 0..B-1 (logical); the caches hold them at physical rows. The layers run
        # on the physical rows 0..A-1 only, and every row with a response in progress lives there: when most
        # rows have ended and nothing refills them, the live rows' response KV moves to the front and A shrinks,
        # so an ended sample costs nothing in the layers either.
        self.phys = list(range(rows))  # logical -> physical
        self.A = rows
        self._started: set[int] = set()  # logical rows started since the last set_rows (their KV is fresh)
        self.set_rows([0] * rows)

    def set_rows(self, row_slot: list[int]) -> None:
        """Which slot's prompt each row continues (-1: idle). Rows of a slot are grouped, padded to the
        largest group, so the prompt part of attention is one batched matmul against each slot's KV."""
        busy = [r for r, s in enumerate(row_slot) if s >= 0]
        self._place(busy)
        A, S = self.A, self.slots
        slot_of = [-1] * A  # per physical row of the compute set
        for r in busy:
            slot_of[self.phys[r]] = row_slot[r]
        groups: list[list[int]] = [[] for _ in range(S)]
        for p, s in enumerate(slot_of):
            if s >= 0:
                groups[s].append(p)
        self.Rmax = max(1, max(len(g) for g in groups))
        qidx = torch.zeros((S, self.Rmax), dtype=torch.long)  # (S, Rmax) physical row; padding repeats row 0
        back = torch.zeros(A, dtype=torch.long)  # (A,) flat (slot, rank) of each row; idle rows: any
        for s, g in enumerate(groups):
            for k, p in enumerate(g):
                qidx[s, k] = p
                back[p] = s * self.Rmax + k
        self.qidx, self.back = qidx.flatten().to(self.device), back.to(self.device)
        self.row_slot = torch.tensor([max(s, 0) for s in row_slot], dtype=torch.long, device=self.device)
        self.phys_slot = torch.tensor([max(s, 0) for s in slot_of], dtype=torch.long, device=self.device)  # (A,)
        logical = [0] * self.rows
        for r, p in enumerate(self.phys):
            logical[p] = r
        self.logical = torch.tensor(logical[:A], dtype=torch.long, device=self.device)  # (A,) physical -> logical
        self.phys_t = torch.tensor(self.phys, dtype=torch.long, device=self.device)  # (B,) logical -> physical

    def _place(self, busy: list[int]) -> None:
        """Keep every busy row inside the compute set 0..A-1, and shrink the set when at most half of it is
        busy. A row started outside it takes the physical row of an idle one inside (its KV is cleared, as
        start_rows would), or the set grows back to all rows."""
        fresh, self._started = self._started, set()
        if not self.compact:
            return
        inside = {self.phys[r] for r in busy if self.phys[r] < self.A}
        free = [p for p in range(self.A) if p not in inside]
        owner = {p: r for r, p in enumerate(self.phys)}
        for r in busy:
            if self.phys[r] < self.A:
                continue
            if not free or r not in fresh:  # (a row not fresh never leaves the set; kept as a guard)
                self.A = self.rows
                break
            p = free.pop()
            other = owner[p]
            self.phys[r], self.phys[other] = p, self.phys[r]
            owner[p], owner[self.phys[other]] = r, other
            self._clear([p])
        if busy and 2 * len(busy) <= self.A and self.A >= 4:
            src = sorted(self.phys[r] for r in busy)
            order = {p: j for j, p in enumerate(src)}
            old = list(self.phys)
            idx = torch.tensor(src, dtype=torch.long, device=self.device)
            for i in range(len(self.layers)):  # gather first: the moves overlap
                self.kr[i][:len(src)] = self.kr[i].index_select(0, idx)
                self.vr[i][:len(src)] = self.vr[i].index_select(0, idx)
            for r in range(self.rows):
                self.phys[r] = order[old[r]] if old[r] in order else -1
            taken = set(order.values())
            rest = iter(p for p in range(self.rows) if p not in taken)
            self.phys = [p if p >= 0 else next(rest) for p in self.phys]
            self.A = len(src)

    def _clear(self, physical: list[int]) -> None:
        """Zero the response KV of these physical rows (masked keys still meet 0 * value in attention, so a
        broken earlier sample's NaN must not stay behind)."""
        idx = torch.tensor(physical, dtype=torch.long, device=self.device)
        for i in range(len(self.layers)):
            self.kr[i][idx] = 0
            self.vr[i][idx] = 0

    def start_rows(self, rows: list[int]) -> None:
        """Rows that begin a new response: clear their response KV."""
        self._clear([self.phys[r] for r in rows])
        self._started |= set(rows)

    # ---- shared pieces -------------------------------------------------------------------------------
    def _qkv(self, i: int, attn: Any, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., H) -> q (..., Hq, D), k and v (..., Hkv, D), with Gemma/Qwen3 q/k norms applied."""
        if hasattr(attn, "qkv_proj"):  # Phi-3 fuses the three projections
            q, k, v = attn.qkv_proj(x).split([self.Hq * self.D, self.Hkv * self.D, self.Hkv * self.D], dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = q.unflatten(-1, (self.Hq, self.D))
        k = k.unflatten(-1, (self.Hkv, self.D))
        v = v.unflatten(-1, (self.Hkv, self.D))
        if "q_norm" in self.norms[i]:
            q, k = self.norms[i]["q_norm"](q), self.norms[i]["k_norm"](k)
        return q, k, v

    def _rope(self, x: Tensor, positions: Tensor) -> dict[Any, tuple[Tensor, Tensor]]:
        """cos/sin per rotary kind (Gemma 3 uses a different theta for sliding layers): positions (B, T)."""
        out = {}
        for key in set(self.rope_keys):
            args = (x, positions) if key is None else (x, positions, key)
            out[key] = self.body.rotary_emb(*args)  # each (B, T, rot_dim)
        return out

    def _layer(self, i: int, layer: Any, h: Tensor, attend: Any) -> Tensor:
        """One decoder block around an attention function attend(attn_module, normed_h) -> (..., H)."""
        norm = self.norms[i]
        a = attend(layer.self_attn, norm["input_layernorm"](h))
        if self.sandwich:
            h = h + norm["post_attention_layernorm"](a)
            return h + norm["post_feedforward_layernorm"](layer.mlp(norm["pre_feedforward_layernorm"](h)))
        h = h + a
        return h + layer.mlp(norm["post_attention_layernorm"](h))

    def _logits(self, h: Tensor) -> Tensor:
        """(B, H) final states -> (B, V) logits, into a buffer reused across steps (a fresh (B, V) tensor
        every step would cost page faults comparable to the matmul itself on CPU)."""
        if self.head_w is None:
            return lm_logits(self.lm, h)
        if self.logits_buf is None or self.logits_buf.shape[0] < h.shape[0]:
            self.logits_buf = h.new_empty(h.shape[0], self.head_w.shape[0])
        return torch.mm(h, self.head_w.t(), out=self.logits_buf[:h.shape[0]])  # the first rows: contiguous

    # ---- phase 1: prefill ----------------------------------------------------------------------------
    def prefill(self, slots: list[int], prompts: list[list[int]]) -> None:
        """Run prompts (one forward each, batched) into the prompt KV and final state of `slots`."""
        by_head: dict[tuple, list[int]] = {}
        for j, p in enumerate(prompts):
            by_head.setdefault(self._head_of(p), []).append(j)
        for (h, P), js in by_head.items():
            if h is not None:
                self._load_head(h)
            per_call = max(1, 8192 // max(len(prompts[j]) for j in js))  # bounds the (k x T x (P + T)) scores
            for a in range(0, len(js), per_call):
                part = js[a:a + per_call]
                self._prefill([slots[j] for j in part], [prompts[j] for j in part], h, P)

    def _head_of(self, prompt: list[int]) -> tuple[tuple[int, ...] | None, int]:
        """The head sharing the most tokens with `prompt` (leaving it a token of its own) and that number: a
        computed head before one still to compute; (None, 0) when none shares a token."""
        t = tuple(prompt)
        best, size = None, 0
        for h in [*self.head_kv, *self.heads]:
            n = min(common_prefix(h, t), len(t) - 1)
            if n > size:
                best, size = h, n
        return best, size

    def _load_head(self, head: tuple[int, ...]) -> None:
        """KV of `head`, after the longest prefix it shares with a computed head (sliced when it is one's prefix)."""
        if head in self.head_kv:
            return
        base, P = None, 0
        for h in self.head_kv:
            n = common_prefix(h, head)
            if n > P:
                base, P = h, n
        past = ([k[:, :, :P] for k in self.head_kv[base][0]], [v[:, :, :P] for v in self.head_kv[base][1]]) \
            if base is not None else None
        if P == len(head):
            self.head_kv[head] = past  # type: ignore[assignment]
            return
        ids = torch.tensor([head[P:]], device=self.device)
        _, ks, vs = self._forward(ids, P, past)
        if past is not None:
            ks = [torch.cat([a, b], dim=2) for a, b in zip(past[0], ks, strict=True)]
            vs = [torch.cat([a, b], dim=2) for a, b in zip(past[1], vs, strict=True)]
        self.head_kv[head] = (ks, vs)

    def _prefill(self, slots: list[int], prompts: list[list[int]], head: tuple[int, ...] | None = None,
                 P: int = 0) -> None:
        """Prompts that share their first P tokens with `head` (computed): copy its KV, run the rest."""
        kc, vc = ([k[:, :, :P] for k in self.head_kv[head][0]], [v[:, :, :P] for v in self.head_kv[head][1]]) \
            if head is not None and P else ([], [])
        own = [p[P:] for p in prompts]
        k, T = len(own), max(len(o) for o in own)
        ids = torch.zeros(k, T, dtype=torch.long)
        for j, o in enumerate(own):
            ids[j, :len(o)] = torch.tensor(o)  # right padding: real tokens never see the pads (causal)
        h, ks, vs = self._forward(ids.to(self.device), P, (kc, vc) if P else None)
        sl = torch.tensor(slots, device=self.device)  # (k,)
        for i in range(len(self.layers)):
            if P:
                self.kp[i][sl, :, :P] = kc[i]
                self.vp[i][sl, :, :P] = vc[i]
            self.kp[i][sl, :, P:P + T] = ks[i]
            self.vp[i][sl, :, P:P + T] = vs[i]
            if P + T < self.Lp:  # a longer earlier prompt's tail is masked, but 0 * NaN would still leak
                self.kp[i][sl, :, P + T:] = 0
                self.vp[i][sl, :, P + T:] = 0
        own_len = torch.tensor([len(o) for o in own], device=self.device)  # (k,)
        self.prompt_len[sl] = own_len + P
        self.last_hidden[sl] = self.final_norm(h[torch.arange(k, device=self.device), own_len - 1])  # (k, H)

    def _forward(self, ids: Tensor, start: int, past: tuple[list[Tensor], list[Tensor]] | None
                 ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """ids (k, T) at absolute positions start .. start + T - 1, after `past` (per layer (1, Hkv, start, D) keys
        and values of a prefix every row shares; None when start = 0). Returns the last layer's states (k, T, H)
        and each layer's new keys and values (k, Hkv, T, D)."""
        k, T = ids.shape
        qpos = start + torch.arange(T, device=self.device)  # (T,) positions of the queries
        kpos = torch.arange(start + T, device=self.device)  # (start + T,) keys: the prefix, then these tokens
        causal = kpos[None, :] <= qpos[:, None]  # (T, start + T) query x key
        masks = {w: causal if w is None else causal & (kpos[None, :] > qpos[:, None] - w) for w in set(self.windows)}
        h = self.body.embed_tokens(ids)  # (k, T, H)
        rope = self._rope(h, qpos[None].expand(k, T))
        ks: list[Tensor] = []
        vs: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            def attend(attn: Any, x: Tensor, i: int = i) -> Tensor:
                q, kk, v = self._qkv(i, attn, x)  # (k, T, heads, D)
                cos, sin = rope[self.rope_keys[i]]
                q = _rotate(q, cos[:, :, None], sin[:, :, None]).transpose(1, 2)  # (k, Hq, T, D)
                kk = _rotate(kk, cos[:, :, None], sin[:, :, None]).transpose(1, 2)  # (k, Hkv, T, D)
                v = v.transpose(1, 2)
                ks.append(kk)
                vs.append(v)
                if past is not None:  # the shared prefix's keys and values, the same for every row
                    kk = torch.cat([past[0][i].expand(k, -1, -1, -1), kk], dim=2)  # (k, Hkv, start + T, D)
                    v = torch.cat([past[1][i].expand(k, -1, -1, -1), v], dim=2)
                o = self._full_attention(attn, q, kk, v, masks[self.windows[i]])  # (k, Hq, T, D)
                return attn.o_proj(o.transpose(1, 2).flatten(2))  # (k, T, H)
            h = self._layer(i, layer, h, attend)
        return h, ks, vs

    def _full_attention(self, attn: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        g = self.Hq // self.Hkv
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (k, Hq, T, D)
        s = torch.matmul(q, k.transpose(-1, -2)).float() * attn.scaling  # (k, Hq, T, T)
        if self.softcap:
            s = torch.tanh(s / self.softcap) * self.softcap
        s = s.masked_fill(~mask, float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1).to(q.dtype), v)  # (k, Hq, T, D)

    # ---- phase 2: one decode step for all rows --------------------------------------------------------
    def start_logits(self, live: Tensor | None = None) -> Tensor:
        """(B, V) logits of every row's first response token (its slot's prompt state); no forward. live: only
        these rows' (A,), as (A, V)."""
        slot = self.row_slot if live is None else self.row_slot.index_select(0, live)
        return self._logits(self.last_hidden[slot])

    def decode_step(self, tokens: Tensor, resp_pos: Tensor, width: int, fresh: Tensor,
                    live: Tensor | None = None) -> Tensor:
        """Feed tokens (B,) at response index resp_pos (B,), width = 1 + max resp_pos; rows with fresh (B,)
        set start a new response instead (their prompt's state). Returns (B, V) next-token logits, or only those
        of the rows `live` (A,) as (A, V): the output layer runs on them alone. The layers run on the compute
        set (set_rows), which holds every live row."""
        A, W = self.A, width
        lg = self.logical  # (A,) the logical row at each physical row of the compute set
        tokens, resp_pos, fresh = tokens.index_select(0, lg), resp_pos.index_select(0, lg), fresh.index_select(0, lg)
        plen = self.prompt_len[self.phys_slot]  # (A,)
        pos = plen + resp_pos  # (A,) absolute position of the fed token
        rows = torch.arange(A, device=self.device)
        # Masks over [prompt keys | response keys], one per window size.
        kp_idx = torch.arange(self.Lp, device=self.device)[None, :]  # (1, Lp)
        kr_idx = torch.arange(W, device=self.device)[None, :]  # (1, W)
        masks = {}
        for w in set(self.windows):
            ok_p = kp_idx < plen[:, None]
            ok_r = kr_idx <= resp_pos[:, None]
            if w is not None:
                ok_p = ok_p & (kp_idx > pos[:, None] - w)
                ok_r = ok_r & (kr_idx + plen[:, None] > pos[:, None] - w)
            masks[w] = ~torch.cat([ok_p, ok_r], dim=-1)[:, None, None]  # (A, 1, 1, Lp + W) True = hidden
        h = self.body.embed_tokens(tokens[:, None])  # (A, 1, H)
        rope = self._rope(h, pos[:, None])

        for i, layer in enumerate(self.layers):
            def attend(attn: Any, x: Tensor, i: int = i) -> Tensor:
                q, k, v = self._qkv(i, attn, x[:, 0])  # (A, Hq, D), (A, Hkv, D), (A, Hkv, D)
                cos, sin = rope[self.rope_keys[i]]
                cos, sin = cos[:, 0, None], sin[:, 0, None]  # (A, 1, rot), broadcast over heads
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
                self.kr[i][rows, :, resp_pos] = k
                self.vr[i][rows, :, resp_pos] = v
                o = self._decode_attention(attn, i, q, masks[self.windows[i]], W)  # (A, Hq * D)
                return attn.o_proj(o)[:, None]  # (A, 1, H)
            h = self._layer(i, layer, h, attend)
        h = torch.where(fresh[:, None], self.last_hidden[self.phys_slot], self.final_norm(h[:, 0]))  # (A, H)
        out = self.phys_t if live is None else self.phys_t.index_select(0, live)  # physical rows, logical order
        if live is None and A == self.rows and self.phys == sorted(self.phys):
            return self._logits(h)  # (B, V)
        return self._logits(h.index_select(0, out))  # (B or live, V)

    def _decode_attention(self, attn: Any, i: int, q: Tensor, mask: Tensor, W: int) -> Tensor:
        A, S, Rm, Hkv, D, Lp = self.A, self.slots, self.Rmax, self.Hkv, self.D, self.Lp
        g = self.Hq // Hkv
        # Prompt part: the rows of a slot (x g heads per kv head) are queries against its one prompt KV.
        qs = q[self.qidx].view(S, Rm, Hkv, g, D).permute(0, 2, 1, 3, 4).reshape(S, Hkv, Rm * g, D)
        sp = torch.matmul(qs, self.kp[i].transpose(-1, -2))  # (S, Hkv, Rm*g, Lp)
        sp = sp.view(S, Hkv, Rm, g, Lp).permute(0, 2, 1, 3, 4).reshape(S * Rm, Hkv, g, Lp)[self.back]
        # Response part: each row against its own keys.
        sr = torch.matmul(q.view(A, Hkv, g, D), self.kr[i][:A, :, :W].transpose(-1, -2))  # (A, Hkv, g, W)
        s = torch.cat([sp, sr], dim=-1).float() * attn.scaling  # (A, Hkv, g, Lp + W)
        if self.softcap:
            s = torch.tanh(s / self.softcap) * self.softcap
        p = torch.softmax(s.masked_fill_(mask, float("-inf")), dim=-1).to(q.dtype)  # fill, not add: NaN-proof
        pp = p[..., :Lp][self.qidx].view(S, Rm, Hkv, g, Lp).permute(0, 2, 1, 3, 4).reshape(S, Hkv, Rm * g, Lp)
        op = torch.matmul(pp, self.vp[i])  # (S, Hkv, Rm*g, D)
        op = op.view(S, Hkv, Rm, g, D).permute(0, 2, 1, 3, 4).reshape(S * Rm, Hkv, g, D)[self.back]
        orr = torch.matmul(p[..., Lp:], self.vr[i][:A, :, :W])  # (A, Hkv, g, D)
        return (op + orr).reshape(A, Hkv * g * D)
