"""What recording per-token statistics costs while sampling (entropy, self-certainty term, DeepConf confidence).

Both sides run in one process on the same workload (P ProntoQA-style prompts, N samples, a fixed number of new
tokens with EOS ignored), alternating over rounds so that machine noise hits both: `sample(stats=False)` and
`sample(stats=True)`. Prints sampled tokens/s of each and the ratio.

    python bench/token_stats.py                         # embedded model, 8 prompts x 8 samples x 64 tokens
    python bench/token_stats.py --dtype bfloat16 --rounds 3
"""

from __future__ import annotations

import argparse
import time

import torch
from sampling import prontoqa_style_prompts  # bench/sampling.py, beside this file

from sharpen.engine.generate import encode_prompts, sample
from sharpen.engine.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="sampling compute dtype")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    ids = encode_prompts(model, prontoqa_style_prompts(args.prompts))
    total = {False: 0.0, True: 0.0}
    tokens = args.prompts * args.n * args.tokens
    sample(model, ids[:1], n=2, max_new_tokens=4, dtype=args.dtype)  # warm-up
    for _ in range(args.rounds):
        for stats in (False, True):
            start = time.perf_counter()
            sample(model, ids, n=args.n, max_new_tokens=args.tokens, ignore_eos=True, dtype=args.dtype, stats=stats)
            total[stats] += time.perf_counter() - start
    for stats in (False, True):
        print(f"stats={'on ' if stats else 'off'}  {tokens * args.rounds / total[stats]:8.1f} tokens/s")
    print(f"time with stats / without: {total[True] / total[False]:.3f} "
          f"({args.prompts} prompts x {args.n} samples x {args.tokens} tokens, {args.dtype}, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
