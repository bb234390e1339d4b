"""Online label-free RL (`sharpen grpo`): group-relative policy optimization with a self-reward.

Each optimizer step takes --batch-size training prompts, samples --group responses per prompt from the current
policy (the engine, temperature 1, random streams keyed by (seed, step, prompt), so a resumed run replays the
same samples), rewards every response within its group (`selection.REWARDS`, the functions behind the selectors of
the same name: vote is TTRL's majority reward, self_certainty Intuitor's; gold and random are controls), turns the
rewards into group-relative advantages (`losses.group_advantages`) and takes --iterations optimizer updates on
the clipped policy-gradient objective with a per-token KL penalty to pi_base (`losses.grpo_loss`; pi_base is the
model with its adapter switched off): the first from the policy that drew the samples (ratio 1), the others with
the ratio to it clipped at --clip-eps, as PPO's epochs and TRL's num_iterations. Every --eval-every steps the
policy's greedy responses to the validation prompts judge the checkpoint and feed the collapse guards, as in
`sharpen sft`.

Steps: 1) check options and the run directory, 2) training prompts (DIR/prompts.jsonl) and the validation split,
3) the base model on the held-out and validation prompts, 4) training (DIR/rollouts.jsonl: every sampled response
with its reward and advantage; DIR/metrics.jsonl: per step and per evaluation), 5) the kept adapter on the
held-out prompts, 6) summary.json and report.md. Every step resumes: evaluations by chunks of prompts, training
from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import runs
from ..config import GRPO_STEPS, RL_LR, GrpoConfig, TrainConfig
from ..engine.generate import sample
from ..engine.models import Model, load_model, prompt_token_ids
from ..engine.scoring import grouped_token_logprobs
from ..errors import SharpenError
from ..generation import base_token_logprobs
from ..guards import guards
from ..metrics import before_after
from ..report.grpo import write_grpo_report
from ..rows import sample_rows, valid_target
from ..selection import Pool, reward_gold, reward_random, rewards_of
from ..tasks import Task, load_task
from ..train.loop import distributed, train
from ..train.lora import adapter_is_identity, attach_lora, merge_adapter, restore_adapter
from ..train.losses import group_advantages, grpo_loss, k3_kl
from .kit import accuracy_key, base_evaluation, eval_rows, greedy_validation, validation_split

ROLLOUTS = "rollouts.jsonl"

# ---------------------------------------------------------------------------------------------- rewards


def group_rewards(name: str, rows: Sequence[dict], rng: np.random.Generator, valid_only: bool,
                  penalty: float) -> np.ndarray:
    """(G,) rewards of one prompt's group of responses (`rows.sample_rows` rows whose `logprob` is log pi_base).

    With `valid_only`, a response that did not end or has no answer (`rows.valid_target`) gets the group's
    lowest valid reward minus `penalty` (0 minus it when none is valid), so it ranks last whatever the reward says;
    a non-finite reward is treated the same way.
    """
    if name == "gold":
        r = reward_gold(Pool.from_rows(rows))
    elif name == "random":
        r = reward_random(Pool.from_rows(rows), rng)
    else:
        r = rewards_of(name, rows)  # vote: among the group itself (TTRL)
    bad = ~np.isfinite(r)
    if valid_only:
        bad |= ~np.array([valid_target(x) for x in rows], dtype=bool)
    if bad.any():
        floor = float(r[~bad].min()) if (~bad).any() else 0.0
        r = np.where(bad, floor - penalty, r)
    return r


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of optimizer step `step` (0-based): distinct per step and from the evaluations' seed."""
    return seed * 1_000_003 + 7_919 * (step + 1) + 104_729


def coin(seed: int, step: int, prompt_id: str) -> np.random.Generator:
    """The random control reward's generator for one prompt at one step: resumes replay it."""
    return np.random.default_rng([seed, step, zlib.crc32(str(prompt_id).encode())])


# ---------------------------------------------------------------------------------------------- the loss


@dataclasses.dataclass
class Rollout:
    """A micro-batch's sampled groups, as every update on it reads them."""
    prompts: list[list[int]]  # (K,) prompt token ids of each response
    responses: list[list[int]]  # (K,) response token ids
    base: torch.Tensor  # (T,) per-token log pi_base of all responses' tokens
    advantages: torch.Tensor  # (T,) each token's response advantage
    metrics: dict[str, float]
    old: torch.Tensor | None = None  # (T,) per-token log pi_old: the policy that drew them, set by the first update


class GroupLoss:
    """loss_fn of the training core: sample each prompt's group from the policy, reward, advantages, GRPO loss.
    `step` is set by the core before every optimizer step (`at_step`); sampled rows go to DIR/rollouts.jsonl. With
    --iterations K the core calls it K times on each micro-batch of a step: the first call samples, the others
    reuse those samples and clip the ratio to the policy that drew them."""

    def __init__(self, cfg: GrpoConfig, task: Task, seed: int, out: Path) -> None:
        self.cfg, self.task, self.seed, self.path = cfg, task, seed, out / ROLLOUTS
        self.by_id = {it.id: it for it in task.items}
        self.step = 0
        self.repaired = False
        self.rollouts: dict[tuple[str, ...], Rollout] = {}  # this step's, by the micro-batch's prompt ids

    def at_step(self, step: int) -> None:
        if not self.repaired:  # a resumed run redoes the steps after its checkpoint: drop their old rollouts
            runs.repair_jsonl(self.path, keep=lambda r: r["step"] <= step)
            self.repaired = True
        self.step = step
        self.rollouts = {}

    def __call__(self, model: Model, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        key = tuple(str(p["id"]) for p in batch)
        if key not in self.rollouts:
            self.rollouts[key] = self.rollout(model, batch)
        r = self.rollouts[key]
        policy = grouped_token_logprobs(model, r.prompts, r.responses)  # (T,) with grad
        if r.old is None:  # the first update: pi_old is the policy itself (ratio 1, the clip inactive)
            r.old = policy.detach()
        loss = grpo_loss(policy, r.old, r.base, r.advantages, self.cfg.clip_eps, self.cfg.kl_coef)
        with torch.no_grad():
            kl = float(k3_kl(policy.detach(), r.base).mean()) if len(r.base) else 0.0
            ratio = torch.exp(policy.detach() - r.old)
            eps = self.cfg.clip_eps
            clipped = float(((ratio < 1 - eps) | (ratio > 1 + eps)).float().mean()) if len(ratio) else 0.0
        return loss, {**r.metrics, "kl": kl, "clipped": clipped}

    def rollout(self, model: Model, batch: list[dict]) -> Rollout:
        """Sample each prompt's group from the policy as it is, reward it, advantages; rows to DIR/rollouts.jsonl."""
        cfg, module = self.cfg, model.module
        prompts = [p["prompt_token_ids"] for p in batch]
        was_training = module.training
        module.eval()  # no LoRA dropout while sampling: the samples are the policy's
        with torch.no_grad(), torch.autocast(model.device.type, enabled=False):
            drawn = sample(model, prompts, n=cfg.group, max_new_tokens=cfg.max_new_tokens,
                           seed=step_seed(self.seed, self.step), stop=self.task.stops(cfg.chat),
                           keys=[p["id"] for p in batch], dtype=cfg.sample_dtype, stats=cfg.reward == "self_certainty",
                           exact_logprobs=False)  # the loss scores every response again, with gradients
            groups = [sample_rows(self.task, self.by_id[p["id"]], ss) for p, ss in zip(batch, drawn, strict=True)]
            flat_prompts = [pr for pr, g in zip(prompts, groups, strict=True) for _ in g]
            flat = [r for g in groups for r in g]
            base_tok = base_token_logprobs(model, flat_prompts, [r["token_ids"] for r in flat])
        module.train(was_training)
        for r, bt in zip(flat, base_tok, strict=True):
            r["logprob_policy"], r["logprob"] = r["logprob"], float(sum(bt))  # rewards read log pi_base
        rewards = np.stack([group_rewards(cfg.reward, g, coin(self.seed, self.step, p["id"]), cfg.valid_only,
                                          cfg.invalid_penalty) for p, g in zip(batch, groups, strict=True)])
        adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), cfg.advantage)  # (P, G)
        lengths = torch.tensor([len(r["token_ids"]) for r in flat])
        base = torch.tensor([v for bt in base_tok for v in bt], dtype=torch.float32, device=model.device)
        adv_tok = torch.repeat_interleave(adv.reshape(-1).to(model.device), lengths.to(model.device))
        runs.append_jsonl(self.path, [
            {"step": self.step + 1, "prompt_id": r["prompt_id"], "index": r["index"], "text": r["text"],
             "answer": r["answer"], "correct": r["correct"], "finish_reason": r["finish_reason"],
             "num_tokens": r["num_tokens"], "logprob": r["logprob_policy"], "logprob_base": r["logprob"],
             "reward": float(rw), "advantage": float(a)}
            for r, rw, a in zip(flat, rewards.reshape(-1), adv.reshape(-1).tolist(), strict=True)])
        flat_rewards = rewards.reshape(-1)
        return Rollout(flat_prompts, [r["token_ids"] for r in flat], base, adv_tok, {
            "reward": float(flat_rewards.mean()), "reward_std": float(rewards.std(axis=1).mean()),
            "flat_groups": float(np.mean([np.ptp(g) == 0 for g in rewards])),  # groups with no signal
            "sample_accuracy": float(np.mean([r["correct"] for r in flat])),  # monitoring only: never trained on
            "answer_rate": float(np.mean([r["answer"] is not None for r in flat])),
            "valid_rate": float(np.mean([valid_target(r) for r in flat])),
            "num_tokens": float(lengths.float().mean()),
            "logprob_base": float(np.mean([r["logprob"] for r in flat])),
        })


# ---------------------------------------------------------------------------------------------- the stage


def rollout_stats(metrics: Sequence[dict], window: int) -> dict[str, Any]:
    """Mean reward, rollout accuracy, answer rate and length over the first and the last `window` steps."""
    train_rows = [r for r in metrics if r.get("kind") == "train"]

    def mean(rows: Sequence[dict]) -> dict[str, float | None]:
        keys = ("reward", "sample_accuracy", "answer_rate", "valid_rate", "num_tokens", "kl", "logprob_base")
        return {k: (float(np.mean([r[k] for r in rows if r.get(k) is not None])) if rows else None) for k in keys}

    return {"steps": len(train_rows), "window": window, "first": mean(train_rows[:window]),
            "last": mean(train_rows[-window:])}


def run_grpo(cfg: GrpoConfig, tcfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) GRPO; returns the summary also written to DIR/summary.json."""
    cfg.validate()
    tcfg = tcfg.with_lr(RL_LR)
    if tcfg.max_steps is None:
        tcfg = dataclasses.replace(tcfg, max_steps=GRPO_STEPS)
    tcfg.validate()
    if distributed():
        raise SharpenError("sharpen grpo runs in a single process: launch it without accelerate / torchrun")
    out = Path(cfg.out or "")
    # 1) Held-out prompts and the run directory, before anything slow.
    task = load_task(cfg.task, data_dir=cfg.data_dir, limit=cfg.eval_limit, **cfg.task_options)
    runs.open_run(out, "grpo", [cfg, tcfg], protocol=cfg.protocol)
    # 2) Training prompts (as sft's base pool takes them) and the validation prompts.
    train_task = task if cfg.train_on_eval else load_task(cfg.task, data_dir=cfg.data_dir, split="train",
                                                            limit=cfg.train_limit, **cfg.task_options)
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    prompts = [{"id": it.id, "prompt": it.prompt, "prompt_token_ids": prompt_token_ids(model, it.prompt, chat=cfg.chat),
                "answer": it.answer} for it in train_task.items]
    if not prompts:
        raise SharpenError(f"no training prompt: the {cfg.task} train split is empty here; check --data-dir")
    if not (out / "prompts.jsonl").exists():
        runs.write_jsonl(out / "prompts.jsonl", prompts)
    val_task, val_items, validation = validation_split(cfg, prompts, task.items)
    prompt_ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in [*task.items, *val_items]}
    # 3) The base model on the held-out and the validation prompts.
    base_rows, val_base = base_evaluation(out, model, task, task.items, val_task, val_items, prompt_ids, cfg,
                                          {**cfg.identity(), **tcfg.identity()}, tcfg.seed, progress)
    # 4) Training: every step samples its groups from the policy as it is.
    model = attach_lora(model, tcfg)
    loss = GroupLoss(cfg, train_task, tcfg.seed, out)
    result = train(model, prompts, loss, tcfg, out,
                   eval_fn=greedy_validation(val_task, val_items, prompt_ids, cfg,
                                             [r for r in val_base if r["kind"] == "greedy"]),
                   best_key=accuracy_key, progress=progress, step_fn=loss.at_step, updates=cfg.iterations)
    # 5) The kept adapter on the held-out prompts, with the base evaluation's sampling seed.
    restore_adapter(model, result.adapter_dir)
    if adapter_is_identity(model.module) and not (out / "eval_sharpened.jsonl").exists():
        runs.write_jsonl(out / "eval_sharpened.jsonl", base_rows)  # step 0 kept: pi_base's own rows
    sharp_rows = eval_rows(out / "eval_sharpened.jsonl", model, task, task.items, prompt_ids, cfg, tcfg.seed, progress)
    # 6) Summary and report read the files.
    metrics = runs.load_jsonl(out / "metrics.jsonl")
    summary = {
        "algorithm": "grpo", "task": cfg.task, "model": cfg.model, "reward": cfg.reward,
        "label_free": cfg.reward != "gold", "group": cfg.group, "advantage": cfg.advantage,
        "kl_coef": cfg.kl_coef, "clip_eps": cfg.clip_eps, "iterations": cfg.iterations, "protocol": cfg.protocol,
        "num_train_prompts": len(prompts), "num_eval_prompts": len(task.items),
        "train_eval_overlap": len({p["prompt"] for p in prompts} & {it.prompt for it in task.items}),
        **before_after(base_rows, sharp_rows, {it.id: it.answer for it in task.items}, task.labels),
        "rollouts": rollout_stats(metrics, min(tcfg.eval_every, 8)),
        "training": {"steps": result.steps, "best_step": result.best_step, "best_eval": result.best_eval,
                     "adapter": "adapter"},
        "validation": validation, "guards": guards(result.stopped, tcfg),
    }
    runs.atomic_write_json(out / "summary.json", summary)
    write_grpo_report(out)
    if cfg.merge:
        merge_adapter(model, out / "merged")
    return summary
