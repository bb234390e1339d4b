"""Options of the amortized-sharpening stages: `AmortizedConfig` (training, validation and held-out prompts) and
`sharpen sft`, `dpo`, `xpo`, `grpo`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SharpenError
from ..selection import REWARD_SELECTORS, REWARDS, SELECTORS
from .base import RunConfig, check_ray, check_temperature, number_or_auto, opt, refuse_inert


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
        check_temperature(self.temperature, positive=True)
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


# The pair losses' rewards: the label-free ones, and `random`, the control that trains on the same pairs with a
# coin's preference (stages.rlhf.coin_rewards).
RLHF_REWARDS = (*REWARDS, "random")


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
                                 "samples: amortizes majority vote), self_certainty (Kang et al. 2025) or random "
                                 "(a fair coin per pair picks the preferred side: the control that must not help)")
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
        if self.reward not in RLHF_REWARDS:
            raise SharpenError(f"unknown --reward {self.reward!r}: choose one of {', '.join(RLHF_REWARDS)}")
        if not (math.isfinite(self.invalid_penalty) and self.invalid_penalty >= 0):
            raise SharpenError(f"--invalid-penalty must be >= 0 (got {self.invalid_penalty})")
        check_temperature(self.temperature, positive=True)


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
