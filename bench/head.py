"""The LM head's product on CPU: h @ W.T against (W @ h.T).T (engine.arch.head_matmul), in one process.

The output layer of a small model with a large vocabulary is the largest cost of a decode step (Gemma 3 270M:
a 262k x 640 weight, 670 MB in float32, streamed once per step). BLAS libraries differ in how fast they stream it
for the few rows a decode step has; the engine forms the product with the weight as the left operand on CPU.
This prints, on the model's own head weight, the time of both forms and their ratio at several row counts, and
with --job the same real sampling job (first P ProntoQA prompts, greedy + N samples, EOS and stops honoured)
run with either form: response tokens per second and how many responses are token-identical.

    python bench/head.py --threads 1
    python bench/head.py --threads 1 --job --prompts 8 --n 8 --tokens 96
"""

from __future__ import annotations

import time

import realjob
import torch

from sharpen.engine import decoder
from sharpen.engine.arch import causal_lm, head_matmul
from sharpen.engine.generate import sample_with_greedy


def plain(h: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None,
          scratch: torch.Tensor | None = None) -> torch.Tensor:
    """h @ W.T as torch computes it by default."""
    return h @ weight.t() if out is None else torch.mm(h, weight.t(), out=out)


def best_of(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = realjob.parser(__doc__, prompts=8, n=8, tokens=96)
    ap.add_argument("--rows", default="1,4,9,16,36,64,144,256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--job", action="store_true", help="also run the real sampling job with either form")
    args = ap.parse_args()
    model, task, ids, stop = realjob.load(args)
    w = causal_lm(model.module).get_output_embeddings().weight.detach()
    print(f"{model.name}: head weight {tuple(w.shape)} {w.dtype} ({w.numel() * w.element_size() / 1e6:.0f} MB); "
          f"{torch.get_num_threads()} threads")
    with torch.inference_mode():
        for m in (int(r) for r in args.rows.split(",")):
            h = torch.randn(m, w.shape[1], dtype=w.dtype)
            out, scratch = torch.empty(m, w.shape[0], dtype=w.dtype), torch.empty(m * w.shape[0], dtype=w.dtype)
            a = best_of(lambda h=h, out=out: plain(h, w, out), args.repeats)
            b = best_of(lambda h=h, out=out, s=scratch: head_matmul(h, w, out, s), args.repeats)
            err = (plain(h, w) - head_matmul(h, w)).abs().max().item()
            print(f"  {m:4d} rows: h @ W.T {a * 1e3:7.1f} ms, engine {b * 1e3:7.1f} ms, ratio {a / b:.2f}, "
                  f"max |difference| {err:.1e}", flush=True)
    if not args.job:
        return

    def job() -> tuple[float, list]:
        t = time.perf_counter()
        g, s = sample_with_greedy(model, ids, args.n, args.tokens, temperature=1.0, seed=1, stop=stop, stats=False)
        return time.perf_counter() - t, [x for a, b in zip(g, s, strict=True) for x in (a, *b)]

    job()  # warm-up
    t_engine, out_engine = job()
    decoder.head_matmul = plain
    try:
        t_plain, out_plain = job()
    finally:
        decoder.head_matmul = head_matmul
    tokens = sum(x.num_tokens for x in out_engine)
    same = sum(a.token_ids == b.token_ids for a, b in zip(out_engine, out_plain, strict=True))
    print(f"job: {len(ids)} prompts x (greedy + {args.n}), up to {args.tokens} tokens: engine "
          f"{tokens / t_engine:.1f} tok/s, h @ W.T {sum(x.num_tokens for x in out_plain) / t_plain:.1f} tok/s, "
          f"ratio {t_plain / t_engine:.2f}; {same} of {len(out_engine)} responses token-identical")


if __name__ == "__main__":
    main()
