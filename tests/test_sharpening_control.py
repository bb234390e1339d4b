"""Positive controls: each amortized stage (sft, dpo, xpo, grpo), run end to end through its entry point on a tiny
model with the `logprob` self-reward, must sharpen it. On the training prompts, the trained policy must give the
base model's likeliest sampled response (per prompt, the highest log pi_base among 32 base samples) a clearly
higher log-probability than the base does, and its own samples must have a clearly lower mean per-token entropy.
A no-op update or a loss with its sign flipped fails the same criterion (the mutation tests), so a stage whose
update is broken cannot pass for a model without signal.

The tiny model's LM head is scaled up: LoRA does not reach the head, and a random head at its initial scale gives
nearly uniform next-token distributions (no clear mode to sharpen towards, and near-ties between the likeliest
responses); scaled by 80, the base has a clear likeliest response and a mean token entropy of about 0.7 nats.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import sharpen.engine.models as models
import sharpen.stages.grpo as grpo_stage
import sharpen.stages.rlhf as rlhf_stage
import sharpen.stages.sft as sft_stage
from sharpen.config import DpoConfig, GrpoConfig, SftConfig, TrainConfig, XpoConfig
from sharpen.engine.generate import sample
from sharpen.engine.scoring import score
from sharpen.tasks import load_task
from sharpen.train.lora import load_adapter, save_adapter

HEAD_SCALE = 80.0
TRAIN_PROMPTS = 8
TOKENS = 4  # response length: short responses keep the runs to seconds
PROBE_SAMPLES = 32
PROBE_SEED = 12345  # not the stages' seed: the probe's base pool is not their training pool
# The criterion. The runs below gain 1.1 to 1.5 nats and lose 0.4 to 0.7 nats of entropy per token (over training
# seeds 0-19, 79 of the 80 runs pass, the one exception a dpo run); an untouched model gains 0 and loses 0, a
# sign-flipped update loses tens of nats.
MIN_LOGPROB_GAIN = 0.3
MIN_ENTROPY_DROP = 0.2

_tiny = models.tiny_model


def _sharp_tiny(*args, **kwargs) -> models.Model:
    m = _tiny(*args, **kwargs)
    with torch.no_grad():
        m.module.lm_head.weight.mul_(HEAD_SCALE)
    return m


@pytest.fixture(autouse=True)
def _setup(monkeypatch, one_thread):
    monkeypatch.setattr(models, "tiny_model", _sharp_tiny)  # what load_model("tiny-random") returns


def _common(out: Path) -> dict:
    # No guard may stop the run: a tiny random model's responses have no answers and sharpen to repetitions.
    return dict(task="arith", model="tiny-random", out=str(out), train_limit=TRAIN_PROMPTS, eval_limit=2,
                val_limit=2, max_new_tokens=TOKENS, eval_samples=1, valid_only=False)


def _tcfg(lr: float, steps: int) -> TrainConfig:
    return TrainConfig(lr=lr, warmup=0, max_steps=steps, batch_size=4, eval_every=steps, clip=1.0, lora_rank=8,
                       guard_empty=1.0, guard_truncated=1.0, guard_length=1e9, guard_repetition=1.0,
                       guard_answer_drop=1.0)


# Each stage with the reward `logprob` (the paper's r_self = log pi_base) and settings under which it sharpens.
RUNS = {
    "sft": lambda out: sft_stage.run_sft(SftConfig(n=16, **_common(out)), _tcfg(3e-3, 10), progress=False),
    "dpo": lambda out: rlhf_stage.run_dpo(DpoConfig(n=16, beta=0.25, reward="logprob", **_common(out)),
                                          _tcfg(1e-3, 20), progress=False),
    "xpo": lambda out: rlhf_stage.run_xpo(XpoConfig(rounds=2, pairs=4, beta=0.5, reward="logprob", **_common(out)),
                                          _tcfg(1e-3, 10), progress=False),
    "grpo": lambda out: grpo_stage.run_grpo(GrpoConfig(group=16, reward="logprob", **_common(out)),
                                            _tcfg(1e-3, 10), progress=False),
}
MODULES = {"sft": sft_stage, "dpo": rlhf_stage, "xpo": rlhf_stage, "grpo": grpo_stage}


def _mutated(loss_fn, mutation: str):
    @functools.wraps(loss_fn)
    def fn(model, batch):
        loss, metrics = loss_fn(model, batch)
        return (loss * 0.0 if mutation == "no-op" else -loss), metrics
    return fn


def _trained_policy(monkeypatch, tmp_path: Path, stage: str, mutation: str | None = None) -> models.Model:
    """Run `stage` and return the policy as its training left it (xpo: after the last round), whichever adapter
    the stage then keeps by validation. `mutation` breaks the update: 'no-op' (zero loss) or 'sign' (negated)."""
    module, trained = MODULES[stage], tmp_path / "trained"
    real = module.train

    def train(model, data, loss_fn, *args, **kwargs):
        result = real(model, data, _mutated(loss_fn, mutation) if mutation else loss_fn, *args, **kwargs)
        save_adapter(model.module, trained)
        return result

    monkeypatch.setattr(module, "train", train)
    RUNS[stage](tmp_path / stage)
    return load_adapter(_sharp_tiny(), trained)


def _entropy(pool) -> float:
    return float(np.mean([h for ss in pool for s in ss for h in s.token_stats["entropy"]]))


def sharpening(base: models.Model, policy: models.Model) -> dict[str, float]:
    """On the training prompts: mean log-prob of each prompt's likeliest base sample under base and policy, and the
    mean per-token entropy of each model's next-token distributions along its own samples."""
    task = load_task("arith", split="train", limit=TRAIN_PROMPTS)
    prompts = [models.prompt_token_ids(base, it.prompt) for it in task.items]
    kw = dict(n=PROBE_SAMPLES, max_new_tokens=TOKENS, seed=PROBE_SEED, stop=task.stops(False))
    pool = sample(base, prompts, **kw)
    likeliest = [max(ss, key=lambda s: s.logprob).token_ids for ss in pool]
    own = sample(policy, prompts, **kw)
    return {"logprob_base": float(np.mean([sum(t) for t in score(base, prompts, likeliest)])),
            "logprob_policy": float(np.mean([sum(t) for t in score(policy, prompts, likeliest)])),
            "entropy_base": _entropy(pool), "entropy_policy": _entropy(own)}


def sharpened(m: dict[str, float]) -> bool:
    return (m["logprob_policy"] >= m["logprob_base"] + MIN_LOGPROB_GAIN
            and m["entropy_policy"] <= m["entropy_base"] - MIN_ENTROPY_DROP)


@pytest.mark.parametrize("stage", list(RUNS))
def test_stage_sharpens_a_tiny_model(monkeypatch, tmp_path, stage):
    m = sharpening(_sharp_tiny(), _trained_policy(monkeypatch, tmp_path, stage))
    assert sharpened(m), m


@pytest.mark.parametrize("stage,mutation", [("sft", "no-op"), ("sft", "sign"), ("grpo", "no-op"), ("grpo", "sign")])
def test_a_broken_update_does_not_pass_for_sharpening(monkeypatch, tmp_path, stage, mutation):
    m = sharpening(_sharp_tiny(), _trained_policy(monkeypatch, tmp_path, stage, mutation))
    assert not sharpened(m), m
    if mutation == "no-op":  # the policy is the base model itself
        assert m["logprob_policy"] == pytest.approx(m["logprob_base"], abs=1e-4)
