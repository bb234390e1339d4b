"""Options of the stages that sample without training: `sharpen bon`, `sharpen eval`, `sharpen power`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import SharpenError
from .base import RunConfig, check_ray, check_temperature, opt, refuse_inert

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
        check_temperature(self.temperature, positive=False)
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
        check_temperature(self.temperature, positive=False)
        if self.samples == 0:
            refuse_inert(self, "with --samples 0 (greedy only)", "temperature", "seed")
        if self.adapter and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise SharpenError(f"--adapter {self.adapter} holds no PEFT adapter (no adapter_config.json): give the "
                               "adapter directory a training run wrote (its adapter/ folder)")


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
