"""What prefilling a shared few-shot prefix once saves (`engine.prefix.shared_prefix`).

One process, one workload: the first P items of a task (their real prompts, which share the task's few-shot
header), greedy plus N samples up to T new tokens with EOS honoured, as `sharpen eval` and `sharpen bon` run them;
each round times the call with the shared prefix prefilled once and the same call with every prompt run whole,
counts the prompt rows whose tokens are identical both ways (a sampled token can differ where its uniform
falls within float rounding of a boundary between two tail tokens of a large vocabulary), and prints the times and
their ratio.

    python bench/prefix.py                                # embedded model, ProntoQA, 32 prompts, greedy + 4 samples
    python bench/prefix.py --task gsm8k --prompts 16 --tokens 64 --data-dir DIR
"""

from __future__ import annotations

import time

import realjob
import torch

from sharpen.engine.generate import sample
from sharpen.engine.prefix import shared_prefix


def main() -> None:
    ap = realjob.parser(__doc__, prompts=32, n=4, tokens=96)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    model, task, ids, stop = realjob.load(args)
    head = shared_prefix(ids)
    print(f"{model.name}, {args.task}: {len(ids)} prompts of {sum(map(len, ids)) / len(ids):.0f} tokens on average, "
          f"{len(head)} shared; greedy + {args.n} samples, up to {args.tokens} new tokens; "
          f"{torch.get_num_threads()} threads")
    sample(model, ids[:2], n=1, max_new_tokens=2)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        out = {}
        for share in (True, False):
            t = time.perf_counter()
            g = sample(model, ids, n=1, max_new_tokens=args.tokens, temperature=0.0, stop=stop, stats=False,
                       share_prefix=share)
            s = sample(model, ids, n=args.n, max_new_tokens=args.tokens, seed=1, stop=stop, stats=False,
                       share_prefix=share)
            times[share].append(time.perf_counter() - t)
            out[share] = [[x.token_ids for x in row] for row in g + s]
        same = sum(a == b for a, b in zip(out[True], out[False], strict=True))
        print(f"  shared prefix {times[True][-1]:.1f} s, whole prompts {times[False][-1]:.1f} s; "
              f"{same}/{len(out[True])} prompt rows token-identical")
    a, b = min(times[True]), min(times[False])
    print(f"best of {args.rounds}: shared prefix {a:.1f} s, whole prompts {b:.1f} s: {b / a:.2f}x")


if __name__ == "__main__":
    main()
