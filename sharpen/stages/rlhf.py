"""RLHF-sharpening (Sec. 2.2): `sharpen dpo` (offline reward-based DPO, Eq. 4/8) and `sharpen xpo` (online, Alg. 1).

Both maximize J_beta(pi) = E_pi[r_self] - beta * KL(pi || pi_base) with the self-reward r_self = log pi_base (Eq. 2)
by training LoRA adapters on pairs (x, y, y'). The reference pi_base is the same model with its adapter switched
off (no second copy of the weights). The base log-probs of a pair never change, so they are computed once, when
the pair is made, and stored with it.

dpo: 1) check options and the run directory, 2) n base samples per training prompt through `sharpen bon`
(DIR/bon) or a finished bon run (--from-run), 3) pair them up disjointly (samples 2j, 2j+1) and score them under
pi_base (DIR/pairs.jsonl), 4) evaluate the base model on the held-out prompts, 5) train on the square loss of
Eq. 4/8 (--loss logistic: standard DPO, chosen = the higher self-reward), keeping the adapter with the best
held-out J_beta estimate, 6) evaluate it, 7) write summary.json, report.md and curves.

xpo: 1)-2) as dpo, with rounds x pairs base samples per prompt: the y' ~ pi_base of every round, drawn up front
(they do not depend on the policy); 4) evaluate the base model (= iterate 0); then for t = 1..rounds:
a) sample y ~ pi_t (the current adapter) for every training prompt, pair it with the round's unused base sample,
score both under pi_base and add the pairs to D_t (DIR/xpo_data.jsonl), b) train on D_t with the XPO loss,
starting from pi_t (DIR/round_t), c) evaluate the new iterate on the held-out prompts and estimate J_beta.
The kept adapter is the iterate (pi_base included) with the largest held-out J_beta estimate.

Every step resumes: bon its sampling, training its last checkpoint, evaluations and XPO sampling their finished
chunks of prompts; finished XPO rounds are not redone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import runs
from ..config import PREFERENCE_LR, DpoConfig, RlhfConfig, TrainConfig, XpoConfig
from ..engine.generate import sample
from ..engine.models import Model, load_model, prompt_token_ids
from ..engine.scoring import grouped_sequence_logprobs
from ..errors import SharpenError
from ..generation import base_logprobs, respond, run_chunked
from ..guards import guard_reason, guard_stats, guards
from ..metrics import accuracy_ci, before_after, summarize_responses
from ..report.bon import write_report
from ..report.rlhf import write_rlhf_report
from ..rows import finite_mean, sample_rows, valid_target
from ..selection import REWARDS, Pool, as_float, rewards_of
from ..tasks import Item, Task, load_task
from ..train.loop import distributed, train
from ..train.lora import adapter_is_identity, attach_lora, merge_adapter, restore_adapter, save_adapter
from ..train.losses import j_beta_estimate, logistic_dpo_loss, reward_dpo_loss, xpo_loss
from .kit import BasePool, base_evaluation, base_pool, eval_rows, validation_split

# ---------------------------------------------------------------------------------------------- pairs and loss

def make_pair(prompt: dict, y: dict, y2: dict, round_: int) -> dict:
    """A pair row from a prompts.jsonl row and two samples.jsonl-style rows (y2 always drawn from pi_base)."""
    return {"round": round_, "prompt_id": prompt["id"], "prompt_token_ids": prompt["prompt_token_ids"],
            "y": list(y["token_ids"]), "y2": list(y2["token_ids"]), "text_y": y["text"], "text_y2": y2["text"],
            "correct_y": bool(y["correct"]), "correct_y2": bool(y2["correct"]),
            "finish_y": y["finish_reason"], "finish_y2": y2["finish_reason"],
            "answer_y": y.get("answer"), "answer_y2": y2.get("answer"),
            "valid_y": valid_target(y), "valid_y2": valid_target(y2),
            "self_certainty_y": y.get("self_certainty"), "self_certainty_y2": y2.get("self_certainty"),
            "logprob_y": y["logprob"]}  # log-prob under the policy that drew y (pi_t; pi_base for dpo)


def score_pairs(model: Model, pairs: list[dict], progress: bool = False) -> list[dict]:
    """Add base_y, base_y2 = log pi_base of each response (Eq. 2), scored once with the adapter switched off.

    A non-finite score is stored as null (see runs.dumps) and the pair is left out of training (`usable`).
    """
    prompts = [p["prompt_token_ids"] for p in pairs]
    lp = base_logprobs(model, prompts + prompts, [p["y"] for p in pairs] + [p["y2"] for p in pairs],
                       progress="pairs: log pi_base" if progress else None)
    return [{**p, "base_y": a, "base_y2": b} for p, a, b in zip(pairs, lp[:len(pairs)], lp[len(pairs):],
                                                                 strict=True)]


def usable(pair: dict) -> bool:
    """A pair the loss can use: finite base log-probs and, where the pair has them, finite rewards."""
    keys = ["base_y", "base_y2"] + [k for k in ("reward_y", "reward_y2") if k in pair]
    return all(pair.get(k) is not None and math.isfinite(pair[k]) for k in keys)


def coin_rewards(pair: dict, seed: int) -> list[float]:
    """The `random` control's rewards of a pair: [1, 0] or [0, 1] by a fair coin keyed by (seed, the prompt, both
    responses' tokens), so a re-scored or resumed run replays it. Every pair gets a preference of gap 1, as every
    pair of distinct log pi_base does under `logprob`: the control differs from the self-reward only in which side
    it prefers."""
    key = zlib.crc32(json.dumps([str(pair["prompt_id"]), pair["y"], pair["y2"]]).encode())
    heads = int(np.random.default_rng([seed, key]).integers(0, 2))
    return [float(heads), float(1 - heads)]


def add_rewards(pairs: list[dict], pools: dict[str, list[dict]], cfg: RlhfConfig, seed: int = 0) -> list[dict]:
    """reward_y, reward_y2 of each scored pair under cfg.reward (selection.REWARDS: the selectors' scores; random:
    `coin_rewards` with `seed`), minus cfg.invalid_penalty for a response that did not end or has no answer (with
    --valid-only dpo pairs only valid base samples, so this reaches xpo's pairs: y ~ pi_t, and the round's base
    sample y'). vote: the share of the answer among the prompt's base samples."""
    def scores(p: dict) -> list[float]:
        if cfg.reward == "random":
            return coin_rewards(p, seed)
        sides = [{"index": i, "logprob": as_float(p[f"base_{side}"]), "num_tokens": max(1, len(p[side])),
                  "answer": p[f"answer_{side}"], "correct": p[f"correct_{side}"],
                  "finish_reason": p[f"finish_{side}"], "self_certainty": p.get(f"self_certainty_{side}")}
                 for i, side in enumerate(("y", "y2"))]
        return rewards_of(cfg.reward, sides, voters=[s.get("answer") for s in pools[p["prompt_id"]]]).tolist()

    out = []
    for p in pairs:
        r = dict(p)
        for side, v in zip(("y", "y2"), scores(p), strict=True):
            v = v if math.isfinite(v) else None  # an unusable pair (see `usable`)
            if v is not None and cfg.valid_only and not p[f"valid_{side}"]:
                v -= cfg.invalid_penalty
            r[f"reward_{side}"] = v
        out.append(r)
    return out


def pair_loss(model: Model, batch: list[dict], kind: str, beta: float, alpha: float = 0.0, sft_weight: float = 0.0
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a batch of pairs: kind 'square' (Eq. 4/8), 'logistic' (standard DPO) or 'xpo' (Algorithm 1), plus
    sft_weight times the per-token NLL of each pair's higher-reward response (an RPO-style anchor; it leaves the
    closed-form optimum of the paper's loss).

    One forward pass scores y and y' under the policy (adapter on, differentiable), the pair's prompt once for
    both; the base log-probs are the stored ones.
    """
    B = len(batch)
    prompts = [r["prompt_token_ids"] for r in batch]
    responses = [r["y"] for r in batch] + [r["y2"] for r in batch]
    lp = grouped_sequence_logprobs(model, prompts + prompts, responses)  # (2B,): each pair's prompt runs once
    pol_y, pol_y2 = lp[:B], lp[B:]  # (B,), (B,)

    def col(key: str, fallback: str) -> torch.Tensor:  # (B,)
        return torch.tensor([r.get(key, r[fallback]) for r in batch], dtype=torch.float32, device=lp.device)

    base_y, base_y2 = col("base_y", "base_y"), col("base_y2", "base_y2")
    rew_y, rew_y2 = col("reward_y", "base_y"), col("reward_y2", "base_y2")  # r(y); r_self = log pi_base if unset
    if kind == "square":
        loss = reward_dpo_loss(pol_y, pol_y2, base_y, base_y2, beta, rew_y, rew_y2)
    elif kind == "xpo":
        loss = xpo_loss(pol_y, pol_y2, base_y, base_y2, beta, alpha, rew_y, rew_y2)
    elif kind == "logistic":
        swap = rew_y < rew_y2  # chosen = the response with the larger reward
        loss = logistic_dpo_loss(torch.where(swap, pol_y2, pol_y), torch.where(swap, pol_y, pol_y2),
                                 torch.where(swap, base_y2, base_y), torch.where(swap, base_y, base_y2), beta)
    else:
        raise SharpenError(f"unknown pair loss {kind!r}: choose square, logistic or xpo")
    if sft_weight > 0:
        lens = torch.tensor([max(1, len(r)) for r in responses], dtype=torch.float32, device=lp.device)  # (2B,)
        first = rew_y >= rew_y2  # (B,) the preferred response of each pair
        nll = -torch.where(first, pol_y / lens[:B], pol_y2 / lens[B:])
        loss = loss + sft_weight * nll.mean()
    with torch.no_grad():
        metrics = {"logratio_y": float((pol_y - base_y).mean()), "logratio_y2": float((pol_y2 - base_y2).mean()),
                   "logprob_y2": float(pol_y2.mean())}
    return loss, metrics


# ---------------------------------------------------------------------------------------------- held-out J_beta

def held_out_metrics(rows: Sequence[dict], beta: float, reward: str = "logprob",
                     voters: Sequence[dict] | None = None) -> dict[str, float | None]:
    """From `evaluate.respond` rows of the policy: greedy / sample accuracy, mean log pi_base of the samples,
    and the sample estimates of KL(pi || pi_base) and J_beta = E_pi[r(y)] - beta * KL under the run's reward r
    (the objective the loss optimizes; `logprob`: r = log pi_base(y), the paper's). `vote` counts the answers of
    the base model's samples of the same prompt (`voters`, rows of pi_base), as the training pairs do; without
    voters, the policy's own samples."""
    st = summarize_responses(rows)
    g, s = st.get("greedy", {}), st.get("sample", {})
    ok = [r for r in rows if r.get("kind") == "sample"
          and all(v is not None and math.isfinite(v) for v in (r.get("logprob"), r.get("logprob_base")))]
    j = kl = None
    if ok:
        pol, base = torch.tensor([(r["logprob"], r["logprob_base"]) for r in ok], dtype=torch.float64).T  # (K,)
        kl = float((pol - base).mean())
        r_y = sample_rewards(ok, reward, voters)  # logprob: log pi_base(y), the paper's J_beta
        fin = torch.isfinite(r_y)
        j = float(j_beta_estimate(pol[fin], base[fin], beta, r_y[fin])) if fin.any() else None
    return {"j_beta": j, "kl": kl, "accuracy": g.get("accuracy"), "sample_accuracy": s.get("accuracy"),
            "logprob_base": s.get("mean_logprob_base"), "greedy_logprob_base": g.get("mean_logprob_base"),
            "accuracy_ci": g.get("accuracy_ci"), "sample_accuracy_ci": s.get("accuracy_ci")}


def sample_rewards(rows: Sequence[dict], reward: str, voters: Sequence[dict] | None = None) -> torch.Tensor:
    """(K,) r(y) of each policy sample row under `reward`, with log pi_base(y) as the log-prob the rewards read
    (a row's own `logprob` is the policy's); `vote`: the share among `voters`' samples of the row's prompt;
    `random`: the coin's expectation 1/2, the same under every policy (so J_beta = 1/2 - beta KL)."""
    if reward == "random":
        return torch.full((len(rows),), 0.5, dtype=torch.float64)
    by_voter: dict[str, list] = {}
    for v in voters or []:
        if v.get("kind", "sample") == "sample":
            by_voter.setdefault(v["prompt_id"], []).append(v.get("answer"))
    out = torch.empty(len(rows), dtype=torch.float64)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["prompt_id"], []).append(i)
    for pid, idx in groups.items():
        rs = [{"index": j, **rows[i], "logprob": rows[i]["logprob_base"]} for j, i in enumerate(idx)]
        vals = rewards_of(reward, rs, by_voter.get(pid) if reward == "vote" and voters is not None else None)
        out[idx] = torch.as_tensor(vals, dtype=torch.float64)
    return out


def j_beta_key(metrics: dict) -> float:
    """Adapters are judged by the held-out J_beta estimate (label-free, the objective itself)."""
    j = metrics.get("j_beta")
    return -math.inf if j is None else float(j)


def j_beta_eval(task: Task, items: Sequence[Item], prompt_ids: dict[str, list[int]], cfg: RlhfConfig, seed: int,
                base_rows: Sequence[dict]) -> Callable[[Model], dict[str, Any]]:
    """eval_fn for `train`: held_out_metrics of fresh responses, with the same sampling seed as the base's."""
    def fn(model: Model) -> dict[str, Any]:
        rows = base_rows if adapter_is_identity(model.module) else respond(
            model, task, items, prompt_ids, cfg.eval_samples, cfg.max_new_tokens, seed=seed,
            dtype=cfg.sample_dtype, chat=cfg.chat, exact_logprobs=cfg.exact_logprobs)
        return {**held_out_metrics(rows, cfg.beta, cfg.reward, base_rows), "guard": guard_stats(rows, base_rows)}

    return fn


# ---------------------------------------------------------------------------------------------- summary

def pair_stats(pairs: Sequence[dict]) -> list[dict[str, Any]]:
    """Per round of pairs (dpo: one, round 0): how good and how likely y and y' are, by the base's measure."""
    out = []
    for t in sorted({p["round"] for p in pairs}):
        ps = [p for p in pairs if p["round"] == t]
        out.append({"round": t, "pairs": len(ps),
                     "y_accuracy": sum(p["correct_y"] for p in ps) / len(ps),
                     "y_accuracy_ci": accuracy_ci([{"prompt_id": p["prompt_id"], "correct": p["correct_y"]}
                                                   for p in ps]),
                     "y2_accuracy": sum(p["correct_y2"] for p in ps) / len(ps),
                     "y2_accuracy_ci": accuracy_ci([{"prompt_id": p["prompt_id"], "correct": p["correct_y2"]}
                                                    for p in ps]),
                     "y_logprob_base": finite_mean([p.get("base_y") for p in ps]),
                     "y2_logprob_base": finite_mean([p.get("base_y2") for p in ps]),
                     "y_truncated": sum(p["finish_y"] == "length" for p in ps) / len(ps),
                     "y_valid": sum(bool(p.get("valid_y", True)) for p in ps) / len(ps),
                     "y2_valid": sum(bool(p.get("valid_y2", True)) for p in ps) / len(ps),
                     "identical": sum(p["y"] == p["y2"] for p in ps) / len(ps)})
    return out


def build_summary(out: Path, cfg: RlhfConfig, task: Task, algorithm: str, base_rows: Sequence[dict],
                  sharp_rows: Sequence[dict], pairs: Sequence[dict], training: dict, history: Sequence[dict]
                  ) -> dict[str, Any]:
    """summary.json of a dpo / xpo run. `history`: held-out metrics at every evaluation (dpo: training steps,
    step 0 = pi_base; xpo: rounds, round 0 = pi_base)."""
    sampling = runs.read_json(out / "sampling.json")
    jb = held_out_metrics(base_rows, cfg.beta, cfg.reward, base_rows)
    js = held_out_metrics(sharp_rows, cfg.beta, cfg.reward, base_rows)
    return {
        "algorithm": algorithm, "loss": getattr(cfg, "loss", "xpo"), "task": cfg.task, "model": cfg.model,
        "beta": cfg.beta, "sft_weight": cfg.sft_weight, "reward": cfg.reward,
        "alpha": getattr(cfg, "alpha", None), "rounds": getattr(cfg, "rounds", None),
        "protocol": cfg.protocol,
        "num_train_prompts": sampling["num_train_prompts"],
        "num_eval_prompts": len({r["prompt_id"] for r in base_rows}),
        "train_eval_overlap": sampling.get("overlap"),
        "num_pairs": sum(usable(p) for p in pairs),
        "pairs": pair_stats(pairs),
        **before_after(base_rows, sharp_rows, {it.id: it.answer for it in task.items}, task.labels),
        "j_beta": {"base": jb["j_beta"], "sharpened": js["j_beta"], "kl_sharpened": js["kl"]},
        "history": list(history),
        "training": training,
    }


# ---------------------------------------------------------------------------------------------- shared steps

def _start(cfg: RlhfConfig, tcfg: TrainConfig, command: str, progress: bool) -> tuple:
    """Steps 1-2 and the model: validate, held-out task, run directory, base samples, model and prompt ids."""
    cfg.validate()
    tcfg.validate()
    if distributed():
        raise SharpenError(f"sharpen {command} runs in a single process: launch it without accelerate / torchrun")
    out = Path(cfg.out or "")
    task = load_task(cfg.task, data_dir=cfg.data_dir, limit=cfg.eval_limit, **cfg.task_options)
    runs.open_run(out, command, [cfg, tcfg], protocol=cfg.protocol)
    # y' is drawn from pi_base at --temperature (the paper's: 1); a reused bon run must match it.
    pool = base_pool(cfg, cfg.n, tcfg.seed, out, task.items, temperature=cfg.temperature,
                     require_temperature=cfg.temperature, progress=progress)
    if pool.sampled:
        write_report(pool.dir)
    if cfg.beta == "auto":
        cfg = dataclasses.replace(cfg, beta=auto_beta(pool, cfg))
    val = validation_split(cfg, pool.prompts, task.items)
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    prompt_ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in [*task.items, *val[1]]}
    return cfg, out, task, pool, model, prompt_ids, val


def auto_beta(pool: BasePool, cfg: RlhfConfig) -> float:
    """--beta auto: the median |r(y) - r(y')| over disjoint pairs of (valid) base samples whose rewards differ, under
    cfg.reward with the samples' own log-probs for log pi_base. The square loss asks for a policy log-ratio gap of
    (r(y) - r(y'))/beta, so this makes that gap 1 nat at the median informative pair instead of tens of nats (a
    small beta on raw sequence log-probs, whose gaps are mostly length, drove the policy to the empty response).
    Tied pairs carry no preference and are left out: under `vote` most pairs of a prompt share their answer, and
    counting them put the median at 0. random: 1, the gap of every coin-scored pair."""
    if cfg.reward == "random":
        return 1.0
    gaps = []
    for p in pool.prompts:
        rows = [r for r in pool.pools[p["id"]] if valid_target(r) or not cfg.valid_only]
        scores = REWARDS[cfg.reward](Pool.from_rows(rows)) if rows else []
        gaps += [abs(float(scores[2 * j]) - float(scores[2 * j + 1])) for j in range(len(rows) // 2)]
    gaps = [g for g in gaps if math.isfinite(g) and g > 0]
    if not gaps:
        raise SharpenError("--beta auto found no pair of valid base samples whose rewards differ: give --beta")
    return max(float(statistics.median(gaps)), 1e-3)


def _finish(out: Path, model: Model, cfg: RlhfConfig, summary: dict, validation: dict) -> dict:
    summary["validation"] = validation
    runs.atomic_write_json(out / "summary.json", summary)
    write_rlhf_report(out)
    if cfg.merge:
        merge_adapter(model, out / "merged")
    return summary


# ---------------------------------------------------------------------------------------------- dpo

def kept_round(history: Sequence[dict], keep: str) -> int:
    """XPO's returned round: the largest validation J_beta (ties: the earlier round), or with --keep last the last
    round no guard stopped (round 0, pi_base, never is)."""
    unguarded = sorted((r for r in history if not r.get("guard_stop")), key=lambda r: r["round"])
    return (unguarded[-1] if keep == "last" else max(unguarded, key=j_beta_key))["round"]


def run_dpo(cfg: DpoConfig, tcfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) offline reward-based DPO; returns the summary also written to DIR/summary.json."""
    tcfg = tcfg.with_lr(PREFERENCE_LR)
    cfg, out, task, pool, model, prompt_ids, (val_task, val_items, validation) = _start(cfg, tcfg, "dpo", progress)
    prompts, pools = pool.prompts, pool.pools
    # 3) Disjoint pairs of base samples, scored once under pi_base.
    pairs_path = out / "pairs.jsonl"
    made = []
    for p in prompts:  # disjoint pairs of (valid) base samples, in index order
        rows = [r for r in pools[p["id"]] if valid_target(r) or not cfg.valid_only]
        made += [make_pair(p, rows[2 * j], rows[2 * j + 1], 0) for j in range(len(rows) // 2)]
    if len(runs.load_jsonl(pairs_path)) != len(made):  # not scored yet, or lines lost
        runs.write_jsonl(pairs_path, add_rewards(score_pairs(model, made, progress), pools, cfg, tcfg.seed))
    pairs = runs.load_jsonl(pairs_path)
    data = [p for p in pairs if usable(p)]
    if not data:
        n_valid = sum(valid_target(r) for p in prompts for r in pools[p["id"]])
        raise SharpenError(f"no usable pair: {n_valid} of {len(prompts) * cfg.n} base samples ended with an answer "
                           "the task can extract; raise --max-new-tokens, or pass --no-valid-only to pair them all")
    # 4) The base model on the held-out prompts, and on the validation prompts (step 0 of the selection).
    base_rows, val_base = base_evaluation(out, model, task, task.items, val_task, val_items, prompt_ids, cfg,
                                          {**cfg.identity(), **tcfg.identity()}, tcfg.seed, progress)
    # 5) LoRA training; the adapter with the best validation J_beta is kept (step 0 = pi_base itself).
    model = attach_lora(model, tcfg)
    loss = functools.partial(pair_loss, kind=cfg.loss, beta=cfg.beta, sft_weight=cfg.sft_weight)
    result = train(model, data, loss, tcfg, out,
                   eval_fn=j_beta_eval(val_task, val_items, prompt_ids, cfg, tcfg.seed, val_base),
                   best_key=j_beta_key, progress=progress)
    # 6) The kept adapter on the same prompts, with the same sampling seed (pi_base kept: its rows).
    restore_adapter(model, result.adapter_dir)
    if adapter_is_identity(model.module) and not (out / "eval_sharpened.jsonl").exists():
        runs.write_jsonl(out / "eval_sharpened.jsonl", base_rows)  # written whole: it exists only complete
    sharp_rows = eval_rows(out / "eval_sharpened.jsonl", model, task, task.items, prompt_ids, cfg, tcfg.seed, progress)
    # 7) Summary and report.
    history = [r for r in runs.load_jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"]
    training = {"steps": result.steps, "best_step": result.best_step, "best_eval": result.best_eval,
                "adapter": "adapter"}
    summary = build_summary(out, cfg, task, "dpo", base_rows, sharp_rows, pairs, training, history)
    summary["guards"] = guards(result.stopped, tcfg)
    return _finish(out, model, cfg, summary, validation)


# ---------------------------------------------------------------------------------------------- xpo

def round_seed(seed: int, t: int) -> int:
    """Sampling seed of round t's y ~ pi_t: distinct from the base samples' seed (at t = 1, pi_t = pi_base,
    so a shared seed would make y = y')."""
    return seed * 1_000_003 + 7_919 * t


def collect_round(path: Path, model: Model, task: Task, pool: BasePool, cfg: XpoConfig, seed: int, t: int,
                  progress: bool) -> list[dict]:
    """D_t (Algorithm 1): the pairs of rounds 1..t-1 in `path` plus round t's, drawn here chunk by chunk:
    y ~ pi_t (the model as it is, adapter on) and y' = the round's unused base sample, both scored under pi_base."""
    k = cfg.pairs
    by_id = {it.id: it for it in task.items}

    def draw(chunk: list[dict]) -> list[dict]:
        drawn = sample(model, [p["prompt_token_ids"] for p in chunk], n=k, max_new_tokens=cfg.max_new_tokens,
                       seed=round_seed(seed, t), stop=task.stops(cfg.chat), keys=[p["id"] for p in chunk],
                       dtype=cfg.sample_dtype, stats=cfg.reward == "self_certainty",
                       exact_logprobs=cfg.exact_logprobs)
        pairs = [make_pair(p, y, pool.pools[p["id"]][(t - 1) * k + j], t)
                 for p, ss in zip(chunk, drawn, strict=True)
                 for j, y in enumerate(sample_rows(task, by_id[p["id"]], ss))]
        return add_rewards(score_pairs(model, pairs), pool.pools, cfg, seed)  # the whole chunk in one call

    # Round t's rows are this call's; earlier rounds' stay; anything of a later round (a crash) is dropped.
    return run_chunked(path, pool.prompts, k, draw, chunk=cfg.chunk, label=f"round {t}: y ~ pi_{t}",
                       progress=progress, key=lambda p: p["id"], mine=lambda r: r["round"] == t,
                       earlier=lambda r: r["round"] < t)


def _train_task(cfg: XpoConfig, bon_opts: dict) -> Task:
    """The task whose items the training prompts are (to grade the policy's samples)."""
    return load_task(cfg.task, data_dir=bon_opts.get("data_dir") or cfg.data_dir,
                     split=bon_opts.get("split", "test"), limit=bon_opts.get("limit"),
                     **{k: bon_opts[k] for k in ("subject", "level") if bon_opts.get(k)})


def run_xpo(cfg: XpoConfig, tcfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) online reward-based XPO (Algorithm 1); returns the summary also in DIR/summary.json."""
    tcfg = tcfg.with_lr(PREFERENCE_LR)
    cfg, out, task, pool, model, prompt_ids, (val_task, val_items, validation) = _start(cfg, tcfg, "xpo", progress)
    train_task = _train_task(cfg, pool.options)
    # 4) The base model on the held-out prompts; iterate 0 (pi_base) on the validation prompts.
    base_rows, val_base = base_evaluation(out, model, task, task.items, val_task, val_items, prompt_ids, cfg,
                                          {**cfg.identity(), **tcfg.identity()}, tcfg.seed, progress)
    model = attach_lora(model, tcfg)
    if not (out / "round_0" / "adapter").exists():
        (out / "round_0").mkdir(exist_ok=True)
        save_adapter(model.module, out / "round_0" / "adapter")  # B = 0: exactly pi_base
    hist_path = out / "rounds.jsonl"
    history = runs.repair_jsonl(hist_path, keep=lambda r: r["round"] <= cfg.rounds)
    if not history:
        history = [{"round": 0, "steps": 0, "num_pairs": 0, **held_out_metrics(val_base, cfg.beta, cfg.reward,
                                                                                     val_base)}]
        runs.write_jsonl(hist_path, history)
    done = {r["round"] for r in history}
    data_path = out / "xpo_data.jsonl"
    for t in range(1, cfg.rounds + 1):
        if any(r.get("guard_stop") for r in history):
            break  # a collapse guard ended the rounds (also on a re-run)
        if t in done:
            continue
        rdir = out / f"round_{t}"
        restore_adapter(model, out / f"round_{t - 1}" / "adapter")  # pi_t
        # a) y ~ pi_t, y' ~ pi_base for every training prompt, added to D_t.
        pairs = collect_round(data_path, model, train_task, pool, cfg, tcfg.seed, t, progress)
        data = [p for p in pairs if usable(p)]
        # b) pi_{t+1} = argmin of the XPO loss over D_t, starting from pi_t (the final adapter is kept).
        result = train(model, data, functools.partial(pair_loss, kind="xpo", beta=cfg.beta, alpha=cfg.alpha,
                                                    sft_weight=cfg.sft_weight),
                       tcfg, rdir, progress=progress)
        # c) The validation J_beta of the new iterate.
        rows = eval_rows(rdir / "val.jsonl", model, val_task, val_items, prompt_ids, cfg, tcfg.seed, progress)
        reason = guard_reason(guard_stats(rows, val_base), tcfg)  # a collapsed iterate is never returned
        row = {"round": t, "steps": result.steps, "num_pairs": len(data),
               **held_out_metrics(rows, cfg.beta, cfg.reward, val_base),
               **({"guard_stop": reason} if reason else {})}
        runs.append_jsonl(hist_path, [row])
        history.append(row)
        if reason:
            break
    best = kept_round(history, tcfg.keep)  # the returned iterate, then evaluated held out
    stopped = next((f"round {r['round']}: {r['guard_stop']}" for r in history if r.get("guard_stop")), None)
    restore_adapter(model, out / f"round_{best}" / "adapter")
    save_adapter(model.module, out / "adapter")
    if best == 0 and not (out / "eval_sharpened.jsonl").exists():
        runs.write_jsonl(out / "eval_sharpened.jsonl", base_rows)  # written whole: it exists only complete
    sharp_rows = eval_rows(out / "eval_sharpened.jsonl", model, task, task.items, prompt_ids, cfg, tcfg.seed, progress)
    training = {"best_round": best, "best_eval": next(r for r in history if r["round"] == best),
                "steps": sum(r["steps"] for r in history), "adapter": "adapter"}
    summary = build_summary(out, cfg, task, "xpo", base_rows, sharp_rows, runs.load_jsonl(data_path), training,
                            sorted(history, key=lambda r: r["round"]))
    summary["guards"] = guards(stopped, tcfg)
    return _finish(out, model, cfg, summary, validation)
