"""Per-row random streams and next-token draws: pure tensor functions used by the engine's decode loop.

Every response row owns a counter-based random stream: the uniform for token h of sample i of the prompt with
key k under seed s is hash(s, k, i, h). Nothing depends on which other rows share the batch, so the draws are
the same whatever the batch size or composition, on CPU and CUDA alike (the hash is integer arithmetic on
values below 2**49, so no overflow behaviour is relied on).

A token is drawn by inversion: the smallest token j whose cumulative tempered probability exceeds u. The
cumulative sum runs in two levels (blocks of about sqrt(V) tokens, then within the chosen block) in float64,
so no full-vocabulary float64 copy is made and the tail of a 262k vocabulary keeps its resolution.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from .confidence import DEFAULT_TOP_K

_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 32-bit x, without intermediate values above 2**49 (works on ints and tensors)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _mix32(x):
    """murmur3's 32-bit finalizer: a bijection with good avalanche (ints or int64 tensors of 32-bit values)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def key_hash(key: str | list[int]) -> int:
    """A stable 32-bit hash of a prompt key (a string, or the prompt's token ids)."""
    data = key.encode() if isinstance(key, str) else b",".join(str(int(t)).encode() for t in key)
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "little")


def seed_hash(seed: int) -> int:
    """Fold an arbitrary Python int seed into 32 bits."""
    h = 0x9E3779B9
    seed = int(seed)
    sign = 1 if seed < 0 else 0
    seed = abs(seed)
    while True:
        h = _mix32(h ^ (seed & _M32))
        seed >>= 32
        if seed == 0:
            break
    return _mix32(h ^ sign)


def uniforms(seed: int, keys: Tensor, index: Tensor, step: Tensor) -> Tensor:
    """u in (0, 1), float64, one per row: a function of (seed, key, sample index, step) only.

    keys: (B,) int64 32-bit prompt-key hashes; index: (B,) sample index; step: (B,) token position in the
    response. Returns (B,) float64 with 53 random bits.
    """
    h = _mix32(keys ^ seed_hash(seed))
    h = _mix32(h ^ (index & _M32))
    h = _mix32(h ^ (step & _M32))
    a = _mix32(h ^ 0x68E31DA4)  # two independent 32-bit words from the row state
    b = _mix32(a ^ 0xB5297A4D)
    return ((a << 21) + (b >> 11)).double().add_(0.5).mul_(2.0 ** -53)  # (B,)


def draw(logits: Tensor, temperature: float, u: Tensor | None, work: Tensor | None = None,
         with_draw: bool = False) -> tuple[Tensor, ...]:
    """Draw one token per row and return (tokens (B,) int64, raw log-probs (B,) fp32), plus, with `with_draw`,
    the log-probs of the tokens under the distribution they were drawn from, softmax(logits / temperature)
    ((B,) fp32; 0 at temperature 0, where the draw is deterministic).

    logits: (B, V) any float dtype. The draw uses softmax(logits / temperature) (temperature 0: argmax);
    the returned log-prob is always that of the raw temperature-1 softmax (Eq. 2), computed in fp32 from the
    same logits. work: an optional (B, V) fp32 buffer, reused across steps (fresh 100 MB+ allocations cost
    page faults on every step).
    """
    B, V = logits.shape
    if work is None:
        work = torch.empty(B, V, dtype=torch.float32, device=logits.device)
    lq = None
    if temperature == 0:
        tok = logits.argmax(dim=-1)  # first maximum on ties
        p = _softmax_into(logits, work)
        lq = torch.zeros(B, dtype=torch.float32, device=logits.device)
    elif temperature == 1.0:
        p = _softmax_into(logits, work)  # (B, V) raw probabilities
        tok = _invert_cdf(p, _need(u))
    else:
        work.copy_(logits).mul_(1.0 / temperature)
        tok = _invert_cdf(torch.softmax(work, dim=-1, out=work), _need(u))
        if with_draw:
            lq = work.gather(-1, tok[:, None]).squeeze(-1).log()
        if temperature > 1.0:
            # A hot draw can pick a token whose raw probability underflows fp32: use
            # log p = (x - max x) + log p_max, where p_max = 1 / sum exp(x - max x) never underflows.
            x_tok = logits.gather(-1, tok[:, None]).squeeze(-1).float()
            shift = x_tok - logits.amax(dim=-1).float()
            p_max = _softmax_into(logits, work).amax(dim=-1)
            lp = shift + p_max.log()
            return (tok, lp, lq) if with_draw else (tok, lp)
        p = _softmax_into(logits, work)
    lp = p.gather(-1, tok[:, None]).squeeze(-1).log()
    if not with_draw:
        return tok, lp
    return tok, lp, lp if lq is None else lq


TOP_K = DEFAULT_TOP_K  # DeepConf's token confidence averages the log-probs of the k most likely tokens
TOKEN_STATS = ("entropy", "kl_uniform", "confidence")


def token_stats(logits: Tensor, p: Tensor | None = None, k: int = TOP_K, buf: Tensor | None = None) -> Tensor:
    """Per-row statistics of the raw temperature-1 distribution p = softmax(logits): (B, V) -> (B, 3) fp32.

    Columns (TOKEN_STATS): the entropy H(p); KL(U || p) = -log V - mean_v log p(v), the self-certainty term of
    Kang et al. 2025 (arXiv 2502.18581); and DeepConf's token confidence -(1/k) sum_{top k} log p(v) (Fu et al.
    2025, arXiv 2508.15260). `p`: the fp32 softmax of these logits if the caller has it (`draw` leaves it in
    its work buffer at temperature 0 and 1), which saves a pass. With log p = x - lse:
    H = lse - sum p x, KL = lse - mean x - log V, confidence = lse - mean of the top-k x.
    Non-fp32 logits are converted a block of rows at a time into `buf` (rows, V) fp32, reused across calls:
    a fresh (B, V) fp32 copy per step would cost page faults on every step.
    """
    B, V = logits.shape
    if buf is None and logits.dtype != torch.float32:
        buf = torch.empty(min(B, 16), V, dtype=torch.float32, device=logits.device)
    rows = B if buf is None else buf.shape[0]
    out = torch.empty(B, 3, dtype=torch.float32, device=logits.device)
    for s in range(0, B, rows):
        x = logits[s:s + rows]
        xf = x if buf is None else buf[:x.shape[0]].copy_(x)  # (b, V) fp32
        ps = torch.softmax(xf, dim=-1) if p is None else p[s:s + rows]
        lse = xf.amax(-1) - ps.amax(-1).log()  # p_max = exp(max x - lse)
        out[s:s + rows, 0] = lse - torch.einsum("bv,bv->b", ps, xf)
        out[s:s + rows, 1] = lse - xf.mean(-1) - math.log(V)
        out[s:s + rows, 2] = lse - _top_k(xf, k).mean(-1)
    return out


def _top_k(x: Tensor, k: int) -> Tensor:
    """The k largest values per row of x (b, V), exactly: the top k lie in the k blocks with the largest
    maxima, so a full-vocabulary topk is replaced by a max per block and a topk over k blocks."""
    b, V = x.shape
    bs = max(1, math.isqrt(V))
    nb = V // bs
    if nb < 2 * k:
        return x.topk(min(k, V), dim=-1).values
    blocks = x[:, :nb * bs].reshape(b, nb, bs)
    best = blocks.amax(-1).topk(k, dim=-1).indices  # (b, k)
    cand = blocks.gather(1, best[:, :, None].expand(-1, -1, bs)).reshape(b, k * bs)
    if nb * bs < V:
        cand = torch.cat([cand, x[:, nb * bs:]], dim=1)  # the short last block is always a candidate
    return cand.topk(k, dim=-1).values


def _need(u: Tensor | None) -> Tensor:
    if u is None:
        raise ValueError("u is required when temperature > 0")
    return u


def _softmax_into(logits: Tensor, work: Tensor) -> Tensor:
    """softmax(logits) in fp32, written into work (B, V) without a new allocation."""
    if logits.dtype != torch.float32:
        work.copy_(logits)
        logits = work
    return torch.softmax(logits, dim=-1, out=work)  # softmax reads max and sum before writing: alias-safe


def _invert_cdf(p: Tensor, u: Tensor) -> Tensor:
    """Smallest j with cumsum(p)[j] > u * sum(p), per row; p (B, V) >= 0, not necessarily normalized."""
    B, V = p.shape
    bs = max(1, math.isqrt(V - 1) + 1)  # block size ~ sqrt(V): 512 for a 262144 vocabulary
    nb = V // bs
    sums = [p[:, :nb * bs].reshape(B, nb, bs).sum(-1)] if nb else []  # (B, nb)
    if nb * bs < V:
        sums.append(p[:, nb * bs:].sum(-1, keepdim=True))  # the short last block
    cum = torch.cat(sums, dim=-1).double().cumsum(-1)  # (B, nblocks) float64
    total = cum[:, -1]  # (B,)
    target = (u.to(cum.device) * total).unsqueeze(-1)  # (B, 1)
    blk = torch.searchsorted(cum, target, right=True).clamp_(max=cum.shape[1] - 1)  # (B, 1)
    before = torch.where(blk > 0, cum.gather(-1, (blk - 1).clamp(min=0)), torch.zeros_like(target))
    cols = blk * bs + torch.arange(bs, device=p.device)  # (B, bs) token ids of the chosen block
    inside = cols < V
    pb = p.gather(-1, cols.clamp(max=V - 1)) * inside  # (B, bs)
    cin = pb.double().cumsum(-1)  # (B, bs)
    j = torch.searchsorted(cin, target - before, right=True)  # (B, 1)
    # Rounding can leave the target at the block's end: fall back to its last token with nonzero mass.
    last = torch.where(pb > 0, torch.arange(bs, device=p.device), -1).amax(-1, keepdim=True)  # (B, 1)
    j = torch.minimum(j, last)
    return (blk * bs + j).squeeze(-1).clamp_(0, V - 1)  # NaN logits (a broken row) must not index out
