"""What exact self-rewards cost: bf16 sampling, then the float32 re-scoring pass (`engine.generate.rescore`).

One process, one workload (P ProntoQA-style prompts, N samples, up to T new tokens, EOS honoured as in a real job),
over rounds: time `sample(dtype=bfloat16, exact_logprobs=False)`, then time `rescore` of those samples, then the
other exact route, `sample(dtype=float32)`. Prints each one's time and tokens/s, the re-scoring's extra time as a
share of the bf16 sampling time, and the error the pass removes: |bf16 log-prob - float32 log-prob| per response
(median, p90, p99, max) and per token.

    python bench/exact_logprobs.py                      # embedded model, 16 prompts x 8 samples x 96 tokens
    python bench/exact_logprobs.py --prompts 8 --n 16 --tokens 256
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from sampling import prontoqa_style_prompts  # bench/sampling.py, beside this file

from sharpen.engine.generate import encode_prompts, rescore, sample
from sharpen.engine.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    ids = encode_prompts(model, prontoqa_style_prompts(args.prompts))
    sample(model, ids[:1], n=2, max_new_tokens=4, dtype="bfloat16")  # warm-up (and the bf16 copy of the weights)
    t_sample = t_rescore = t_fp32 = 0.0
    tokens_fp32 = 0
    seq_err: list[float] = []
    tok_err: list[float] = []
    tokens = 0
    for r in range(args.rounds):
        start = time.perf_counter()
        raw = sample(model, ids, n=args.n, max_new_tokens=args.tokens, seed=r, dtype="bfloat16", exact_logprobs=False)
        t_sample += time.perf_counter() - start
        exact = copy.deepcopy(raw)
        start = time.perf_counter()
        rescore(model, ids, exact)
        t_rescore += time.perf_counter() - start
        start = time.perf_counter()
        fp32 = sample(model, ids, n=args.n, max_new_tokens=args.tokens, seed=r, dtype="float32")
        t_fp32 += time.perf_counter() - start
        tokens_fp32 += sum(len(s.token_ids) for ss in fp32 for s in ss)
        for rs, es in zip(raw, exact, strict=True):
            for a, b in zip(rs, es, strict=True):
                tokens += len(a.token_ids)
                seq_err.append(abs(a.logprob - b.logprob))
                tok_err += [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True)]
    q = np.quantile(seq_err, [0.5, 0.9, 0.99, 1.0])
    qt = np.quantile(tok_err, [0.5, 0.99, 1.0])
    print(f"sampling (bf16)      {t_sample:7.1f} s   {tokens / t_sample:7.1f} response tokens/s")
    print(f"float32 re-scoring   {t_rescore:7.1f} s   extra time: {100 * t_rescore / t_sample:.1f}% of sampling")
    both = t_sample + t_rescore
    print(f"bf16 + re-scoring    {both:7.1f} s   {tokens / both:7.1f} response tokens/s")
    print(f"sampling in float32  {t_fp32:7.1f} s   {tokens_fp32 / t_fp32:7.1f} response tokens/s (exact as drawn)")
    print(f"bf16 error removed, nats per response: median {q[0]:.3f}  p90 {q[1]:.3f}  p99 {q[2]:.3f}  max {q[3]:.3f}"
          f"  ({len(seq_err)} responses, mean {tokens / len(seq_err):.1f} tokens)")
    print(f"                    nats per token:    median {qt[0]:.4f}  p99 {qt[1]:.3f}  max {qt[2]:.3f}")
    print(f"({args.prompts} prompts x {args.n} samples, up to {args.tokens} tokens, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
