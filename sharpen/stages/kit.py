"""What the stages share that knows their configs: the bon run loop, held-out evaluations, the base sample pool of
the amortized stages, their validation split and the greedy validation that judges checkpoints.

The sampling underneath (`generation`: the resumable chunked loop, graded responses, log pi_base) knows no stage
config; this module turns a stage's options into calls to it. `run_pool` is the bon recipe: `sharpen bon` runs
it, `sharpen power` runs it with its own sampler, and sft, dpo and xpo run it into DIR/bon for their base samples
(`base_pool`). Stages import this module, never each other.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runs
from ..config import AmortizedConfig, BonConfig, EvalConfig, RunConfig, SharpenConfig
from ..engine.generate import EarlyStop, greedy, logprob_method, sample
from ..engine.models import Model, load_model, prompt_token_ids, sampling_dtype
from ..errors import SharpenError
from ..generation import Draw, complete_prompts, respond, run_chunked
from ..guards import guard_stats
from ..metrics import summarize, summarize_adaptive, summarize_responses
from ..rows import complete_pools, group_by_prompt, sample_rows
from ..scaleout import RayChunks
from ..selection import appd_decided, majority_decided
from ..tasks import VALIDATION, Item, Task, load_task

# ---------------------------------------------------------------------------------------------- evaluations

def eval_rows(path: Path | None, model: Model, task: Task, items: Sequence[Item], prompt_ids: dict[str, list[int]],
              cfg: EvalConfig | AmortizedConfig, seed: int, progress: bool = False, temperature: float = 1.0
              ) -> list[dict]:
    """Greedy + cfg.eval_samples responses per item (see `respond`), resumable chunk by chunk in `path`; rows in
    item order, greedy first."""
    per_prompt = 1 + cfg.eval_samples
    label = path.stem if path is not None else "eval"

    def draw(chunk: list[Item]) -> list[dict]:
        return respond(model, task, chunk, prompt_ids, cfg.eval_samples, cfg.max_new_tokens, temperature=temperature,
                       seed=seed, dtype=cfg.sample_dtype, progress=label if progress else None, chat=cfg.chat,
                       exact_logprobs=cfg.exact_logprobs)

    rows = run_chunked(path, items, per_prompt, draw, chunk=cfg.chunk, label=label, progress=False)
    order = {it.id: i for i, it in enumerate(items)}
    return sorted(rows, key=lambda r: (order[r["prompt_id"]], r["kind"] != "greedy", r["index"]))


# What the base model's evaluation rows depend on: runs that agree on these have the same eval_base.jsonl and
# val_base.jsonl (the validation items follow the training prompts, hence train_limit; the sampling seed is --seed).
BASE_EVAL_KEYS = ("task", "model", "subject", "level", "max_new_tokens", "chat", "dtype", "sample_dtype",
                  "exact_logprobs", "chunk", "train_limit", "eval_limit", "train_on_eval", "eval_samples", "val_limit",
                  "seed")
BASE_FILES = ("eval_base.jsonl", "val_base.jsonl")


def adopt_base_rows(cfg: AmortizedConfig, identity: dict[str, Any], out: Path) -> None:
    """--base-from DIR: copy DIR's base evaluation rows into this run where it has none yet, after checking that
    DIR was made with the same BASE_EVAL_KEYS and data directory (`identity`: this run's, all configs merged)."""
    if not cfg.base_from or all((out / name).exists() for name in BASE_FILES):
        return
    src = Path(cfg.base_from)
    if not (src / "config.json").is_file():
        raise SharpenError(f"--base-from {src} is not a run directory (no config.json): give the directory of an "
                           "sft, dpo, xpo or grpo run, or drop --base-from")
    old = runs.read_json(src / "config.json")
    if old.get("command") not in ("sft", "dpo", "xpo", "grpo"):
        raise SharpenError(f"--base-from {src} holds a '{old.get('command')}' run, not an sft, dpo, xpo or grpo "
                           "one: give such a run, or drop --base-from")
    theirs = {**old.get("identity", {}), "data_dir": old.get("options", {}).get("data_dir")}
    mine = {**identity, "data_dir": cfg.data_dir}
    for key in (*BASE_EVAL_KEYS, "data_dir"):
        if runs.same_value(mine.get(key), theirs.get(key)):
            continue
        raise SharpenError(f"--base-from {src} was made with {key}={theirs.get(key)!r} but this run has "
                           f"{key}={mine.get(key)!r}, so its base rows are not this run's: drop --base-from")
    for name in BASE_FILES:
        if not (out / name).exists() and (src / name).is_file():
            runs.atomic_write_text(out / name, (src / name).read_text())


def base_evaluation(out: Path, model: Model, task: Task, items: Sequence[Item], val_task: Task,
                    val_items: Sequence[Item], prompt_ids: dict[str, list[int]], cfg: AmortizedConfig,
                    identity: dict[str, Any], seed: int, progress: bool) -> tuple[list[dict], list[dict]]:
    """The base model on the held-out and the validation prompts (greedy, samples, log pi_base), resumable and
    shared across runs with --base-from: (eval_base rows, val_base rows)."""
    adopt_base_rows(cfg, identity, out)
    return (eval_rows(out / "eval_base.jsonl", model, task, items, prompt_ids, cfg, seed, progress),
            eval_rows(out / "val_base.jsonl", model, val_task, val_items, prompt_ids, cfg, seed, progress))


# ---------------------------------------------------------------------------------------------- the bon run loop

Sampler = Callable[[Model, list[list[int]], list[str]], list[list[Any]]]


class PoolDraws:
    """The draws of a bon run, one chunk of task items at a time -> their rows: `greedy`, `samples` (or a custom
    sampler's), `adaptive`. The same in the driver and in a scale-out worker (which passes out=None: a worker
    writes nothing, the driver is the run directory's single writer)."""

    def __init__(self, cfg: BonConfig, task: Task, model: Model, prompt_ids: dict[str, list[int]],
                 out: Path | None, progress: bool = False, sampler: Sampler | None = None) -> None:
        self.cfg, self.task, self.model, self.prompt_ids, self.out, self.sampler = (cfg, task, model, prompt_ids,
                                                                                   out, sampler)
        self.inner = "  responses" if progress else False  # the engine's bar inside a chunk
        self.early = EarlyStop(warmup=cfg.early_warmup, keep=cfg.early_keep) if cfg.early_stop else None

    def _ids(self, chunk: Sequence[Item]) -> list[list[int]]:
        return [self.prompt_ids[it.id] for it in chunk]

    def greedy(self, chunk: list[Item]) -> list[dict]:
        cfg = self.cfg
        out_ = greedy(self.model, self._ids(chunk), max_new_tokens=cfg.max_new_tokens,
                      stop=self.task.stops(cfg.chat), dtype=cfg.sample_dtype, progress=self.inner,
                      stats=cfg.confidence, exact_logprobs=cfg.exact_logprobs)
        return [r for it, s in zip(chunk, out_, strict=True) for r in sample_rows(self.task, it, [s])]

    def adaptive(self, chunk: list[Item]) -> list[dict]:
        """Rounds of cfg.adaptive_step samples (stream indices k, k + 1, ...: the samples one call would draw) for
        the prompts whose rule does not hold yet; each row records how many its prompt got (`drawn`)."""
        cfg = self.cfg
        got: dict[str, list[dict]] = {it.id: [] for it in chunk}
        active, k = list(chunk), 0
        while active and k < cfg.n:
            m = min(cfg.adaptive_step, cfg.n - k)
            out_ = sample(self.model, self._ids(active), n=m, max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, seed=cfg.seed, stop=self.task.stops(cfg.chat),
                          keys=[it.id for it in active], dtype=cfg.sample_dtype, progress=self.inner,
                          stats=cfg.confidence, first_index=k, exact_logprobs=cfg.exact_logprobs)
            for it, ss in zip(active, out_, strict=True):
                got[it.id] += sample_rows(self.task, it, ss, start=k)
            k += m
            active = [it for it in active if not _decided(got[it.id], cfg)]
        return [{**r, "drawn": len(got[it.id])} for it in chunk for r in got[it.id]]

    def samples(self, chunk: list[Item]) -> list[dict]:
        cfg, task = self.cfg, self.task
        if self.sampler is not None:
            out_ = self.sampler(self.model, self._ids(chunk), [it.id for it in chunk])
            return [r for it, ss in zip(chunk, out_, strict=True) for r in sample_rows(task, it, ss)]
        out_ = sample(self.model, self._ids(chunk), n=cfg.n, max_new_tokens=cfg.max_new_tokens,
                      temperature=cfg.temperature, seed=cfg.seed, stop=task.stops(cfg.chat),
                      keys=[it.id for it in chunk], dtype=cfg.sample_dtype, progress=self.inner,
                      early_stop=self.early, stats=cfg.confidence, exact_logprobs=cfg.exact_logprobs)
        if cfg.token_stats and self.out is not None:  # before the rows: a crash may repeat a chunk here
            runs.append_jsonl(self.out / "token_stats.jsonl",
                              ({"prompt_id": it.id, "index": i, **(s.token_stats or {})}
                               for it, ss in zip(chunk, out_, strict=True) for i, s in enumerate(ss)))
        return [r for it, ss in zip(chunk, out_, strict=True) for r in sample_rows(task, it, ss)]


def worker_draw(options: dict[str, Any], kind: str) -> tuple[dict[str, Item], Draw]:
    """In a scale-out worker: the run's task items by id and its `kind` draw ("greedy", "samples", "adaptive"),
    with the task and the model loaded here once (`scaleout`)."""
    cfg = BonConfig(**options)
    task = load_task(cfg.task, data_dir=cfg.data_dir, split=cfg.split, limit=cfg.limit, **cfg.task_options)
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in task.items}
    return {it.id: it for it in task.items}, getattr(PoolDraws(cfg, task, model, ids, None), kind)


def run_pool(cfg: BonConfig, task: Task, progress: bool = True, sampler: Sampler | None = None,
             command: str = "bon", configs: Sequence[RunConfig] | None = None) -> dict:
    """Best-of-N sampling into run directory cfg.out (or resume it): prompts.jsonl, greedy.jsonl, samples.jsonl
    and summary.json (every selector, offline). Returns the summary. The stages that need base samples (bon, and
    sft/dpo/xpo through DIR/bon) all come here.

    Steps: 1) check the run directory, 2) load the model, 3) write prompts.jsonl with the exact token ids the
    model saw, 4) greedy decode every prompt, 5) draw n samples per prompt at the sampling temperature with their
    raw log-probs (the self-reward of Eq. 2), 6) summarize all selectors over subsamples.
    sampler(model, prompt ids, keys): draws the n samples of a chunk instead of the engine's `sample` (power
    sampling); `command` and `configs` then name the run directory's owner and the options it is checked against.
    """
    cfg.validate()
    # 1) The run directory is checked before anything slow happens.
    out = Path(cfg.out or "")
    runs.open_run(out, command, configs or [cfg], num_prompts=len(task.items))
    # 2) Model.
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    items = task.items
    # 3) Prompts, with the exact token ids the model saw.
    prompt_ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in items}
    prompts_path = out / "prompts.jsonl"
    if [p["id"] for p in runs.load_jsonl(prompts_path)] != [it.id for it in items]:  # new, or lost lines
        runs.write_jsonl(prompts_path, ({"id": it.id, "prompt": it.prompt, "prompt_token_ids": prompt_ids[it.id],
                                         "answer": it.answer} for it in items))
    draws = PoolDraws(cfg, task, model, prompt_ids, out, progress, sampler)
    if cfg.workers > 1 or cfg.ray_address:  # the chunks go to a Ray actor pool; this process writes the files
        if sampler is not None:
            raise SharpenError(f"sharpen {command} samples in one process: drop --workers / --ray-address")
        remote = RayChunks(cfg, worker_draw)
        greedy_draw, samples_draw, adaptive_draw = (remote.draw(k) for k in ("greedy", "samples", "adaptive"))
    else:
        greedy_draw, samples_draw, adaptive_draw = draws.greedy, draws.samples, draws.adaptive

    # 4) Greedy: the baseline every selector is compared to.
    greedy_rows = run_chunked(out / "greedy.jsonl", items, 1, greedy_draw, chunk=cfg.chunk, label="greedy",
                              progress=progress)
    # 5) n samples per prompt, each with its raw temperature-1 log-prob.
    pool = run_chunked(out / "samples.jsonl", items, cfg.n, samples_draw if cfg.adaptive == "off" else adaptive_draw,
                       chunk=cfg.chunk, label=f"sample x{cfg.n}", progress=progress)
    # 6) Every selector, offline, over subsamples (adaptive N: the pick of the rule that stopped sampling).
    gold = {it.id: it.answer for it in items}
    summary = (summarize(pool, greedy_rows, n=cfg.n, seeds=cfg.seeds, gold=gold, labels=task.labels,
                         prompt_tokens={k: len(v) for k, v in prompt_ids.items()}) if cfg.adaptive == "off" else
               summarize_adaptive(pool, greedy_rows, cfg.n, cfg.adaptive, gold, task.labels))
    summary["task"], summary["model"] = cfg.task, cfg.model
    # The dtype the engine computed in: bf16 log-probs carry a small error (sharpen.engine.generate), fp32 none.
    summary["sample_dtype"] = str(sampling_dtype(cfg.sample_dtype, model.dtype, model.device, cfg.exact_logprobs)
                                  ).removeprefix("torch.")
    summary["logprobs"] = logprob_method(model, cfg.sample_dtype, cfg.exact_logprobs)
    summary["greedy_invalid_logprobs"] = sum(not _valid(r["logprob"]) for r in greedy_rows)
    summary["early_stop"] = ({"warmup": cfg.early_warmup, "keep": cfg.early_keep,
                              "stopped": sum(r["finish_reason"] == "early_stop" for r in pool)}
                             if cfg.early_stop else None)
    runs.atomic_write_json(out / "summary.json", summary)
    bad, bad_greedy = summary["invalid_logprobs"], summary["greedy_invalid_logprobs"]
    if bad or bad_greedy:
        print(f"sharpen: warning: {bad} of {summary['num_prompts'] * cfg.n} samples and {bad_greedy} of "
              f"{len(greedy_rows)} greedy responses have a NaN/inf log-prob (the model's forward pass is "
              "numerically broken: try --dtype float32); they are never selected as best", file=sys.stderr)
    return summary


def _decided(rows: list[dict], cfg: BonConfig) -> bool:
    if cfg.adaptive == "majority":
        return majority_decided([r.get("answer") for r in rows], cfg.n)
    return appd_decided([r["logprob"] for r in rows], cfg.adaptive_delta)


def _valid(logprob: float | None) -> bool:
    """A usable self-reward: stored NaN/inf log-probs are null in the files, and -inf is a legitimate value."""
    return logprob is not None and not math.isnan(logprob) and logprob != math.inf


# ---------------------------------------------------------------------------------------------- the base pool

@dataclass
class BasePool:
    """The base samples of an amortized-sharpening stage (see `base_pool`)."""
    dir: Path  # the bon run directory that holds them
    options: dict[str, Any]  # its options
    prompts: list[dict]  # training prompts (prompts.jsonl rows) that have all n samples
    pools: dict[str, list[dict]]  # prompt id -> samples 0..n-1
    sampled: bool  # drawn by this call (the caller then writes its report), not taken from --from-run


def base_pool(cfg: SharpenConfig, n: int, seed: int, out: Path, eval_items: Sequence[Item], temperature: float = 1.0,
              require_temperature: float | None = None, progress: bool = True) -> BasePool:
    """n base samples per training prompt for sft, dpo and xpo: drawn into DIR/bon (a bon run directory, resumable)
    or taken from a finished bon run (--from-run, checked for task, model, chat, n and `require_temperature`).
    Writes DIR/sampling.json, with the overlap of the training prompts with the evaluated ones."""
    if cfg.from_run:
        bon_dir = Path(cfg.from_run)
        match = {"task": cfg.task, "model": cfg.model, "chat": cfg.chat, "level": cfg.level}
        options = runs.check_source_run(bon_dir, "bon", match, n, temperature=require_temperature)
    else:
        bon = BonConfig(task=cfg.task, model=cfg.model, out=str(out / "bon"), data_dir=cfg.data_dir,
                        subject=cfg.subject, level=cfg.level,
                        limit=cfg.eval_limit if cfg.train_on_eval else cfg.train_limit,
                        n=n, seed=seed, max_new_tokens=cfg.max_new_tokens, temperature=temperature, chat=cfg.chat,
                        device=cfg.device, dtype=cfg.dtype, sample_dtype=cfg.sample_dtype,
                        exact_logprobs=cfg.exact_logprobs, chunk=cfg.chunk, workers=cfg.workers,
                        ray_address=cfg.ray_address, split="test" if cfg.train_on_eval else "train",
                        **({"adaptive": "appd", "adaptive_delta": cfg.adaptive_delta}
                           if getattr(cfg, "adaptive", False) else {}))
        bon.validate()
        task = load_task(bon.task, data_dir=bon.data_dir, split=bon.split, limit=bon.limit, **bon.task_options)
        run_pool(bon, task, progress=progress)
        bon_dir, options = Path(bon.out or ""), bon.options()
    prompts = runs.load_jsonl(bon_dir / "prompts.jsonl")
    if cfg.from_run and cfg.train_limit is not None and not cfg.train_on_eval:
        prompts = prompts[:cfg.train_limit]
    samples = runs.load_jsonl(bon_dir / "samples.jsonl")
    if options.get("adaptive", "off") == "off":
        pools, _ = complete_pools(samples, n)
    else:  # adaptive N: each prompt has the samples its rule asked for (App. D trains on the best of those)
        done = complete_prompts(samples, n)
        pools = {pid: rs for pid, rs in group_by_prompt(sorted(samples, key=lambda r: int(r["index"]))).items()
                 if pid in done}
    prompts = [p for p in prompts if str(p["id"]) in pools]
    if not prompts:
        raise SharpenError(f"no training prompt of {bon_dir} has {n} samples: finish that bon run first")
    overlap = len({p["prompt"] for p in prompts} & {it.prompt for it in eval_items})
    runs.atomic_write_json(out / "sampling.json", {"bon_dir": str(bon_dir), "bon_options": options,
                                                   "num_train_prompts": len(prompts), "overlap": overlap})
    return BasePool(bon_dir, options, prompts, pools, sampled=not cfg.from_run)


# ---------------------------------------------------------------------------------------------- validation

def validation_split(cfg: AmortizedConfig, train_prompts: Sequence[dict], eval_items: Sequence[Item]
                     ) -> tuple[Task, list[Item], dict[str, Any]]:
    """The validation prompts of a training stage, on which checkpoints (SFT) or iterates (DPO, XPO) are chosen:
    the first cfg.val_limit items of the task's own validation split where it has one (arith), else the first items
    of its train split that are neither training nor evaluated prompts (the training prompts are the first items of
    that split, so these come after them). Returns the task (to grade them), the items and what summary.json
    records about them."""
    split = "validation" if cfg.task in VALIDATION else "train"
    skip = 0 if cfg.train_on_eval or split == "validation" else len(train_prompts)
    task = load_task(cfg.task, data_dir=cfg.data_dir, split=split, limit=skip + cfg.val_limit, **cfg.task_options)
    train_text, eval_text = {p["prompt"] for p in train_prompts}, {it.prompt for it in eval_items}
    items = [it for it in task.items if it.prompt not in train_text and it.prompt not in eval_text][:cfg.val_limit]
    if not items:
        raise SharpenError(f"no validation prompt left in the train split of {cfg.task}: lower --train-limit or "
                           "raise --val-limit")
    texts = {it.prompt for it in items}
    info = {"split": split, "num_prompts": len(items), "overlap_with_eval": len(texts & eval_text),
            "overlap_with_train": len(texts & train_text)}
    return task, items, info


def greedy_validation(task: Task, items: Sequence[Item], prompt_ids: dict[str, list[int]], cfg: AmortizedConfig,
                      base_greedy: Sequence[dict]) -> Callable[[Model], dict[str, Any]]:
    """eval_fn of the training core for sft and grpo: greedy accuracy and mean log pi_base of the greedy responses
    on the validation prompts (never the evaluated ones: the kept checkpoint is chosen there), and the
    collapse-guard statistics against the base model's greedy responses to them."""
    def fn(model: Model) -> dict[str, Any]:
        rows = respond(model, task, items, prompt_ids, 0, cfg.max_new_tokens, dtype=cfg.sample_dtype, chat=cfg.chat,
                       exact_logprobs=cfg.exact_logprobs)
        st = summarize_responses(rows)["greedy"]
        return {"accuracy": st["accuracy"], "accuracy_ci": st["accuracy_ci"], "logprob_base": st["mean_logprob_base"],
                "logprob": st["mean_logprob"], "num_tokens": st["mean_num_tokens"],
                "guard": guard_stats(rows, base_greedy)}

    return fn


def accuracy_key(metrics: dict) -> tuple[float, float]:
    """Checkpoints judged by validation greedy accuracy, ties broken by the mean log pi_base."""
    lp = metrics.get("logprob_base")
    return float(metrics["accuracy"]), -math.inf if lp is None else float(lp)
