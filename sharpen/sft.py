"""SFT-sharpening (Sec. 2.1, `sharpen sft`): fine-tune LoRA adapters on each training prompt's best-of-N response.

Steps: 1) check options and the run directory, 2) sample N responses per training prompt through `sharpen bon`
(into DIR/bon) or reuse a finished bon run (--from-run), 3) keep each prompt's best response by the selector
(DIR/sft_data.jsonl), 4) evaluate the base model on the held-out prompts, 5) train LoRA adapters on
(prompt, best response) with the loss on response tokens only, judging checkpoints on the held-out prompts,
6) evaluate the kept adapter, 7) write summary.json, report.md and training curves. Every step resumes:
bon resumes its sampling, training resumes from its last checkpoint, evaluations resume by chunks of prompts.

Multi-GPU: `accelerate launch -m sharpen.cli sft ...`; sampling and evaluation run on the main process,
training on all (see sharpen.train).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .bon import chunk_size, opt
from .errors import SharpenError
from .models import DEFAULT_MODEL, SAMPLE_DTYPE_HELP, Model, check_sample_dtype
from .train import TrainConfig

SFT_FILES = ("sft_data.jsonl", "eval_base.jsonl", "eval_sharpened.jsonl", "metrics.jsonl")


@dataclass
class SftConfig:
    """Options of the sampling, data and evaluation steps; training options are `TrainConfig`'s."""

    task: str = opt("prontoqa", "task: gsm8k, math, prontoqa, mmlu or game24")
    model: str = opt(DEFAULT_MODEL, "'gemma-3-270m' (embedded), a hub id, a model directory or a .gguf file")
    out: str = opt("runs/sft", "run directory (re-running the same command resumes it)")
    data_dir: str | None = opt(None, "benchmark data directory (default: $SHARPEN_DATA_DIR, else the hub)")
    subject: str | None = opt(None, "MMLU subject(s), comma separated (default: the paper's three college ones)")
    n: int = opt(50, "samples per training prompt (the paper: 50)")
    selector: str = opt("logprob", "which sample to train on: logprob (the paper), logprob_mean, majority, "
                                   "random or oracle (uses the ground truth)")
    train_limit: int | None = opt(256, "training prompts: the first TRAIN_LIMIT of the task's train split "
                                       "(disjoint from the evaluated subset), as many as the paper evaluates")
    eval_limit: int | None = opt(None, "held-out prompts: the first EVAL_LIMIT items of the paper's subset "
                                       "(default: all of it)")
    train_on_eval: bool = opt(False, "train on the evaluated prompts themselves (the paper's protocol)")
    from_run: str | None = opt(None, "reuse the samples of a finished `sharpen bon` run directory")
    eval_samples: int = opt(1, "temperature-1 samples per held-out prompt in the before/after evaluation")
    max_new_tokens: int = opt(512, "maximum response tokens (sampling and evaluation)")
    temperature: float = opt(1.0, "sampling temperature of the N training samples (the paper: 1)")
    chat: bool = opt(False, "wrap prompts in the model's chat template (default: raw completion prompt)")
    device: str = opt("auto", "cpu, cuda, cuda:1 or auto")
    dtype: str | None = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU)")
    sample_dtype: str = opt("auto", SAMPLE_DTYPE_HELP)
    chunk: int | None = opt(None, "prompts per sampling / evaluation call, the unit of progress kept on "
                                  "interruption (default: about 1024 responses per call)")
    merge: bool = opt(False, "also write the base model with the adapter merged in (DIR/merged)")

    IDENTITY = ("task", "model", "subject", "n", "selector", "train_limit", "eval_limit", "train_on_eval",
                "from_run", "eval_samples", "max_new_tokens", "temperature", "chat", "dtype", "sample_dtype", "chunk")

    def validate(self) -> None:
        check_sample_dtype(self.sample_dtype)
        from .selection import SELECTORS

        if self.n < 1:
            raise SharpenError(f"--n must be at least 1 (got {self.n})")
        if self.selector not in SELECTORS:
            raise SharpenError(f"unknown selector {self.selector!r}: choose one of {', '.join(SELECTORS)}")
        for name in ("train_limit", "eval_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise SharpenError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")
        if self.eval_samples < 0:
            raise SharpenError(f"--eval-samples must be >= 0 (got {self.eval_samples})")
        if self.max_new_tokens < 1 or (self.chunk is not None and self.chunk < 1):
            raise SharpenError("--max-new-tokens and --chunk must be at least 1")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise SharpenError(f"--temperature must be > 0 for sampling (got {self.temperature})")


# ---------------------------------------------------------------------------------------------- loss

def sft_batch_loss(model: Model, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over the batch of -log pi(y_i | x_i), summed over response tokens only (the prompt is masked)."""
    from .losses import sft_loss
    from .scoring import collate, sequence_logprobs

    ids, attn, resp = collate(model, [r["prompt_token_ids"] for r in batch], [r["token_ids"] for r in batch])
    logp = sequence_logprobs(model.module, ids, attn, resp)  # (B,)
    return sft_loss(logp), {"logprob": float(logp.detach().mean()), "tokens": float(resp.sum()) / len(batch)}


# ---------------------------------------------------------------------------------------------- data

def best_responses(prompts: Sequence[dict], samples: Sequence[dict], n: int, selector: str,
                   seed: int = 0) -> list[dict]:
    """One SFT example per prompt with all n samples (indices 0..n-1): the sample the selector picks.

    `prompts` rows are prompts.jsonl rows (id, prompt_token_ids); `samples` are samples.jsonl rows.
    """
    import numpy as np

    from .selection import select

    pools: dict[str, dict[int, dict]] = {}
    for r in samples:
        if int(r["index"]) < n:
            pools.setdefault(str(r["prompt_id"]), {}).setdefault(int(r["index"]), r)
    rng = np.random.default_rng(seed)  # only the random selector draws
    out = []
    for p in prompts:
        pool = pools.get(str(p["id"]), {})
        if len(pool) < n:
            continue
        rows = [pool[i] for i in range(n)]
        best = rows[select(selector, rows, rng)]
        out.append({"prompt_id": p["id"], "prompt_token_ids": p["prompt_token_ids"],
                    "token_ids": best["token_ids"], "logprob": best["logprob"], "index": best["index"],
                    "num_tokens": best["num_tokens"], "finish_reason": best["finish_reason"],
                    "correct": best["correct"], "text": best["text"]})
    return out


def _bon_config(cfg: SftConfig, tcfg: TrainConfig, out: Path) -> Any:
    from .bon import BonConfig

    split = "test" if cfg.train_on_eval else "train"
    return BonConfig(task=cfg.task, model=cfg.model, out=str(out / "bon"), data_dir=cfg.data_dir,
                     subject=cfg.subject, limit=cfg.eval_limit if cfg.train_on_eval else cfg.train_limit,
                     n=cfg.n, seed=tcfg.seed, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     chat=cfg.chat, device=cfg.device, dtype=cfg.dtype, sample_dtype=cfg.sample_dtype, chunk=cfg.chunk,
                     split=split)


def _from_run(cfg: SftConfig) -> tuple[Path, dict]:
    """Check that a bon run can serve as this model's training samples; its directory and options."""
    from .runs import read_json

    run = Path(cfg.from_run or "")
    if not (run / "summary.json").exists() or not (run / "samples.jsonl").exists():
        raise SharpenError(f"{run} is not a finished bon run (no summary.json / samples.jsonl): "
                           "finish it with its own command, or drop --from-run")
    conf = read_json(run / "config.json")
    if conf.get("command") != "bon":
        raise SharpenError(f"{run} holds a '{conf.get('command')}' run, not a bon run: give a bon run directory")
    o = conf.get("options", {})
    for key in ("task", "model", "chat"):
        if o.get(key) != getattr(cfg, key):
            raise SharpenError(f"{run} was sampled with {key}={o.get(key)!r}, not {getattr(cfg, key)!r}: "
                               f"SFT-sharpening trains on the model's own samples; pass --{key} {o.get(key)}")
    if o.get("n", 0) < cfg.n:
        raise SharpenError(f"{run} has {o.get('n')} samples per prompt, fewer than --n {cfg.n}: lower --n")
    return run, o


# ---------------------------------------------------------------------------------------------- evaluation

def eval_stage(path: Path, model: Model, task: Any, items: Sequence[Any], prompt_ids: dict[str, list[int]],
               cfg: SftConfig, seed: int, progress: bool = False) -> list[dict]:
    """Greedy + eval_samples responses per item (see evaluate.respond), appended chunk by chunk to `path`."""
    from . import runs
    from .evaluate import respond

    per_prompt = 1 + cfg.eval_samples
    ids = {it.id for it in items}
    counts: dict[str, int] = {}
    for r in runs.load_jsonl(path):
        counts[r["prompt_id"]] = counts.get(r["prompt_id"], 0) + 1
    rows = runs.repair_jsonl(path, keep=lambda r: counts.get(r["prompt_id"]) == per_prompt
                             and r["prompt_id"] in ids)
    done = {r["prompt_id"] for r in rows}
    todo = [it for it in items if it.id not in done]
    size = chunk_size(cfg.chunk, per_prompt)
    for start in range(0, len(todo), size):
        new = respond(model, task, todo[start:start + size], prompt_ids, cfg.eval_samples,
                      cfg.max_new_tokens, temperature=1.0, seed=seed, dtype=cfg.sample_dtype,
                      progress=path.stem if progress else None)
        runs.append_jsonl(path, new)
        rows += new
    order = {it.id: i for i, it in enumerate(items)}
    return sorted(rows, key=lambda r: (order[r["prompt_id"]], r["kind"] != "greedy", r["index"]))


def adapter_is_identity(module: Any) -> bool:
    """True while every LoRA B matrix is zero, i.e. the adapted model is exactly pi_base."""
    return all(not p.any() for n, p in module.named_parameters() if "lora_B" in n)


def held_out_eval(task: Any, items: Sequence[Any], prompt_ids: dict[str, list[int]], cfg: SftConfig,
                  base_greedy: dict | None) -> Any:
    """eval_fn for training: greedy accuracy and mean log pi_base of the greedy responses on held-out prompts."""
    from .evaluate import respond, summarize_responses

    def fn(model: Model) -> dict[str, float]:
        if base_greedy is not None and adapter_is_identity(model.module):
            st = base_greedy  # the model is pi_base itself: reuse the base evaluation
        else:
            st = summarize_responses(respond(model, task, items, prompt_ids, 0, cfg.max_new_tokens,
                                                 dtype=cfg.sample_dtype))["greedy"]
        return {"accuracy": st["accuracy"], "logprob_base": st["mean_logprob_base"],
                "logprob": st["mean_logprob"], "num_tokens": st["mean_num_tokens"]}

    return fn


def best_key(metrics: dict) -> tuple[float, float]:
    """Checkpoints are judged by held-out greedy accuracy, ties broken by the mean log pi_base."""
    lp = metrics.get("logprob_base")
    return float(metrics["accuracy"]), -math.inf if lp is None else float(lp)


def restore_adapter(model: Model, adapter_dir: Path) -> None:
    """Load the weights of a saved adapter into `model`'s (same-shaped) adapter, in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(adapter_dir / "adapter_model.safetensors"), device=str(model.device))
    set_peft_model_state_dict(model.module, state)


# ---------------------------------------------------------------------------------------------- the stage

def run_sft(cfg: SftConfig, tcfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) SFT-sharpening; returns the summary also written to DIR/summary.json."""
    from . import runs
    from .bon import run_bon
    from .evaluate import summarize_responses
    from .models import load_model, prompt_token_ids
    from .sft_report import build_summary, write_sft_report
    from .tasks import load_task
    from .train import accelerator, attach_lora, merge_adapter, process_device, train

    cfg.validate()
    tcfg.validate()
    acc = accelerator()
    main = acc.is_main_process
    out = Path(cfg.out)
    # 1) Held-out prompts and the run directory, before anything slow.
    extra = {"subject": cfg.subject} if cfg.subject else {}
    task = load_task(cfg.task, data_dir=cfg.data_dir, limit=cfg.eval_limit, **extra)
    items = task.items
    options = {**asdict(cfg), **asdict(tcfg)}
    identity = {**{k: options[k] for k in cfg.IDENTITY}, **tcfg.identity()}
    protocol = "train-on-eval" if cfg.train_on_eval else "held-out"
    if main:
        runs.prepare_run_dir(out, identity, {"options": options, "protocol": protocol,
                                             "versions": runs.package_versions()}, command="sft")
        # 2) N samples per training prompt, through the same engine and run store as `sharpen bon`.
        if cfg.from_run:
            bon_dir, bon_opts = _from_run(cfg)
        else:
            bon_cfg = _bon_config(cfg, tcfg, out)
            run_bon(bon_cfg, progress=progress)
            bon_dir, bon_opts = Path(bon_cfg.out), asdict(bon_cfg)
        # 3) The training set: each prompt's best response.
        prompts = runs.load_jsonl(bon_dir / "prompts.jsonl")
        if cfg.from_run and cfg.train_limit is not None and not cfg.train_on_eval:
            prompts = prompts[:cfg.train_limit]
        data = best_responses(prompts, runs.load_jsonl(bon_dir / "samples.jsonl"), cfg.n, cfg.selector, tcfg.seed)
        if not data:
            raise SharpenError(f"no training prompt of {bon_dir} has {cfg.n} samples: finish that bon run first")
        runs.write_jsonl(out / "sft_data.jsonl", data)
        overlap = len({p["prompt"] for p in prompts} & {it.prompt for it in items})
        runs.atomic_write_json(out / "sampling.json", {"bon_dir": str(bon_dir), "bon_options": bon_opts,
                                                       "num_train_prompts": len(prompts), "overlap": overlap})
    acc.wait_for_everyone()
    data = runs.load_jsonl(out / "sft_data.jsonl")

    model = load_model(cfg.model, device=process_device(cfg.device), dtype=cfg.dtype)
    prompt_ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in items}
    # 4) The base model on the held-out prompts (greedy, samples, log pi_base).
    base_greedy = None
    if main:
        base_rows = eval_stage(out / "eval_base.jsonl", model, task, items, prompt_ids, cfg, tcfg.seed, progress)
        base_greedy = summarize_responses(base_rows)["greedy"]
    acc.wait_for_everyone()
    # 5) LoRA fine-tuning; the adapter best on the held-out prompts is kept in DIR/adapter.
    model = attach_lora(model, tcfg)
    result = train(model, data, sft_batch_loss, tcfg, out,
                   eval_fn=held_out_eval(task, items, prompt_ids, cfg, base_greedy), best_key=best_key,
                   progress=progress)
    if not main:
        return {}
    # 6) The sharpened model (best adapter) on the same prompts, with the same sampling seed and keys.
    restore_adapter(model, result.adapter_dir)
    sharp_rows = eval_stage(out / "eval_sharpened.jsonl", model, task, items, prompt_ids, cfg, tcfg.seed, progress)
    # 7) Summary and report read the files.
    summary = build_summary(out, cfg, base_rows, sharp_rows, data, result)
    runs.atomic_write_json(out / "summary.json", summary)
    write_sft_report(out)
    if cfg.merge:
        merge_adapter(model, out / "merged")
    return summary
