"""Options of every stage: one base dataclass with the fields all stages share, validated once; each stage's
config extends it. The CLI derives its options from these dataclasses (field, default, help), so a default is
stated in one place. Importable without torch: `sharpen --help` and `sharpen report` never load it.

base.py: `opt`, the shared checks and `RunConfig`; sampling.py: bon, eval and power; training.py: the training
loop's `TrainConfig` and the default learning rates; amortized.py: sft, dpo, xpo and grpo.
"""

from .amortized import (
    ADVANTAGES,
    GRPO_REWARDS,
    LOSSES,
    AmortizedConfig,
    DpoConfig,
    GrpoConfig,
    RlhfConfig,
    SftConfig,
    SharpenConfig,
    XpoConfig,
)
from .base import DEVICE, RunConfig, bounded, check_dtype_name, check_ray, flag, number_or_auto, opt, refuse_inert
from .sampling import ADAPTIVE, POWER_METHODS, BonConfig, EvalConfig, PowerConfig
from .training import GRPO_STEPS, KEEP, LOG_TARGETS, PREFERENCE_LR, RL_LR, SFT_LR, TrainConfig

__all__ = ["ADAPTIVE", "ADVANTAGES", "DEVICE", "GRPO_REWARDS", "GRPO_STEPS", "KEEP", "LOG_TARGETS", "LOSSES",
           "POWER_METHODS", "PREFERENCE_LR", "RL_LR", "SFT_LR", "AmortizedConfig", "BonConfig", "DpoConfig",
           "EvalConfig", "GrpoConfig", "PowerConfig", "RlhfConfig", "RunConfig", "SftConfig", "SharpenConfig",
           "TrainConfig", "XpoConfig", "bounded", "check_dtype_name", "check_ray", "flag", "number_or_auto", "opt",
           "refuse_inert"]
