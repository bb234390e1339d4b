"""Options of the training loop every amortized stage shares (`TrainConfig`) and the stages' default learning
rates."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from ..errors import SharpenError
from .base import flag, opt

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
