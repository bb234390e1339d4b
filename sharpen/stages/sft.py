"""SFT-sharpening (Sec. 2.1, `sharpen sft`): fine-tune LoRA adapters on each training prompt's best-of-N response.

Steps: 1) check options and the run directory, 2) sample N responses per training prompt into DIR/bon (a bon
run directory) or reuse a finished bon run (--from-run), 3) keep each prompt's best response by the selector
(DIR/sft_data.jsonl), 4) evaluate the base model on the held-out prompts, 5) train LoRA adapters on
(prompt, best response) with the loss on response tokens only, judging checkpoints on the held-out prompts,
6) evaluate the kept adapter, 7) write summary.json, report.md and training curves. Every step resumes:
bon resumes its sampling, training resumes from its last checkpoint, evaluations resume by chunks of prompts.

Multi-GPU: `accelerate launch -m sharpen.cli sft ...`; sampling and evaluation run on the main process,
training on all (see sharpen.train.loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import runs
from ..config import SFT_LR, SftConfig, TrainConfig
from ..engine.models import Model, load_model, prompt_token_ids
from ..engine.scoring import headed_sequence_logprobs
from ..errors import SharpenError
from ..guards import guards
from ..metrics import accuracy_ci, before_after
from ..report.bon import write_report
from ..report.sft import write_sft_report
from ..rows import finite_mean, valid_target
from ..selection import select
from ..tasks import Task, load_task
from ..train.loop import TrainResult, accelerator, process_device, train
from ..train.lora import attach_lora, merge_adapter, restore_adapter
from ..train.losses import sft_loss
from .kit import accuracy_key, base_evaluation, base_pool, eval_rows, greedy_validation, validation_split

# ---------------------------------------------------------------------------------------------- loss

def sft_batch_loss(model: Model, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over the batch of -log pi(y_i | x_i), summed over response tokens only (the prompt is masked)."""
    # A few-shot head the prompts share runs once for the batch.
    logp = headed_sequence_logprobs(model, [r["prompt_token_ids"] for r in batch], [r["token_ids"] for r in batch])
    tokens = sum(len(r["token_ids"]) for r in batch) / len(batch)
    return sft_loss(logp), {"logprob": float(logp.detach().mean()), "tokens": float(tokens)}


# ---------------------------------------------------------------------------------------------- data

def agreement(rows: Sequence[Mapping[str, Any]]) -> float:
    """Share of a prompt's samples that give its most common answer (0 when none has an answer): the label-free
    confidence of self-consistency (Wang et al. 2023) that `--min-agreement` filters prompts by."""
    answers = Counter(r.get("answer") for r in rows if r.get("answer") is not None)
    return max(answers.values()) / len(rows) if answers and rows else 0.0


def best_responses(prompts: Sequence[dict], pools: Mapping[str, Sequence[dict]], selector: str,
                   seed: int = 0, valid_only: bool = False, per_prompt: int = 1,
                   min_agreement: float = 0.0) -> list[dict]:
    """SFT examples from each prompt that has a pool (its samples 0..n-1, `rows.complete_pools`): the sample the
    selector picks, among the valid targets only (`rows.valid_target`) with `valid_only` (a prompt without one
    gets no example). `prompts` rows are prompts.jsonl rows (id, prompt_token_ids).

    `per_prompt` K > 1 adds up to K - 1 more distinct responses *with the pick's answer* (none if it has
    none), each the selector's pick among those left: with the vote reward, K reasoning paths of the majority
    answer (Huang et al. 2022's self-improvement). `min_agreement` keeps only prompts whose most common answer is
    given by at least that share of all n samples (`agreement`): a label-free filter of unsure prompts."""
    rng = np.random.default_rng(seed)  # only the random selector draws
    out = []
    for p in prompts:
        pool = pools.get(str(p["id"]), ())
        if min_agreement > 0 and agreement(pool) < min_agreement:
            continue
        rows = [r for r in pool if valid_target(r) or not valid_only]
        if not rows:
            continue
        picked = [rows[select(selector, rows, rng)]]
        seen = {tuple(picked[0]["token_ids"])}
        while len(picked) < per_prompt and picked[0].get("answer") is not None:
            # The same answer as the first pick, a response not taken yet (duplicates would weigh a path twice).
            left = [r for r in rows if r.get("answer") == picked[0].get("answer") and tuple(r["token_ids"]) not in seen]
            if not left:
                break
            picked.append(left[select(selector, left, rng)])
            seen.add(tuple(picked[-1]["token_ids"]))
        out += [{"prompt_id": p["id"], "prompt_token_ids": p["prompt_token_ids"],
                 "token_ids": best["token_ids"], "logprob": best["logprob"], "index": best["index"],
                 "num_tokens": best["num_tokens"], "finish_reason": best["finish_reason"],
                 "correct": best["correct"], "text": best["text"]} for best in picked]
    return out


# ---------------------------------------------------------------------------------------------- summary

def build_summary(out: Path, cfg: SftConfig, task: Task, base_rows: Sequence[dict], sharp_rows: Sequence[dict],
                  data: Sequence[dict], result: TrainResult) -> dict[str, Any]:
    """summary.json of an sft run from its evaluation rows, training set and training result."""
    sampling = runs.read_json(out / "sampling.json")
    bon_dir = Path(sampling["bon_dir"])
    bon_greedy = None
    if (bon_dir / "summary.json").exists():
        bon_greedy = (runs.read_json(bon_dir / "summary.json").get("greedy") or {}).get("accuracy")
    prompts = len({str(r["prompt_id"]) for r in data})  # --per-prompt gives a prompt up to K examples
    return {
        "task": cfg.task, "model": cfg.model, "selector": cfg.target_selector, "reward": cfg.reward, "n": cfg.n,
        "protocol": cfg.protocol,
        "num_train_prompts": prompts,
        # Prompts of the base pool without a valid target (ended, with an answer) get no example (--valid-only),
        # nor do those below --min-agreement.
        "targets": {"valid_only": cfg.valid_only, "prompts_sampled": sampling.get("num_train_prompts"),
                    "prompts_with_target": prompts, "examples": len(data),
                    "per_prompt": cfg.per_prompt, "min_agreement": cfg.min_agreement},
        "num_eval_prompts": len({r["prompt_id"] for r in base_rows}),
        "train_eval_overlap": sampling.get("overlap"),
        # The training targets are the base model's best-of-N picks: their accuracy is base best-of-N at N = n
        # on the training prompts (one pool per prompt, no subsampling).
        "base_bon": {
            "prompts": "evaluated" if cfg.train_on_eval else "training",
            "accuracy": sum(bool(r["correct"]) for r in data) / len(data),
            "accuracy_ci": accuracy_ci(data),
            "mean_logprob_base": finite_mean([r["logprob"] for r in data]),
            "mean_num_tokens": sum(r["num_tokens"] for r in data) / len(data),
            "truncated_fraction": sum(r["finish_reason"] == "length" for r in data) / len(data),
            "greedy_accuracy": bon_greedy,
        },
        **before_after(base_rows, sharp_rows, {it.id: it.answer for it in task.items}, task.labels),
        "training": {"steps": result.steps, "best_step": result.best_step, "best_eval": result.best_eval,
                     "adapter": "adapter"},
    }


# ---------------------------------------------------------------------------------------------- the stage

def run_sft(cfg: SftConfig, tcfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) SFT-sharpening; returns the summary also written to DIR/summary.json."""
    cfg.validate()
    tcfg = tcfg.with_lr(SFT_LR)
    tcfg.validate()
    acc = accelerator()
    main = acc.is_main_process
    out = Path(cfg.out or "")
    # 1) Held-out prompts and the run directory, before anything slow.
    task = load_task(cfg.task, data_dir=cfg.data_dir, limit=cfg.eval_limit, **cfg.task_options)
    items = task.items
    if main:
        runs.open_run(out, "sft", [cfg, tcfg], protocol=cfg.protocol)
        # 2) N samples per training prompt, through the same engine and run store as `sharpen bon`.
        pool = base_pool(cfg, cfg.n, tcfg.seed, out, items, temperature=cfg.temperature, progress=progress)
        if pool.sampled:
            write_report(pool.dir)
        # 3) The training set: each prompt's best response; the validation prompts that judge checkpoints.
        data = best_responses(pool.prompts, pool.pools, cfg.target_selector, tcfg.seed, cfg.valid_only,
                              cfg.per_prompt, cfg.min_agreement)
        if not data and cfg.min_agreement > 0:
            raise SharpenError(f"no training prompt reaches --min-agreement {cfg.min_agreement}: no answer is given "
                               f"by that share of its {cfg.n} samples; lower --min-agreement")
        if not data:
            raise SharpenError(f"no training prompt has a valid target: none of its {cfg.n} samples ended with an "
                               "answer the task can extract; raise --max-new-tokens, or pass --no-valid-only")
        runs.write_jsonl(out / "sft_data.jsonl", data)
        val_task, val_items, validation = validation_split(cfg, pool.prompts, items)
    acc.wait_for_everyone()
    data = runs.load_jsonl(out / "sft_data.jsonl")

    model = load_model(cfg.model, device=process_device(cfg.device), dtype=cfg.dtype)
    if not main:  # checkpoints are judged on the main process only
        val_task, val_items, validation = task, [], {}
    prompt_ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in [*items, *val_items]}
    # 4) The base model on the held-out prompts (greedy, samples, log pi_base).
    val_base: list[dict] = []
    if main:
        base_rows, val_base = base_evaluation(out, model, task, items, val_task, val_items, prompt_ids, cfg,
                                              {**cfg.identity(), **tcfg.identity()}, tcfg.seed, progress)
    acc.wait_for_everyone()
    # 5) LoRA fine-tuning; the adapter best on the validation prompts is kept in DIR/adapter.
    model = attach_lora(model, tcfg)
    result = train(model, data, sft_batch_loss, tcfg, out,
                   eval_fn=greedy_validation(val_task, val_items, prompt_ids, cfg,
                                             [r for r in val_base if r["kind"] == "greedy"]), best_key=accuracy_key,
                   progress=progress)
    if not main:
        return {}
    # 6) The sharpened model (best adapter) on the same prompts, with the same sampling seed and keys.
    restore_adapter(model, result.adapter_dir)
    sharp_rows = eval_rows(out / "eval_sharpened.jsonl", model, task, items, prompt_ids, cfg, tcfg.seed, progress)
    # 7) Summary and report read the files.
    summary = build_summary(out, cfg, task, base_rows, sharp_rows, data, result)
    summary["validation"] = validation
    summary["guards"] = guards(result.stopped, tcfg)
    runs.atomic_write_json(out / "summary.json", summary)
    write_sft_report(out)
    if cfg.merge:
        merge_adapter(model, out / "merged")
    return summary
