"""Teacher-forced scoring speed: responses that share a prompt scored with one prefill of it, or each in full.

Best-of-N rows, DPO pairs and evaluation samples are N responses to one prompt; on ProntoQA-style prompts of
~300 tokens and short responses the prompt is most of the work. Both sides run in one process on the same
inputs and must agree to 1e-4 per token; prints sequences/s of each and the ratio.

    python bench/scoring.py                          # embedded model, 8 prompts x 8 responses of 32 tokens
    python bench/scoring.py --prompts 4 --n 4 --tokens 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from sampling import prontoqa_style_prompts  # noqa: E402

from sharpen.engine.generate import encode_prompts  # noqa: E402
from sharpen.engine.models import load_model  # noqa: E402
from sharpen.engine.scoring import score  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="responses per prompt")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per response")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    model = load_model()
    ids = encode_prompts(model, prontoqa_style_prompts(args.prompts))
    g = torch.Generator().manual_seed(0)
    prompts = [p for p in ids for _ in range(args.n)]
    responses = [torch.randint(10, 200_000, (args.tokens,), generator=g).tolist() for _ in prompts]
    print(f"model {model.name}, torch threads {torch.get_num_threads()}; {args.prompts} prompts of "
          f"{min(map(len, ids))}-{max(map(len, ids))} tokens x {args.n} responses of {args.tokens} tokens")
    score(model, prompts[:2], responses[:2])  # warm-up
    results = {}
    for name, share in (("each in full", False), ("shared prefill", True)):
        t = time.perf_counter()
        out = score(model, prompts, responses, batch_size=args.batch_size, share_prompts=share)
        dt = time.perf_counter() - t
        results[name] = (out, dt)
        print(f"{name:<16} {len(prompts):>5} sequences {dt:>8.1f} s {len(prompts) / dt:>8.2f} sequences/s")
    a, b = (results[k][0] for k in results)
    err = max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    ratio = results["each in full"][1] / results["shared prefill"][1]
    print(f"max |difference| {err:.2e} nats per token; shared prefill is x{ratio:.1f} faster")


if __name__ == "__main__":
    main()
