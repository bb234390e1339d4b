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

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .bon import chunk_size, opt
from .errors import SharpenError
from .models import DEFAULT_MODEL, SAMPLE_DTYPE_HELP, Model, check_sample_dtype
from .train import TrainConfig

LOSSES = ("square", "logistic")


@dataclass
class RlhfConfig:
    """Options shared by `sharpen dpo` and `sharpen xpo`; training options are `TrainConfig`'s."""

    task: str = opt("prontoqa", "task: gsm8k, math, prontoqa, mmlu or game24")
    model: str = opt(DEFAULT_MODEL, "'gemma-3-270m' (embedded), a hub id, a model directory or a .gguf file")
    out: str = opt("runs/rlhf", "run directory (re-running the same command resumes it)")
    data_dir: str | None = opt(None, "benchmark data directory (default: $SHARPEN_DATA_DIR, else the hub)")
    subject: str | None = opt(None, "MMLU subject(s), comma separated (default: the paper's three college ones)")
    beta: float = opt(0.05, "KL weight of J_beta = E_pi[log pi_base] - beta KL(pi||pi_base); its optimum is "
                            "pi_base^(1+1/beta), sharper as beta -> 0")
    train_limit: int | None = opt(256, "training prompts: the first TRAIN_LIMIT of the task's train split "
                                       "(disjoint from the evaluated subset)")
    eval_limit: int | None = opt(None, "held-out prompts: the first EVAL_LIMIT items of the paper's subset "
                                       "(default: all of it)")
    train_on_eval: bool = opt(False, "train on the evaluated prompts themselves (the paper's SFT protocol)")
    from_run: str | None = opt(None, "take the base samples y' from a finished `sharpen bon` run directory")
    eval_samples: int = opt(4, "temperature-1 samples per held-out prompt: sample accuracy and the J_beta "
                               "estimate that picks the kept adapter")
    max_new_tokens: int = opt(512, "maximum response tokens (sampling and evaluation)")
    chat: bool = opt(False, "wrap prompts in the model's chat template (default: raw completion prompt)")
    device: str = opt("auto", "cpu, cuda, cuda:1 or auto")
    dtype: str | None = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU)")
    sample_dtype: str = opt("auto", SAMPLE_DTYPE_HELP)
    chunk: int | None = opt(None, "prompts per sampling / evaluation call, the unit of progress kept on "
                                  "interruption (default: about 1024 responses per call)")
    merge: bool = opt(False, "also write the base model with the adapter merged in (DIR/merged)")

    # Options that change results: a run directory refuses to resume under other values.
    IDENTITY = ("task", "model", "subject", "beta", "train_limit", "eval_limit", "train_on_eval", "from_run",
                "eval_samples", "max_new_tokens", "chat", "dtype", "sample_dtype", "chunk")

    def validate(self) -> None:
        check_sample_dtype(self.sample_dtype)
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise SharpenError(f"--beta must be a positive number (got {self.beta})")
        for name in ("train_limit", "eval_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise SharpenError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")
        if self.eval_samples < 1:
            raise SharpenError(f"--eval-samples must be at least 1: J_beta is estimated from samples of the "
                               f"policy (got {self.eval_samples})")
        if self.max_new_tokens < 1 or (self.chunk is not None and self.chunk < 1):
            raise SharpenError("--max-new-tokens and --chunk must be at least 1")


@dataclass
class DpoConfig(RlhfConfig):
    out: str = opt("runs/dpo", "run directory (re-running the same command resumes it)")
    n: int = opt(8, "base samples per training prompt, paired up disjointly: n/2 pairs (y, y') per prompt")
    loss: str = opt("square", "square: reward-based DPO (Eq. 4/8); logistic: standard DPO on pairs ranked by "
                              "self-reward (chosen = higher log pi_base)")

    IDENTITY = RlhfConfig.IDENTITY + ("n", "loss")

    def validate(self) -> None:
        super().validate()
        if self.n < 2 or self.n % 2:
            raise SharpenError(f"--n must be an even number >= 2: samples are paired up (got {self.n})")
        if self.loss not in LOSSES:
            raise SharpenError(f"unknown --loss {self.loss!r}: choose one of {', '.join(LOSSES)}")


@dataclass
class XpoConfig(RlhfConfig):
    out: str = opt("runs/xpo", "run directory (re-running the same command resumes it)")
    rounds: int = opt(4, "rounds of Algorithm 1 (sample, add pairs, retrain); --epochs / --max-steps are per round")
    pairs: int = opt(1, "pairs (y ~ pi_t, y' ~ pi_base) per training prompt and round")
    alpha: float = opt(1e-3, "weight of the optimism term alpha * log pi(y'|x) of Algorithm 1 (0: online DPO)")

    IDENTITY = RlhfConfig.IDENTITY + ("rounds", "pairs", "alpha")

    @property
    def n(self) -> int:
        """Base samples per training prompt: one y' per pair of every round."""
        return self.rounds * self.pairs

    def validate(self) -> None:
        super().validate()
        if self.rounds < 1 or self.pairs < 1:
            raise SharpenError(f"--rounds and --pairs must be at least 1 (got {self.rounds}, {self.pairs})")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise SharpenError(f"--alpha must be a number >= 0 (got {self.alpha})")


# ---------------------------------------------------------------------------------------------- pairs and loss

def make_pair(prompt: dict, y: dict, y2: dict, round_: int) -> dict:
    """A pair row from a prompts.jsonl row and two samples.jsonl-style rows (y2 always drawn from pi_base)."""
    return {"round": round_, "prompt_id": prompt["id"], "prompt_token_ids": prompt["prompt_token_ids"],
            "y": list(y["token_ids"]), "y2": list(y2["token_ids"]), "text_y": y["text"], "text_y2": y2["text"],
            "correct_y": bool(y["correct"]), "correct_y2": bool(y2["correct"]),
            "finish_y": y["finish_reason"], "finish_y2": y2["finish_reason"],
            "logprob_y": y["logprob"]}  # log-prob under the policy that drew y (pi_t; pi_base for dpo)


def score_pairs(model: Model, pairs: list[dict], progress: bool = False) -> list[dict]:
    """Add base_y, base_y2 = log pi_base of each response (Eq. 2), scored once with the adapter switched off.

    A non-finite score is stored as null (see runs.dumps) and the pair is left out of training (`usable`).
    """
    from .evaluate import base_logprobs

    prompts = [p["prompt_token_ids"] for p in pairs]
    lp = base_logprobs(model, prompts + prompts, [p["y"] for p in pairs] + [p["y2"] for p in pairs],
                       progress="pairs: log pi_base" if progress else None)
    return [{**p, "base_y": a, "base_y2": b} for p, a, b in zip(pairs, lp[:len(pairs)], lp[len(pairs):],
                                                                 strict=True)]


def usable(pair: dict) -> bool:
    return all(pair.get(k) is not None and math.isfinite(pair[k]) for k in ("base_y", "base_y2"))


def pair_loss(model: Model, batch: list[dict], kind: str, beta: float, alpha: float = 0.0
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a batch of pairs: kind 'square' (Eq. 4/8), 'logistic' (standard DPO) or 'xpo' (Algorithm 1).

    One forward pass scores y and y' under the policy (adapter on, differentiable); the base log-probs are the
    stored ones.
    """
    from .losses import logistic_dpo_loss, reward_dpo_loss, xpo_loss
    from .scoring import collate, sequence_logprobs

    B = len(batch)
    prompts = [r["prompt_token_ids"] for r in batch]
    ids, attn, resp = collate(model, prompts + prompts, [r["y"] for r in batch] + [r["y2"] for r in batch])
    lp = sequence_logprobs(model.module, ids, attn, resp)  # (2B,)
    pol_y, pol_y2 = lp[:B], lp[B:]  # (B,), (B,)
    base_y = torch.tensor([r["base_y"] for r in batch], dtype=torch.float32, device=lp.device)  # (B,)
    base_y2 = torch.tensor([r["base_y2"] for r in batch], dtype=torch.float32, device=lp.device)
    if kind == "square":
        loss = reward_dpo_loss(pol_y, pol_y2, base_y, base_y2, beta)
    elif kind == "xpo":
        loss = xpo_loss(pol_y, pol_y2, base_y, base_y2, beta, alpha)
    elif kind == "logistic":
        swap = base_y < base_y2  # chosen = the response with the larger self-reward
        loss = logistic_dpo_loss(torch.where(swap, pol_y2, pol_y), torch.where(swap, pol_y, pol_y2),
                                 torch.where(swap, base_y2, base_y), torch.where(swap, base_y, base_y2), beta)
    else:
        raise SharpenError(f"unknown pair loss {kind!r}: choose square, logistic or xpo")
    with torch.no_grad():
        metrics = {"logratio_y": float((pol_y - base_y).mean()), "logratio_y2": float((pol_y2 - base_y2).mean()),
                   "logprob_y2": float(pol_y2.mean())}
    return loss, metrics


# ---------------------------------------------------------------------------------------------- held-out J_beta

def held_out_metrics(rows: Sequence[dict], beta: float) -> dict[str, float | None]:
    """From `evaluate.respond` rows of the policy: greedy / sample accuracy, mean log pi_base of the samples,
    and the sample estimates of KL(pi || pi_base) and J_beta = E_pi[log pi_base] - beta * KL."""
    from .evaluate import summarize_responses
    from .losses import j_beta_estimate

    st = summarize_responses(rows)
    g, s = st.get("greedy", {}), st.get("sample", {})
    lps = [(r["logprob"], r["logprob_base"]) for r in rows if r.get("kind") == "sample"
           and all(v is not None and math.isfinite(v) for v in (r.get("logprob"), r.get("logprob_base")))]
    j = kl = None
    if lps:
        pol, base = torch.tensor(lps, dtype=torch.float64).T  # (K,), (K,)
        j, kl = float(j_beta_estimate(pol, base, beta)), float((pol - base).mean())
    return {"j_beta": j, "kl": kl, "accuracy": g.get("accuracy"), "sample_accuracy": s.get("accuracy"),
            "logprob_base": s.get("mean_logprob_base"), "greedy_logprob_base": g.get("mean_logprob_base")}


def j_beta_key(metrics: dict) -> float:
    """Adapters are judged by the held-out J_beta estimate (label-free, the objective itself)."""
    j = metrics.get("j_beta")
    return -math.inf if j is None else float(j)


def j_beta_eval(task: Any, items: Sequence[Any], prompt_ids: dict[str, list[int]], cfg: RlhfConfig, seed: int,
                base_rows: Sequence[dict]) -> Any:
    """eval_fn for `train`: held_out_metrics of fresh responses, with the same sampling seed as the base's."""
    from .evaluate import respond
    from .sft import adapter_is_identity

    def fn(model: Model) -> dict[str, float | None]:
        rows = base_rows if adapter_is_identity(model.module) else respond(
            model, task, items, prompt_ids, cfg.eval_samples, cfg.max_new_tokens, seed=seed,
            dtype=cfg.sample_dtype)
        return held_out_metrics(rows, cfg.beta)

    return fn


# ---------------------------------------------------------------------------------------------- shared steps

def _check_from_run(cfg: Any) -> tuple[Path, dict]:
    """A finished bon run of this task and model at temperature 1 with enough samples per prompt."""
    from .runs import read_json

    run = Path(cfg.from_run or "")
    if not (run / "summary.json").exists() or not (run / "config.json").exists():
        raise SharpenError(f"{run} is not a finished bon run (no summary.json): finish it with its own command, "
                           "or drop --from-run")
    conf = read_json(run / "config.json")
    o = conf.get("options", {})
    if conf.get("command") != "bon":
        raise SharpenError(f"{run} holds a '{conf.get('command')}' run, not a bon run: give a bon run directory")
    for key in ("task", "model", "chat"):
        if o.get(key) != getattr(cfg, key):
            raise SharpenError(f"{run} was sampled with {key}={o.get(key)!r}, not {getattr(cfg, key)!r}: "
                               f"the pairs must be the model's own samples; pass --{key} {o.get(key)}")
    if o.get("temperature") != 1.0:
        raise SharpenError(f"{run} was sampled at temperature {o.get('temperature')}: y' must be drawn from "
                           "pi_base itself (temperature 1); sample a new bon run or drop --from-run")
    if o.get("n", 0) < cfg.n:
        raise SharpenError(f"{run} has {o.get('n')} samples per prompt, this run needs {cfg.n}: "
                           "lower --n (dpo) or --rounds x --pairs (xpo), or sample a larger bon run")
    return run, o


def base_pool(cfg: Any, tcfg: TrainConfig, out: Path, items: Sequence[Any], progress: bool
              ) -> tuple[list[dict], dict[str, list[dict]], dict]:
    """Step 2: cfg.n base samples per training prompt (bon run). Returns the training prompts (prompts.jsonl
    rows), each prompt's samples ordered by index, and the bon options; writes DIR/sampling.json."""
    from . import runs
    from .bon import BonConfig, run_bon

    if cfg.from_run:
        bon_dir, bon_opts = _check_from_run(cfg)
    else:
        bon = BonConfig(task=cfg.task, model=cfg.model, out=str(out / "bon"), data_dir=cfg.data_dir,
                        subject=cfg.subject, limit=cfg.eval_limit if cfg.train_on_eval else cfg.train_limit,
                        n=cfg.n, seed=tcfg.seed, max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                        chat=cfg.chat, device=cfg.device, dtype=cfg.dtype, sample_dtype=cfg.sample_dtype,
                        chunk=cfg.chunk,
                        split="test" if cfg.train_on_eval else "train")
        run_bon(bon, progress=progress)
        bon_dir, bon_opts = Path(bon.out), asdict(bon)
    prompts = runs.load_jsonl(bon_dir / "prompts.jsonl")
    if cfg.from_run and cfg.train_limit is not None and not cfg.train_on_eval:
        prompts = prompts[:cfg.train_limit]
    pools: dict[str, dict[int, dict]] = {}
    for r in runs.load_jsonl(bon_dir / "samples.jsonl"):
        if int(r["index"]) < cfg.n:
            pools.setdefault(str(r["prompt_id"]), {})[int(r["index"])] = r
    prompts = [p for p in prompts if len(pools.get(str(p["id"]), {})) == cfg.n]
    if not prompts:
        raise SharpenError(f"no training prompt of {bon_dir} has {cfg.n} samples: finish that bon run first")
    overlap = len({p["prompt"] for p in prompts} & {it.prompt for it in items})
    runs.atomic_write_json(out / "sampling.json", {"bon_dir": str(bon_dir), "bon_options": bon_opts,
                                                   "num_train_prompts": len(prompts), "overlap": overlap})
    ordered = {pid: [pool[i] for i in range(cfg.n)] for pid, pool in pools.items()}
    return prompts, ordered, bon_opts


def _start(cfg: Any, tcfg: TrainConfig, command: str, progress: bool) -> tuple:
    """Steps 1-2 and the model: validate, held-out task, run directory, base samples, model and prompt ids."""
    from . import runs
    from .models import load_model, prompt_token_ids
    from .tasks import load_task
    from .train import distributed

    cfg.validate()
    tcfg.validate()
    if distributed():
        raise SharpenError(f"sharpen {command} runs in a single process: launch it without accelerate / torchrun")
    out = Path(cfg.out)
    task = load_task(cfg.task, data_dir=cfg.data_dir, limit=cfg.eval_limit,
                     **({"subject": cfg.subject} if cfg.subject else {}))
    options = {**asdict(cfg), **asdict(tcfg)}
    identity = {**{k: options[k] for k in cfg.IDENTITY}, **tcfg.identity()}
    protocol = "train-on-eval" if cfg.train_on_eval else "held-out"
    runs.prepare_run_dir(out, identity, {"options": options, "protocol": protocol,
                                         "versions": runs.package_versions()}, command=command)
    prompts, pools, bon_opts = base_pool(cfg, tcfg, out, task.items, progress)
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    prompt_ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in task.items}
    return out, task, prompts, pools, bon_opts, model, prompt_ids


def _finish(out: Path, model: Model, cfg: Any, summary: dict) -> dict:
    from . import runs
    from .rlhf_report import write_rlhf_report
    from .train import merge_adapter

    runs.atomic_write_json(out / "summary.json", summary)
    write_rlhf_report(out)
    if cfg.merge:
        merge_adapter(model, out / "merged")
    return summary


# ---------------------------------------------------------------------------------------------- dpo

def run_dpo(cfg: DpoConfig, tcfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) offline reward-based DPO; returns the summary also written to DIR/summary.json."""
    from . import runs
    from .rlhf_report import build_summary
    from .sft import adapter_is_identity, eval_stage, restore_adapter
    from .train import attach_lora, train

    out, task, prompts, pools, _, model, prompt_ids = _start(cfg, tcfg, "dpo", progress)
    # 3) Disjoint pairs of base samples, scored once under pi_base.
    pairs_path = out / "pairs.jsonl"
    if not pairs_path.exists():
        pairs = [make_pair(p, pools[p["id"]][2 * j], pools[p["id"]][2 * j + 1], 0)
                 for p in prompts for j in range(cfg.n // 2)]
        runs.write_jsonl(pairs_path, score_pairs(model, pairs, progress))
    pairs = runs.load_jsonl(pairs_path)
    data = [p for p in pairs if usable(p)]
    # 4) The base model on the held-out prompts.
    base_rows = eval_stage(out / "eval_base.jsonl", model, task, task.items, prompt_ids, cfg, tcfg.seed, progress)
    # 5) LoRA training; the adapter with the best held-out J_beta is kept (step 0 = pi_base itself).
    model = attach_lora(model, tcfg)
    result = train(model, data, functools.partial(pair_loss, kind=cfg.loss, beta=cfg.beta), tcfg, out,
                   eval_fn=j_beta_eval(task, task.items, prompt_ids, cfg, tcfg.seed, base_rows),
                   best_key=j_beta_key, progress=progress)
    # 6) The kept adapter on the same prompts, with the same sampling seed (pi_base kept: its rows).
    restore_adapter(model, result.adapter_dir)
    if adapter_is_identity(model.module):
        runs.write_jsonl(out / "eval_sharpened.jsonl", base_rows)
    sharp_rows = eval_stage(out / "eval_sharpened.jsonl", model, task, task.items, prompt_ids, cfg, tcfg.seed, progress)
    # 7) Summary and report.
    history = [r for r in runs.load_jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"]
    training = {"steps": result.steps, "best_step": result.best_step, "best_eval": result.best_eval,
                "adapter": "adapter"}
    summary = build_summary(out, cfg, "dpo", base_rows, sharp_rows, pairs, training, history)
    return _finish(out, model, cfg, summary)


# ---------------------------------------------------------------------------------------------- xpo

def round_seed(seed: int, t: int) -> int:
    """Sampling seed of round t's y ~ pi_t: distinct from the base samples' seed (at t = 1, pi_t = pi_base,
    so a shared seed would make y = y')."""
    return seed * 1_000_003 + 7_919 * t


def collect_round(path: Path, model: Model, task: Any, prompts: Sequence[dict], pools: dict[str, list[dict]],
                  cfg: XpoConfig, seed: int, t: int, progress: bool) -> list[dict]:
    """D_t (Algorithm 1): the pairs of rounds 1..t-1 in `path` plus round t's, drawn here chunk by chunk:
    y ~ pi_t (the model as it is, adapter on) and y' = the round's unused base sample, both scored under pi_base."""
    from . import runs
    from .bon import _bar, sample_rows
    from .engine import sample

    k = cfg.pairs
    rows = runs.load_jsonl(path)
    counts = Counter(r["prompt_id"] for r in rows if r["round"] == t)
    # Drop what a crash left: round t's incomplete prompts, and anything of later rounds.
    rows = runs.repair_jsonl(path, keep=lambda r: r["round"] < t or (r["round"] == t and counts[r["prompt_id"]] == k))
    done = {r["prompt_id"] for r in rows if r["round"] == t}
    todo = [p for p in prompts if p["id"] not in done]
    by_id = {it.id: it for it in task.items}
    with _bar(total=len(prompts), initial=len(prompts) - len(todo), desc=f"round {t}: y ~ pi_{t}",
              enabled=progress) as bar:
        size = chunk_size(cfg.chunk, k)
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            drawn = sample(model, [p["prompt_token_ids"] for p in chunk], n=k, max_new_tokens=cfg.max_new_tokens,
                           seed=round_seed(seed, t), stop=task.stop, keys=[p["id"] for p in chunk],
                           dtype=cfg.sample_dtype)
            new = []
            for p, ss in zip(chunk, drawn, strict=True):
                ys = sample_rows(task, by_id[p["id"]], ss)
                new += [make_pair(p, y, pools[p["id"]][(t - 1) * k + j], t) for j, y in enumerate(ys)]
            new = score_pairs(model, new)
            runs.append_jsonl(path, new)
            rows += new
            bar.update(len(chunk))
    return rows


def _train_task(cfg: XpoConfig, bon_opts: dict) -> Any:
    """The task whose items the training prompts are (to grade the policy's samples)."""
    from .tasks import load_task

    return load_task(cfg.task, data_dir=bon_opts.get("data_dir") or cfg.data_dir,
                     split=bon_opts.get("split", "test"), limit=bon_opts.get("limit"),
                     **({"subject": bon_opts["subject"]} if bon_opts.get("subject") else {}))


def run_xpo(cfg: XpoConfig, tcfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) online reward-based XPO (Algorithm 1); returns the summary also in DIR/summary.json."""
    from . import runs
    from .rlhf_report import build_summary
    from .sft import eval_stage, restore_adapter
    from .train import attach_lora, save_adapter, train

    out, task, prompts, pools, bon_opts, model, prompt_ids = _start(cfg, tcfg, "xpo", progress)
    train_task = _train_task(cfg, bon_opts)
    # 4) Iterate 0 is pi_base: its held-out evaluation is the base evaluation.
    base_rows = eval_stage(out / "eval_base.jsonl", model, task, task.items, prompt_ids, cfg, tcfg.seed, progress)
    model = attach_lora(model, tcfg)
    if not (out / "round_0" / "adapter").exists():
        (out / "round_0").mkdir(exist_ok=True)
        save_adapter(model.module, out / "round_0" / "adapter")  # B = 0: exactly pi_base
    hist_path = out / "rounds.jsonl"
    history = runs.repair_jsonl(hist_path, keep=lambda r: r["round"] <= cfg.rounds)
    if not history:
        history = [{"round": 0, "steps": 0, "num_pairs": 0, **held_out_metrics(base_rows, cfg.beta)}]
        runs.write_jsonl(hist_path, history)
    done = {r["round"] for r in history}
    data_path = out / "xpo_data.jsonl"
    for t in range(1, cfg.rounds + 1):
        if t in done:
            continue
        rdir = out / f"round_{t}"
        restore_adapter(model, out / f"round_{t - 1}" / "adapter")  # pi_t
        # a) y ~ pi_t, y' ~ pi_base for every training prompt, added to D_t.
        pairs = collect_round(data_path, model, train_task, prompts, pools, cfg, tcfg.seed, t, progress)
        data = [p for p in pairs if usable(p)]
        # b) pi_{t+1} = argmin of the XPO loss over D_t, starting from pi_t (the final adapter is kept).
        result = train(model, data, functools.partial(pair_loss, kind="xpo", beta=cfg.beta, alpha=cfg.alpha),
                       tcfg, rdir, progress=progress)
        # c) The held-out J_beta of the new iterate.
        rows = eval_stage(rdir / "eval.jsonl", model, task, task.items, prompt_ids, cfg, tcfg.seed, progress)
        row = {"round": t, "steps": result.steps, "num_pairs": len(data), **held_out_metrics(rows, cfg.beta)}
        runs.append_jsonl(hist_path, [row])
        history.append(row)
    # The returned iterate: the largest held-out J_beta (ties: the earlier round).
    best = max(sorted(history, key=lambda r: r["round"]), key=j_beta_key)["round"]
    restore_adapter(model, out / f"round_{best}" / "adapter")
    save_adapter(model.module, out / "adapter")
    sharp_rows = base_rows if best == 0 else runs.load_jsonl(out / f"round_{best}" / "eval.jsonl")
    runs.write_jsonl(out / "eval_sharpened.jsonl", sharp_rows)
    training = {"best_round": best, "best_eval": next(r for r in history if r["round"] == best),
                "steps": sum(r["steps"] for r in history), "adapter": "adapter"}
    summary = build_summary(out, cfg, "xpo", base_rows, sharp_rows, runs.load_jsonl(data_path), training,
                            sorted(history, key=lambda r: r["round"]))
    return _finish(out, model, cfg, summary)
