"""Training-step speed: a plain PEFT LoRA step with `labels=` versus ours (logits only at response tokens).

Both sides run in one process on the same batch (B sequences of T tokens, the last T - prompt_len of them the
response) with the same LoRA adapters and AdamW. The plain side is what a Hugging Face Trainer does: full
(B, T, V) logits, cross-entropy on the response labels (prompt labels -100). Ours is the SFT loss of
`sharpen sft`: `scoring.sequence_logprobs`, which runs the transformer body once and applies the LM head only
at response positions, in chunks; with the head frozen (LoRA) each chunk's d logp / d h is formed in forward, so
backward never recomputes logits. ours_ckpt is the earlier variant that checkpoints each chunk instead.
Prints the median step time, tokens/s of each and their ratio, with a per-phase split (forward / backward /
optimizer), then the top operators of one profiled step.

    python bench/training.py                       # embedded Gemma 3 270M, fp32, batch 4 x 256
    python bench/training.py --sides plain,ours_ckpt,ours,ours+bf16,ours+gc --prompt-len 192
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from sharpen.config import TrainConfig
from sharpen.engine.arch import set_checkpointing
from sharpen.engine.models import load_model
from sharpen.stages.sft import sft_batch_loss
from sharpen.train.lora import attach_lora


def make_batch(model: Any, batch: int, length: int, prompt_len: int, seed: int = 0) -> list[dict]:
    """Random token ids (specials excluded): B examples of prompt_len prompt + (length - prompt_len) response."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.module.config.vocab_size
    rows = []
    for _ in range(batch):
        ids = torch.randint(10, min(vocab, 200_000), (length,), generator=g).tolist()
        rows.append({"prompt_token_ids": ids[:prompt_len], "token_ids": ids[prompt_len:]})
    return rows


def plain_loss(model: Any, batch: list[dict]) -> torch.Tensor:
    """What a Hugging Face Trainer computes: full logits, token-mean cross-entropy on the response labels."""
    ids = torch.tensor([r["prompt_token_ids"] + r["token_ids"] for r in batch], device=model.device)
    labels = ids.clone()
    for b, r in enumerate(batch):
        labels[b, :len(r["prompt_token_ids"])] = -100
    return model.module(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


def ours_loss(model: Any, batch: list[dict]) -> torch.Tensor:
    return sft_batch_loss(model, batch)[0]


def ours_ckpt_loss(model: Any, batch: list[dict]) -> torch.Tensor:
    """Ours before the fused frozen-head path: each chunk's logits recomputed in backward (checkpointing)."""
    import sharpen.engine.scoring as scoring

    saved = scoring._frozen_head
    scoring._frozen_head = lambda module: None
    try:
        return ours_loss(model, batch)
    finally:
        scoring._frozen_head = saved


def step(model: Any, opt: Any, spec: str, batch: list[dict]) -> dict[str, float]:
    """One optimizer step of side `spec` ("ours+bf16+gc": loss, then options); seconds per phase."""
    name, *flags = spec.split("+")
    loss_fn = {"plain": plain_loss, "ours": ours_loss, "ours_ckpt": ours_ckpt_loss}[name]
    set_checkpointing(model.module, "gc" in flags)
    model.module.train()
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled="bf16" in flags)
    t0 = time.perf_counter()
    with autocast:
        loss = loss_fn(model, batch)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_([p for p in model.module.parameters() if p.requires_grad], 0.1)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "total": t3 - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256, help="tokens per sequence (prompt + response)")
    ap.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (not in the loss)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds; each runs one step of every side")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sides", default="plain,ours_ckpt,ours",
                    help="comma-separated: plain, ours, ours_ckpt, each optionally +bf16 (autocast) and +gc "
                         "(gradient checkpointing), e.g. plain,ours,ours+bf16,ours+gc")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = attach_lora(load_model(args.model), TrainConfig(lora_rank=16))
    opt = torch.optim.AdamW([p for p in model.module.parameters() if p.requires_grad], lr=1e-5)
    batch = make_batch(model, args.batch, args.length, args.prompt_len)
    tokens = args.batch * args.length
    sides = args.sides.split(",")
    print(f"model {args.model}  batch {args.batch} x {args.length} tokens ({args.prompt_len} prompt)  "
          f"threads {torch.get_num_threads()}  device {model.device}")
    for spec in sides:
        step(model, opt, spec, batch)  # warm-up
    # Rounds interleave the sides, so a change in machine load hits every side alike.
    times: dict[str, list[dict[str, float]]] = {spec: [] for spec in sides}
    for _ in range(args.rounds):
        for spec in sides:
            times[spec].append(step(model, opt, spec, batch))
    med = {spec: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for spec, ts in times.items()}
    for spec in sides:
        m, best = med[spec], min(t["total"] for t in times[spec])
        print(f"{spec:>14}: median {m['total']:7.2f} s/step  {tokens / m['total']:7.1f} tokens/s  (min {best:.2f} s; "
              f"forward {m['forward']:.2f}  backward {m['backward']:.2f}  optimizer {m['optimizer']:.2f})")
    if "plain" in med:
        for spec in sides:
            if spec != "plain":
                print(f"speed-up {spec} / plain: {med['plain']['total'] / med[spec]['total']:.2f}x (medians)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for spec in sides:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(model, opt, spec, batch)
            print(f"\n--- {spec}: top operators of one step (self CPU time) ---")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=40))


if __name__ == "__main__":
    main()
