"""Ragged real jobs against a full batch: what rows that end early cost (engine compaction).

One process, one model, one set of rows. The real job: the first P items of a task (their real prompts), each
prompt's greedy response and N samples from one call (`sample_with_greedy`, as `sharpen bon` and every
evaluation run them), EOS and the task's stop strings honoured, so most rows end early and a few run to the token
limit. It runs twice: with compaction (rows that ended and cannot be refilled leave the layers' batch) and
without (every row computed until the call ends). The reference: the same prompts and number of rows as a full
batch (EOS ignored) for as many new tokens as the ragged job's mean response, so each row spends the whole call
decoding. Throughput is response tokens per second of wall time; the ratio that matters is ragged (compacted) /
full batch (the engine's target: at least 0.7). Samples of the two ragged runs are compared token by token.
Hugging Face `generate` runs the same ragged job on the first --hf-prompts prompts (greedy, then N samples with
`num_return_sequences`, EOS and stop strings honoured, per-token log-probs by `compute_transition_scores`), in the
model's dtype, for the engine-to-generate ratio on a real job.

    python bench/ragged.py                                        # embedded model, ProntoQA, 16 x (greedy + 8), 160
    python bench/ragged.py --task gsm8k --tokens 256 --data-dir DIR
"""

from __future__ import annotations

import argparse
import time

import realjob
import torch

from sharpen.engine import decoder
from sharpen.engine.generate import sample, sample_with_greedy


def main() -> None:
    ap = realjob.parser(__doc__, prompts=16, n=8, tokens=160)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--hf-prompts", type=int, default=2, help="prompts for the generate side (0: skip it)")
    ap.add_argument("--step-costs", action="store_true",
                    help="only time one decode step at 144, 36 and 9 rows (the first 9 prompts, EOS ignored)")
    args = ap.parse_args()
    model, task, ids, stop = realjob.load(args)
    if args.step_costs:
        step_costs(model, ids[:9])
        return
    rows = len(ids) * (args.n + 1)
    print(f"{model.name}, {args.task}: {len(ids)} prompts of {sum(map(len, ids)) / len(ids):.0f} tokens on average; "
          f"greedy + {args.n} samples each ({rows} rows), up to {args.tokens} new tokens, T = {args.temperature}; "
          f"{torch.get_num_threads()} threads, {next(model.module.parameters()).dtype}")
    sample(model, ids[:2], n=1, max_new_tokens=2)  # warm-up

    def ragged(compact: bool) -> tuple[float, int, list]:
        decoder.FastDecoder.compact = compact
        try:
            t = time.perf_counter()
            g, s = sample_with_greedy(model, ids, args.n, args.tokens, temperature=args.temperature, seed=1,
                                      stop=stop, stats=False)
            dt = time.perf_counter() - t
        finally:
            decoder.FastDecoder.compact = True
        out = [x for row in ([a, *b] for a, b in zip(g, s, strict=True)) for x in row]
        return dt, sum(x.num_tokens for x in out), out

    t_on, tok_on, out_on = ragged(True)
    t_off, tok_off, out_off = ragged(False)
    lengths = sorted(x.num_tokens for x in out_on)
    mean = tok_on / len(out_on)
    full_len = max(8, round(mean))
    t = time.perf_counter()
    full = sample(model, ids, n=args.n + 1, max_new_tokens=full_len, temperature=args.temperature, seed=1,
                  ignore_eos=True, stats=False)
    t_full = time.perf_counter() - t
    tok_full = sum(x.num_tokens for row in full for x in row)
    same = sum(a.token_ids == b.token_ids for a, b in zip(out_on, out_off, strict=True))
    print(f"ragged responses: mean {mean:.1f} tokens, median {lengths[len(lengths) // 2]}, max {lengths[-1]}, "
          f"{sum(n >= args.tokens for n in lengths)} at the limit")
    print(f"  ragged, compacted   {t_on:7.1f} s  {tok_on / t_on:7.1f} tok/s")
    print(f"  ragged, all rows    {t_off:7.1f} s  {tok_off / t_off:7.1f} tok/s   ({same}/{len(out_on)} responses "
          f"token-identical to the compacted run)")
    print(f"  full batch, {full_len} tokens {t_full:5.1f} s  {tok_full / t_full:7.1f} tok/s")
    print(f"ragged / full batch: compacted {tok_on / t_on / (tok_full / t_full):.2f}, "
          f"all rows {tok_off / t_off / (tok_full / t_full):.2f}; compaction speed-up {t_off / t_on:.2f}x")
    if args.hf_prompts:
        t_hf, tok_hf = hf_generate(model, ids[:args.hf_prompts], args, stop)
        print(f"  HF generate, {args.hf_prompts} prompts {t_hf:6.1f} s  {tok_hf / t_hf:7.1f} tok/s   "
              f"engine (ragged, compacted) / generate: {tok_on / t_on / (tok_hf / t_hf):.1f}x")


def step_costs(model, ids: list[list[int]]) -> None:
    """Seconds per decode step at 16, 4 and 1 rows per prompt: a 12-token call minus a 2-token call, over 10."""
    for per in (16, 4, 1):
        t = time.perf_counter()
        sample(model, ids, n=per, max_new_tokens=2, ignore_eos=True, stats=False)
        t0 = time.perf_counter() - t
        t = time.perf_counter()
        sample(model, ids, n=per, max_new_tokens=12, ignore_eos=True, stats=False)
        print(f"  {len(ids) * per:4d} rows: {(time.perf_counter() - t - t0) / 10:.2f} s per decode step", flush=True)


def hf_generate(model, ids: list[list[int]], args: argparse.Namespace, stop: list[str]) -> tuple[float, int]:
    """The same ragged job through `generate`, one prompt at a time: greedy, then N samples; response tokens
    counted up to and including the end (pads after a finished sequence are not counted)."""
    mod, tok = model.module, model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else model.eos_token_ids[0]
    tokens, dt = 0, 0.0
    for p in ids:
        x = torch.tensor([p], device=model.device)
        for n, sampled in ((1, False), (args.n, True)):
            t = time.perf_counter()
            with torch.inference_mode():
                gen = mod.generate(x, attention_mask=torch.ones_like(x), do_sample=sampled,
                                   temperature=args.temperature if sampled else None, top_k=0 if sampled else None,
                                   top_p=1.0 if sampled else None, num_return_sequences=n,
                                   max_new_tokens=args.tokens, output_scores=True, return_dict_in_generate=True,
                                   pad_token_id=pad, eos_token_id=model.eos_token_ids, stop_strings=stop or None,
                                   tokenizer=tok)
                mod.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
            dt += time.perf_counter() - t
            for row in gen.sequences[:, len(p):].tolist():
                k = len(row)
                while k and row[k - 1] == pad:
                    k -= 1
                tokens += k
    return dt, tokens


if __name__ == "__main__":
    main()
