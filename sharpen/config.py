"""Options of every stage: one base dataclass with the fields all stages share, validated once; each stage's
config extends it. The CLI derives its options from these dataclasses (field, default, help), so a default is
stated in one place. Importable without torch: `sharpen --help` and `sharpen report` never load it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.spec import DEFAULT_MODEL, DTYPES, SAMPLE_DTYPE_HELP
from .errors import SharpenError
from .selection import REWARD_SELECTORS, REWARDS, SELECTORS


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field whose help text the CLI shows (the CLI is derived from the dataclass)."""
    return field(default=default, metadata={"help": help, **kw})


def number_or_auto(text: str) -> float | str:
    """An option value that is a number or the word 'auto'."""
    return "auto" if text == "auto" else float(text)


def bounded(kind: type, low: float, strict: bool = False) -> Any:
    """An argparse type for an option without a config field: a finite `kind` number >= low (> low if strict),
    refused at parsing, in one line, before anything runs."""
    def parse(text: str) -> Any:
        v = kind(text)
        if not math.isfinite(v) or v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low} (got {text})")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def check_dtype_name(spec: str | None, flag: str, auto: bool = True) -> None:
    """Fail early (before torch or a model loads) on a dtype name the engine would refuse."""
    if spec is None or (auto and spec == "auto") or spec in DTYPES:
        return
    raise SharpenError(f"unknown dtype {spec!r} for {flag}: use one of float32, bfloat16, float16")


def flag(name: str) -> str:
    """The command-line flag of a config field."""
    return "--" + name.replace("_", "-")


def refuse_inert(cfg: Any, why: str, *names: str) -> None:
    """Refuse options set away from their defaults where `why` (e.g. "without --early-stop") makes them do nothing:
    an option that is accepted must change the run."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in names:
        if getattr(cfg, name) != defaults[name]:
            raise SharpenError(f"{flag(name)} {getattr(cfg, name)} has no effect {why}: drop it")


def check_ray(cfg: Any) -> None:
    """--workers / --ray-address need Ray: say so before a model loads or a file is written."""
    if (cfg.workers > 1 or cfg.ray_address) and importlib.util.find_spec("ray") is None:
        raise SharpenError("--workers / --ray-address need Ray, which is not installed: pip install 'sharpen[ray]' "
                           "(or ray[data]), or drop them")


DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


@dataclass
class RunConfig:
    """The fields every stage shares: what to run on, where to write, how to decode."""
    task: str = opt("prontoqa", "task")  # the CLI appends the registered task names
    model: str = opt(DEFAULT_MODEL, "'gemma-3-270m' (embedded), a hub id, a model directory or a .gguf file")
    out: str | None = opt("runs/run", "run directory (re-running the same command resumes it)")
    data_dir: str | None = opt(None, "benchmark data directory (default: $SHARPEN_DATA_DIR, else the hub)")
    subject: str | None = opt(None, "MMLU subject(s), comma separated (default: the paper's three college ones)")
    level: str | None = opt(None, "arith difficulty: a preset 1-4 or a template like 'aa*b-cc' (letter runs are "
                                  "operands of that many digits; default: 1)")
    max_new_tokens: int = opt(512, "maximum response tokens; longer responses are cut and flagged")
    chat: bool = opt(False, "wrap prompts in the model's chat template (default: raw completion prompt)")
    device: str = opt("auto", "cpu, cuda, cuda:1 or auto")
    dtype: str | None = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU)")
    sample_dtype: str = opt("auto", SAMPLE_DTYPE_HELP)
    exact_logprobs: bool = opt(True, "store the model's own log-probs (the self-reward): bfloat16 samples of a float32 "
                                     "model are re-scored in float32; --no-exact-logprobs lets --sample-dtype auto "
                                     "sample in bfloat16 on CPUs that have it (about 3x faster) and keeps the bf16 "
                                     "log-probs (bench/exact_logprobs.py measures both)")
    chunk: int | None = opt(None, "prompts per sampling call, the unit of progress kept on interruption "
                                  "(default: about 1024 responses per call, enough to keep every row busy)")

    # Options that change results: a run directory refuses to resume with other values for them.
    IDENTITY = ("task", "model", "subject", "level", "max_new_tokens", "chat", "dtype", "sample_dtype",
                "exact_logprobs", "chunk")
    # Integer options that must be at least 1 when given (None means "all" or "auto").
    POSITIVE = ("max_new_tokens", "chunk")

    def validate(self) -> None:
        check_dtype_name(self.dtype, "--dtype", auto=False)
        check_dtype_name(self.sample_dtype, "--sample-dtype")
        if not DEVICE.fullmatch(self.device):
            raise SharpenError(f"unknown --device {self.device!r}: use cpu, cuda, cuda:N, mps or auto")
        for name in self.POSITIVE:
            v = getattr(self, name)
            if v is not None and v < 1:
                raise SharpenError(f"{flag(name)} must be at least 1 (got {v})")
        if self.data_dir is not None and self.task == "arith":
            raise SharpenError("--data-dir has no effect on --task arith (its items are generated): drop it")

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def task_options(self) -> dict[str, Any]:
        """Keyword options of `load_task` beyond name, data dir, split and limit."""
        return {k: v for k, v in (("subject", self.subject), ("level", self.level)) if v}


def _check_temperature(t: float, positive: bool) -> None:
    if not math.isfinite(t) or t < 0 or (positive and t == 0):
        raise SharpenError(f"--temperature must be {'> 0 for sampling' if positive else '>= 0'} (got {t})"
                           + ("" if positive else "; 0 means greedy"))


ADAPTIVE = ("off", "majority", "appd")


@dataclass
class BonConfig(RunConfig):
    out: str | None = opt("runs/bon", "run directory (re-running the same command resumes it)")
    limit: int | None = opt(None, "evaluate the first LIMIT items of the paper's subset (default: all of it)")
    split: str = opt("test", "test: the paper's evaluation subset; train: training prompts (used by sft); "
                             "validation: arith's validation items")
    n: int = opt(50, "samples per prompt (the paper: 50)")
    seeds: int = opt(10, "subsampling seeds for accuracy at each N (the paper: 10)")
    seed: int = opt(0, "sampling seed: samples depend only on (seed, prompt id, sample index)")
    temperature: float = opt(1.0, "sampling temperature (log-probs are always those of temperature 1)")
    confidence: bool = opt(True, "record per-token statistics while sampling for the confidence selectors "
                                 "(self-certainty, DeepConf, CISC); --no-confidence samples about 20% faster in "
                                 "bfloat16 (bench/token_stats.py)")
    early_stop: bool = opt(False, "stop low-confidence samples online (DeepConf-online): after a warm-up of "
                                  "--early-warmup samples per prompt, a sample whose confidence over a window of "
                                  "tokens falls below the warm-up's threshold ends as 'early_stop'; votes ignore it")
    early_warmup: int = opt(8, "early stopping: samples per prompt that run in full and set the threshold")
    early_keep: float = opt(0.9, "early stopping: share of the warm-up samples above the threshold (DeepConf's eta)")
    adaptive: str = opt("off", "adaptive N: sample each prompt in rounds of --adaptive-step and stop once the rule "
                               "holds: 'majority' (the leading answer cannot be overtaken by the samples left; the "
                               "summary then reports majority vote only), 'appd' (App. D: k * max pi(y|x) >= "
                               "ln(2/delta)), or 'off'")
    adaptive_step: int = opt(4, "adaptive N: samples per prompt and round")
    adaptive_delta: float = opt(0.1, "adaptive N, rule appd: the failure probability delta of App. D")
    token_stats: bool = opt(False, "also write each sample's per-token entropy, self-certainty term and DeepConf "
                                   "confidence to token_stats.jsonl (the summaries are always in samples.jsonl)")
    workers: int = opt(1, "spread the sampling calls (chunks) over K Ray actors, one engine each (1 GPU each on GPUs, "
                          "an equal share of the CPUs otherwise); this process stays the run directory's only "
                          "writer, and the samples are those of one process (needs: pip install 'sharpen[ray]')")
    ray_address: str | None = opt(None, "a running Ray cluster to use (e.g. ray://head:10001 or auto; default: "
                                        "a local one started for the run)")

    IDENTITY = RunConfig.IDENTITY + ("limit", "split", "n", "seed", "temperature", "confidence", "early_stop",
                                     "early_warmup", "early_keep", "adaptive", "adaptive_step", "adaptive_delta")
    POSITIVE = RunConfig.POSITIVE + ("n", "seeds", "limit", "early_warmup", "adaptive_step", "workers")

    def validate(self) -> None:
        super().validate()
        _check_temperature(self.temperature, positive=False)
        if not 0 < self.early_keep <= 1:
            raise SharpenError(f"--early-keep must lie in (0, 1] (got {self.early_keep})")
        if self.early_stop and not self.confidence:
            raise SharpenError("--early-stop needs the per-token confidences: drop --no-confidence")
        if self.adaptive not in ADAPTIVE:
            raise SharpenError(f"unknown --adaptive {self.adaptive!r}: choose one of {', '.join(ADAPTIVE)}")
        if self.adaptive != "off" and self.early_stop:
            raise SharpenError("--adaptive and --early-stop do not combine (the warm-up needs one call): pick one")
        if not 0 < self.adaptive_delta < 1:
            raise SharpenError(f"--adaptive-delta must lie in (0, 1) (got {self.adaptive_delta})")
        if (self.workers > 1 or self.ray_address) and self.token_stats:
            raise SharpenError("--token-stats is written by the sampling process: drop it, or drop --workers")
        if self.token_stats and not self.confidence:
            raise SharpenError("--token-stats needs the per-token statistics: drop --no-confidence")
        if self.token_stats and self.adaptive != "off":
            raise SharpenError("--token-stats has no effect with --adaptive (its rounds keep no per-token "
                               "statistics): drop one")
        if self.early_stop and self.early_warmup >= self.n:
            raise SharpenError(f"--early-warmup {self.early_warmup} must be below --n {self.n}: the warm-up samples "
                               "run in full, so no sample could stop early")
        if not self.early_stop:
            refuse_inert(self, "without --early-stop", "early_warmup", "early_keep")
        if self.adaptive == "off":
            refuse_inert(self, "without --adaptive", "adaptive_step", "adaptive_delta")
        else:
            refuse_inert(self, f"with --adaptive {self.adaptive} (the summary does not subsample)", "seeds")
        if self.adaptive == "majority":
            refuse_inert(self, "with --adaptive majority (delta is rule appd's)", "adaptive_delta")
        check_ray(self)


@dataclass
class EvalConfig(RunConfig):
    out: str | None = opt(None, "write eval.json and the responses (eval.jsonl) into this directory "
                                "(re-running the same command resumes it)")
    adapter: str | None = opt(None, "a PEFT adapter directory, e.g. an sft run's adapter/ (default: none)")
    limit: int | None = opt(None, "evaluate the first LIMIT items of the paper's subset (default: all of it)")
    samples: int = opt(1, "temperature-1 samples per prompt (0: greedy only)")
    temperature: float = opt(1.0, "sampling temperature of the samples")
    seed: int = opt(0, "sampling seed (samples depend only on seed, prompt id and sample index)")

    IDENTITY = RunConfig.IDENTITY + ("adapter", "limit", "samples", "temperature", "seed")
    POSITIVE = RunConfig.POSITIVE + ("limit",)

    @property
    def eval_samples(self) -> int:
        """--samples under the name the training stages' evaluations use."""
        return self.samples

    def validate(self) -> None:
        super().validate()
        if self.samples < 0:
            raise SharpenError(f"--samples must be >= 0 (got {self.samples})")
        _check_temperature(self.temperature, positive=False)
        if self.samples == 0:
            refuse_inert(self, "with --samples 0 (greedy only)", "temperature", "seed")
        if self.adapter and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise SharpenError(f"--adapter {self.adapter} holds no PEFT adapter (no adapter_config.json): give the "
                               "adapter directory a training run wrote (its adapter/ folder)")


LOG_TARGETS = ("none", "tensorboard")
KEEP = ("best", "last")


@dataclass
class TrainConfig:
    """LoRA fine-tuning options; defaults are the paper's SFT-sharpening setup (App. A.3) where it gives one."""
    lr: float | None = opt(None, "peak learning rate after the warmup, then decayed linearly to zero (default: "
                                 "3e-4 for sft, the paper's; 2e-5 for dpo and xpo, whose losses ask for far larger "
                                 "log-ratio changes per step)")
    warmup: float = opt(0.1, "linear learning-rate warmup: this share of the optimizer steps (a value >= 1: this "
                             "many steps); 0 starts at the peak, as the paper's schedule does")
    epochs: int = opt(30, "passes over the training data (the paper: 30)")
    batch_size: int = opt(4, "examples per micro-batch and process (the paper: 4)")
    grad_accum: int = opt(1, "micro-batches per optimizer step; effective batch = batch-size x grad-accum x GPUs")
    lora_rank: int = opt(16, "LoRA rank (the paper: 16, 8 for Mistral)")
    lora_alpha: float | None = opt(None, "LoRA alpha (default: 2 x rank; the paper does not say)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA input")
    lora_targets: str = opt("all-linear", "modules given adapters: 'all-linear' or comma-separated names")
    weight_decay: float = opt(0.0, "AdamW weight decay (the paper swept 0.0-1.0 per task)")
    clip: float = opt(0.1, "gradient-norm clipping threshold (the paper: 0.1); 0 disables")
    eval_every: int = opt(50, "optimizer steps between held-out evaluations and checkpoints")
    keep: str = opt("best", "which adapter the run keeps: 'best' (the best validation score, the base model "
                            "included: greedy accuracy for sft and grpo, J_beta for dpo and xpo; ties keep the "
                            "earlier) or 'last' (the last one no collapse guard stopped: a fixed training budget, "
                            "as the paper's)")
    max_steps: int | None = opt(None, "stop after this many optimizer steps (default: all epochs)")
    seed: int = opt(0, "seed of sampling, data order, LoRA initialization and dropout")
    mixed_precision: str = opt("no", "'no' (fp32 math) or 'bf16' (autocast, on CPU too)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory, slower)")
    guard_empty: float = opt(0.5, "collapse guard: stop when this share of the validation responses is empty")
    guard_truncated: float = opt(0.5, "collapse guard: stop when this share hits the token limit")
    guard_length: float = opt(4.0, "collapse guard: stop when the mean response length leaves [base / L, base x L]")
    guard_repetition: float = opt(0.6, "collapse guard: stop when this share of the responses' token 3-grams repeat")
    guard_answer_drop: float = opt(0.3, "collapse guard: stop when the answer rate falls this far below the base's")
    guard_kl: float = opt(0.0, "collapse guard: stop when the estimated KL(pi || pi_base) exceeds this (0: off)")
    log_to: str = opt("none", "also log the training metrics to: tensorboard (event files in DIR/tensorboard, "
                              "or DIR/round_T/tensorboard for xpo; needs pip install 'sharpen[tensorboard]'); "
                              "DIR/metrics.jsonl is written either way")

    # Options that change the trained weights: a checkpoint refuses to resume under other values.
    IDENTITY = ("lr", "warmup", "epochs", "batch_size", "grad_accum", "lora_rank", "lora_alpha", "lora_dropout",
                "lora_targets", "weight_decay", "clip", "eval_every", "keep", "max_steps", "seed", "mixed_precision",
                "guard_empty", "guard_truncated", "guard_length", "guard_repetition", "guard_answer_drop", "guard_kl")

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "lora_rank", "eval_every"):
            if getattr(self, name) < 1:
                raise SharpenError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise SharpenError(f"--lr must be a positive number (got {self.lr})")
        if not (math.isfinite(self.warmup) and self.warmup >= 0):
            raise SharpenError(f"--warmup must be >= 0 (got {self.warmup})")
        if not all(math.isfinite(v) and v >= 0 for v in (self.weight_decay, self.clip)):
            raise SharpenError("--weight-decay and --clip must be >= 0 (--clip 0 disables clipping)")
        if self.max_steps is not None and self.max_steps < 1:
            raise SharpenError(f"--max-steps must be at least 1 (got {self.max_steps})")
        if not 0 <= self.lora_dropout < 1:
            raise SharpenError(f"--lora-dropout must lie in [0, 1) (got {self.lora_dropout})")
        if self.keep not in KEEP:
            raise SharpenError(f"unknown --keep {self.keep!r}: choose one of {', '.join(KEEP)}")
        if self.mixed_precision not in ("no", "bf16"):
            raise SharpenError(f"--mixed-precision must be 'no' or 'bf16' (got {self.mixed_precision!r})")
        if self.log_to not in LOG_TARGETS:
            raise SharpenError(f"unknown --log-to {self.log_to!r}: choose one of {', '.join(LOG_TARGETS)}")
        if self.log_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise SharpenError("--log-to tensorboard needs the tensorboard package: pip install "
                               "'sharpen[tensorboard]' (or drop --log-to; metrics.jsonl is written either way)")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise SharpenError(f"--warmup {self.warmup:g} is neither a share (below 1) nor a whole number of steps")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise SharpenError(f"--lora-alpha must be a positive number (got {self.lora_alpha}; 0 would switch the "
                               "adapter off)")
        self._check_guards()

    def _check_guards(self) -> None:
        """Collapse-guard limits that can be met: a share guard in (0, 1], the length band [base / L, base x L]
        with L > 1 (L <= 1 leaves no length allowed, and the guard stops the first evaluation), a KL limit >= 0."""
        for name in ("guard_empty", "guard_truncated", "guard_repetition", "guard_answer_drop"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise SharpenError(f"{flag(name)} is a share and must lie in (0, 1] (got {v}; 1 stops only when "
                                   "every response does it)")
        if not (math.isfinite(self.guard_length) and self.guard_length > 1):
            raise SharpenError(f"--guard-length must be above 1: the mean length may range over [base / L, base x L] "
                               f"(got {self.guard_length}; a large L such as 100 all but switches the guard off)")
        if not (math.isfinite(self.guard_kl) and self.guard_kl >= 0):
            raise SharpenError(f"--guard-kl must be a number >= 0 (got {self.guard_kl}; 0 switches it off)")

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_lr(self, default: float) -> TrainConfig:
        """This config with the stage's default learning rate where --lr was not given."""
        return self if self.lr is not None else dataclasses.replace(self, lr=default)


SFT_LR = 3e-4  # the paper's (App. A.3)
PREFERENCE_LR = 2e-5  # reward-based DPO / XPO on LoRA: the usual range of preference losses (1e-5 to 5e-5)
RL_LR = 2e-5  # GRPO on LoRA: policy-gradient steps as small as the preference losses
GRPO_STEPS = 64  # `sharpen grpo`'s default --max-steps: each step samples, so epochs are not its unit


@dataclass
class AmortizedConfig(RunConfig):
    """Fields of every amortized-sharpening stage (sft, dpo, xpo, grpo): training prompts, held-out prompts, the
    validation split. Training options are `TrainConfig`'s; the sampling seed is its --seed."""
    train_limit: int | None = opt(256, "training prompts: the first TRAIN_LIMIT of the task's train split "
                                       "(disjoint from the evaluated subset), as many as the paper evaluates")
    eval_limit: int | None = opt(None, "held-out prompts: the first EVAL_LIMIT items of the paper's subset "
                                       "(default: all of it)")
    train_on_eval: bool = opt(False, "train on the evaluated prompts themselves (the paper's protocol)")
    eval_samples: int = opt(1, "temperature-1 samples per held-out prompt in the before/after evaluation")
    valid_only: bool = opt(True, "train only on responses that ended (EOS or a stop string) and parse to an "
                                 "answer: sft targets and dpo pairs; xpo and grpo give the others "
                                 "--invalid-penalty")
    val_limit: int = opt(32, "validation prompts, on which the kept checkpoint is chosen: items of the task's train "
                             "split after the training prompts, never a training or an evaluated prompt")
    merge: bool = opt(False, "also write the base model with the adapter merged in (DIR/merged)")
    base_from: str | None = opt(None, "start from the base model's evaluation rows (eval_base.jsonl, "
                                      "val_base.jsonl) of another sft, dpo, xpo or grpo run directory made with the "
                                      "same model, task, items, evaluation options and seed (checked), instead of "
                                      "computing them again; a partial file is completed")

    IDENTITY = RunConfig.IDENTITY + ("train_limit", "eval_limit", "train_on_eval", "eval_samples", "val_limit",
                                     "valid_only")
    POSITIVE = RunConfig.POSITIVE + ("train_limit", "eval_limit", "val_limit")

    def validate(self) -> None:
        super().validate()
        if self.train_on_eval:
            refuse_inert(self, "with --train-on-eval (the training prompts are the --eval-limit evaluated ones)",
                         "train_limit")

    @property
    def protocol(self) -> str:
        return "train-on-eval" if self.train_on_eval else "held-out"


@dataclass
class SharpenConfig(AmortizedConfig):
    """The stages trained on base samples (sft, dpo, xpo): they can reuse a finished bon run's."""
    from_run: str | None = opt(None, "reuse the samples of a finished `sharpen bon` run directory")
    workers: int = opt(1, "draw the base samples on K Ray actors (as `sharpen bon --workers`; needs sharpen[ray])")
    ray_address: str | None = opt(None, "a running Ray cluster for --workers (default: a local one)")

    IDENTITY = AmortizedConfig.IDENTITY + ("from_run",)
    POSITIVE = AmortizedConfig.POSITIVE + ("workers",)

    def validate(self) -> None:
        super().validate()
        if self.from_run:
            refuse_inert(self, "with --from-run (nothing is sampled)", "workers", "ray_address")
            if not (Path(self.from_run) / "config.json").is_file():
                raise SharpenError(f"--from-run {self.from_run} is not a run directory (no config.json): give the "
                                   "directory of a finished `sharpen bon` run")
        check_ray(self)


@dataclass
class SftConfig(SharpenConfig):
    out: str | None = opt("runs/sft", "run directory (re-running the same command resumes it)")
    n: int = opt(50, "samples per training prompt (the paper: 50)")
    selector: str = opt("logprob", "which sample to train on: " + ", ".join(SELECTORS)
                        + " (logprob is the paper's; oracle uses the ground truth)")
    reward: str | None = opt(None, "pick each target by a reward instead of --selector: logprob, logprob_mean, vote "
                                   "(log share of its answer among the prompt's samples) or self_certainty; the "
                                   "pick is that of the selector maximizing it (" + ", ".join(
                                       f"{k}: {v}" for k, v in REWARD_SELECTORS.items()) + ")")
    temperature: float = opt(1.0, "sampling temperature of the N training samples (the paper: 1)")
    adaptive: bool = opt(False, "App. D's adaptive SFT-sharpening: sample each training prompt in rounds of 4 and "
                                "stop once k * max_j pi(y_j|x) >= ln(2/delta) (at most --n samples)")
    adaptive_delta: float = opt(0.1, "--adaptive: the failure probability delta of App. D")
    per_prompt: int = opt(1, "targets per training prompt: the pick, then up to K - 1 more distinct samples with "
                             "the pick's answer, each the selector's pick among those left (with --reward vote: K "
                             "paths of the majority answer, as Huang et al. 2022)")
    min_agreement: float = opt(0.0, "train only on prompts whose most common answer is given by at least this share "
                                    "of the N samples (a label-free filter of unsure prompts; 0: all)")

    IDENTITY = SharpenConfig.IDENTITY + ("n", "selector", "reward", "temperature", "adaptive", "adaptive_delta",
                                         "per_prompt", "min_agreement")
    POSITIVE = SharpenConfig.POSITIVE + ("n", "per_prompt")

    def identity(self) -> dict[str, Any]:
        ids = super().identity()
        # At their defaults, the only behaviour before the options existed: such runs still resume.
        for name, default in (("per_prompt", 1), ("min_agreement", 0.0)):
            if getattr(self, name) == default:
                del ids[name]
        return ids

    @property
    def target_selector(self) -> str:
        """The selector that picks each prompt's target: --reward's maximizer, else --selector."""
        return REWARD_SELECTORS[self.reward] if self.reward else self.selector

    def validate(self) -> None:
        super().validate()
        if self.selector not in SELECTORS:
            raise SharpenError(f"unknown selector {self.selector!r}: choose one of {', '.join(SELECTORS)}")
        if self.reward is not None and self.reward not in REWARD_SELECTORS:
            raise SharpenError(f"unknown --reward {self.reward!r}: choose one of {', '.join(REWARD_SELECTORS)}")
        if self.reward is not None and self.selector not in ("logprob", self.target_selector):
            raise SharpenError(f"--reward {self.reward} picks with the {self.target_selector} selector, not "
                               f"--selector {self.selector}: give one of the two")
        if self.eval_samples < 0:
            raise SharpenError(f"--eval-samples must be >= 0 (got {self.eval_samples})")
        _check_temperature(self.temperature, positive=True)
        if not 0 < self.adaptive_delta < 1:
            raise SharpenError(f"--adaptive-delta must lie in (0, 1) (got {self.adaptive_delta})")
        if not 0 <= self.min_agreement <= 1:
            raise SharpenError(f"--min-agreement must lie in [0, 1] (got {self.min_agreement})")
        if not self.adaptive:
            refuse_inert(self, "without --adaptive", "adaptive_delta")
        elif self.from_run:
            raise SharpenError("--adaptive has no effect with --from-run (the bon run's samples are taken as they "
                               "are): drop one")


LOSSES = ("square", "logistic")


@dataclass
class RlhfConfig(SharpenConfig):
    """Options shared by `sharpen dpo` and `sharpen xpo`."""
    out: str | None = opt("runs/rlhf", "run directory (re-running the same command resumes it)")
    beta: float | str = opt(0.05, "KL weight of J_beta = E_pi[log pi_base] - beta KL(pi||pi_base); its optimum "
                                  "is pi_base^(1+1/beta), sharper as beta -> 0. 'auto': the median |r(y) - r(y')| "
                                  "over pairs of valid base samples, so the median pair asks the policy for a "
                                  "1-nat change of its log-ratio gap", parse=number_or_auto)
    sft_weight: float = opt(0.0, "weight of an SFT term -log pi(y+)/|y+| on the higher-reward response of each pair "
                                 "(as RPO); > 0 leaves the paper's closed-form optimum")
    eval_samples: int = opt(4, "temperature-1 samples per held-out prompt: sample accuracy and the J_beta "
                               "estimate that picks the kept adapter")
    reward: str = opt("logprob", "the reward r(y) of the pair loss: logprob (the paper's r_self = log pi_base), "
                                 "logprob_mean (per token), vote (log share of y's answer among the prompt's base "
                                 "samples: amortizes majority vote) or self_certainty (Kang et al. 2025)")
    invalid_penalty: float = opt(10.0, "xpo: nats taken off the reward of a response that did not end or has no "
                                       "answer (as TRL's missing_eos_penalty)")
    temperature: float = opt(1.0, "temperature of the base samples y' (the paper's: 1). The square loss is zero "
                                  "on every pair at pi_base exp(r / beta) / Z, so drawing pairs at another "
                                  "temperature changes which responses are compared, not the optimum; r and "
                                  "log pi_base stay those of temperature 1")

    IDENTITY = SharpenConfig.IDENTITY + ("beta", "reward", "invalid_penalty", "sft_weight", "temperature")

    def validate(self) -> None:
        super().validate()
        if self.beta != "auto" and not (isinstance(self.beta, float | int) and math.isfinite(self.beta)
                                        and self.beta > 0):
            raise SharpenError(f"--beta must be a positive number or 'auto' (got {self.beta})")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise SharpenError(f"--sft-weight must be >= 0 (got {self.sft_weight})")
        if self.eval_samples < 1:
            raise SharpenError(f"--eval-samples must be at least 1: J_beta is estimated from samples of the "
                               f"policy (got {self.eval_samples})")
        if self.reward not in REWARDS:
            raise SharpenError(f"unknown --reward {self.reward!r}: choose one of {', '.join(REWARDS)}")
        if not (math.isfinite(self.invalid_penalty) and self.invalid_penalty >= 0):
            raise SharpenError(f"--invalid-penalty must be >= 0 (got {self.invalid_penalty})")
        _check_temperature(self.temperature, positive=True)


@dataclass
class DpoConfig(RlhfConfig):
    out: str | None = opt("runs/dpo", "run directory (re-running the same command resumes it)")
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
        refuse_inert(self, "on dpo (its pairs are base samples: --valid-only keeps the valid ones, "
                     "--no-valid-only keeps all unpenalized)", "invalid_penalty")


@dataclass
class XpoConfig(RlhfConfig):
    out: str | None = opt("runs/xpo", "run directory (re-running the same command resumes it)")
    rounds: int = opt(4, "rounds of Algorithm 1 (sample, add pairs, retrain); --epochs / --max-steps are per round")
    pairs: int = opt(1, "pairs (y ~ pi_t, y' ~ pi_base) per training prompt and round")
    alpha: float = opt(1e-3, "weight of the optimism term alpha * log pi(y'|x) of Algorithm 1 (0: online DPO)")

    IDENTITY = RlhfConfig.IDENTITY + ("rounds", "pairs", "alpha")
    POSITIVE = RlhfConfig.POSITIVE + ("rounds", "pairs")

    @property
    def n(self) -> int:
        """Base samples per training prompt: one y' per pair of every round."""
        return self.rounds * self.pairs

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise SharpenError(f"--alpha must be a number >= 0 (got {self.alpha})")
        if not self.valid_only:
            refuse_inert(self, "with --no-valid-only (no response is penalized)", "invalid_penalty")


GRPO_REWARDS = (*REWARDS, "gold", "random")
ADVANTAGES = ("grpo", "mean", "rloo")


@dataclass
class GrpoConfig(AmortizedConfig):
    """`sharpen grpo`: online group-relative policy optimization with a label-free reward."""
    out: str | None = opt("runs/grpo", "run directory (re-running the same command resumes it)")
    reward: str = opt("vote", "reward of each response within its group: vote (log share of its answer among the "
                              "group: TTRL's majority reward), self_certainty (the policy's mean KL(U || p) per "
                              "token, as Intuitor), logprob (log pi_base(y), the paper's self-reward), "
                              "logprob_mean (per token); controls: gold (1 if correct: uses labels, an upper "
                              "bound) and random (a fair coin: the spurious-reward control)")
    group: int = opt(8, "responses sampled per prompt and step from the current policy (temperature 1)")
    advantage: str = opt("grpo", "grpo: (r - group mean) / group std; mean: r - group mean (Dr. GRPO); rloo: r - "
                                 "mean of the group's other responses (RLOO)")
    kl_coef: float = opt(0.04, "weight of the per-token KL(pi || pi_base) penalty (k3 estimator; pi_base = the "
                               "model with its adapter off; DeepSeekMath: 0.04)")
    clip_eps: float = opt(0.2, "clip range of the probability ratio pi / pi_old in the surrogate objective (acts "
                               "only with --iterations > 1: the first update on a batch has pi_old = pi)")
    iterations: int = opt(1, "optimizer updates on each sampled batch (TRL's num_iterations, PPO's epochs): the first "
                             "from the policy that drew it, the others with the ratio to that policy clipped at "
                             "--clip-eps; --max-steps and --eval-every count batches")
    invalid_penalty: float = opt(1.0, "with --valid-only, a response that did not end or has no answer gets the "
                                      "group's lowest reward minus this (as TRL's missing_eos_penalty)")
    eval_samples: int = opt(4, "temperature-1 samples per held-out prompt in the before/after evaluation")

    IDENTITY = AmortizedConfig.IDENTITY + ("reward", "group", "advantage", "kl_coef", "clip_eps", "invalid_penalty",
                                           "iterations")
    POSITIVE = AmortizedConfig.POSITIVE + ("iterations",)

    def identity(self) -> dict[str, Any]:
        ids = super().identity()
        if self.iterations == 1:  # the only behaviour before the option existed: such runs still resume
            del ids["iterations"]
        return ids

    def validate(self) -> None:
        super().validate()
        if self.reward not in GRPO_REWARDS:
            raise SharpenError(f"unknown --reward {self.reward!r}: choose one of {', '.join(GRPO_REWARDS)}")
        if self.group < 2:
            raise SharpenError(f"--group must be at least 2: advantages compare a response with its group "
                               f"(got {self.group})")
        if self.advantage not in ADVANTAGES:
            raise SharpenError(f"unknown --advantage {self.advantage!r}: choose one of {', '.join(ADVANTAGES)}")
        for name in ("kl_coef", "clip_eps", "invalid_penalty"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise SharpenError(f"--{name.replace('_', '-')} must be a number >= 0 (got {v})")
        if self.eval_samples < 0:
            raise SharpenError(f"--eval-samples must be >= 0 (got {self.eval_samples})")
        if not self.valid_only:
            refuse_inert(self, "with --no-valid-only (no response is penalized)", "invalid_penalty")


POWER_METHODS = ("mh", "smc")


@dataclass
class PowerConfig(RunConfig):
    """`sharpen power`: draws from pi^alpha by MCMC (mh) or sequential Monte Carlo (smc), in the bon format."""
    out: str | None = opt("runs/power", "run directory (re-running the same command resumes it)")
    limit: int | None = opt(None, "evaluate the first LIMIT items of the paper's subset (default: all of it)")
    split: str = opt("test", "test: the paper's evaluation subset; train: training prompts; validation: arith's")
    alpha: float = opt(4.0, "the power: draws target pi^alpha, the RLHF-sharpening optimum of beta = 1/(alpha - 1)")
    method: str = opt("mh", "mh: block-wise Metropolis-Hastings with suffix resampling (Karan & Du 2025); smc: "
                            "sequential Monte Carlo with resampling (Power-SMC)")
    n: int = opt(8, "draws per prompt: MH chains or SMC particles (the selectors then run over them)")
    block: int = opt(32, "tokens per block: the response grows a block at a time (MH moves / SMC reweighting "
                         "after each)")
    mh_steps: int = opt(4, "mh: Metropolis-Hastings moves per chain after each block")
    threshold: float = opt(0.5, "smc: resample when the effective sample size falls below this share of --n")
    proposal_temperature: float | None = opt(None, "temperature of the proposal (default 1/alpha: then each "
                                                   "token's weight is the tempered normalizer)")
    seeds: int = opt(10, "subsampling seeds for the selectors' accuracy at each N")
    seed: int = opt(0, "seed of the proposals, positions, acceptances and resamplings")

    IDENTITY = RunConfig.IDENTITY + ("limit", "split", "alpha", "method", "n", "block", "mh_steps", "threshold",
                                     "proposal_temperature", "seed")
    POSITIVE = RunConfig.POSITIVE + ("limit", "n", "block", "seeds")

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.alpha) and self.alpha >= 1):
            raise SharpenError(f"--alpha must be a number >= 1 (got {self.alpha}; 1 is plain sampling)")
        if self.method not in POWER_METHODS:
            raise SharpenError(f"unknown --method {self.method!r}: choose mh or smc")
        if self.mh_steps < 0:
            raise SharpenError(f"--mh-steps must be >= 0 (got {self.mh_steps})")
        if not 0 < self.threshold <= 1:
            raise SharpenError(f"--threshold must lie in (0, 1] (got {self.threshold})")
        refuse_inert(self, f"with --method {self.method}", "threshold" if self.method == "mh" else "mh_steps")
        if self.proposal_temperature is not None and not (math.isfinite(self.proposal_temperature)
                                                          and self.proposal_temperature > 0):
            raise SharpenError(f"--proposal-temperature must be > 0 (got {self.proposal_temperature})")

    def bon_config(self) -> BonConfig:
        """The bon options of the run directory's samples: its layout, the selectors, the summary."""
        return BonConfig(task=self.task, model=self.model, out=self.out, data_dir=self.data_dir, subject=self.subject,
                         level=self.level, max_new_tokens=self.max_new_tokens, chat=self.chat, device=self.device,
                         dtype=self.dtype,
                         sample_dtype=self.sample_dtype, exact_logprobs=self.exact_logprobs, chunk=self.chunk,
                         limit=self.limit, split=self.split, n=self.n, seeds=self.seeds, seed=self.seed,
                         temperature=self.proposal_temperature or 1.0 / self.alpha, confidence=False)
