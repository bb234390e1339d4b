"""Collapse guards: the training core stops a run whose validation responses collapse, and never keeps it."""

from __future__ import annotations

import pytest

from sharpen.config import TrainConfig
from sharpen.engine.models import tiny_model
from sharpen.guards import guard_reason, guard_stats, guards
from sharpen.train.loop import train
from sharpen.train.lora import attach_lora


def _row(text: str, tokens: list[int], finish: str = "eos", answer: str | None = "x", kind: str = "greedy",
         lp: float = -1.0, lpb: float = -1.0) -> dict:
    return {"text": text, "token_ids": tokens, "num_tokens": len(tokens), "finish_reason": finish,
            "answer": answer, "kind": kind, "logprob": lp, "logprob_base": lpb}


def test_guard_stats_by_hand():
    base = [_row("a b", [1, 2, 3, 4]), _row("c", [5, 6])]  # mean length 3, answer rate 1
    rows = [_row("", [7], answer=None), _row("loop", [1, 2, 1, 2, 1, 2], finish="length"),
            _row("s", [3, 4, 5], kind="sample", lp=-1.0, lpb=-4.0)]
    st = guard_stats(rows, base)
    assert st["empty_rate"] == pytest.approx(1 / 3) and st["truncated_rate"] == pytest.approx(1 / 3)
    assert st["length_ratio"] == pytest.approx((1 + 6 + 3) / 3 / 3)
    assert st["repetition"] == pytest.approx((0 + (1 - 2 / 4) + 0) / 3)  # 3-grams 121 212 121 212: 2 distinct
    assert st["answer_rate_drop"] == pytest.approx(1 / 3) and st["kl"] == pytest.approx(3.0)


def test_guard_reason_names_the_first_limit_crossed():
    cfg = TrainConfig()
    ok = {"empty_rate": 0.1, "truncated_rate": 0.1, "length_ratio": 1.2, "repetition": 0.1, "answer_rate_drop": 0.0}
    assert guard_reason(ok, cfg) is None
    assert "empty" in guard_reason({**ok, "empty_rate": 0.6}, cfg)
    assert "length" in guard_reason({**ok, "length_ratio": 0.1}, cfg)  # collapsed to near-empty answers
    assert guard_reason({**ok, "kl": 50.0}, cfg) is None  # the KL guard is off by default
    assert "KL" in guard_reason({**ok, "kl": 50.0}, TrainConfig(guard_kl=10.0))
    base_truncates = {**ok, "truncated_rate": 1.0, "truncated_rate_base": 0.95}
    assert guard_reason(base_truncates, cfg) is None  # no worse than the base: not a collapse
    assert guards("step 4: x", cfg)["stopped"] and guards(None, cfg)["limits"]["guard_empty"] == 0.5


def test_a_collapsing_run_stops_and_keeps_the_last_healthy_adapter(tmp_path):
    """A synthetic collapse: the judge reports healthy responses up to step 2, then all empty ones."""
    model = attach_lora(tiny_model(), TrainConfig(lora_rank=2))
    data = [{"prompt_token_ids": [1, 40], "token_ids": [41, 42, 2]}] * 8
    calls = {"n": 0}

    def loss_fn(m, batch):
        from sharpen.stages.sft import sft_batch_loss

        return sft_batch_loss(m, batch)

    def eval_fn(m):
        calls["n"] += 1
        step = 2 * (calls["n"] - 1)
        healthy = {"empty_rate": 0.0, "truncated_rate": 0.0, "length_ratio": 1.0, "repetition": 0.0,
                   "answer_rate_drop": 0.0}
        return {"accuracy": 0.1 * step, "guard": healthy if step <= 2 else {**healthy, "empty_rate": 0.9}}

    cfg = TrainConfig(lr=1e-2, epochs=4, batch_size=2, eval_every=2, lora_rank=2, warmup=0)
    res = train(model, data, loss_fn, cfg, tmp_path, eval_fn=eval_fn, progress=False)
    assert res.stopped and res.stopped.startswith("step 4") and "empty" in res.stopped
    assert res.steps == 4 and res.best_step == 2  # step 4 crossed a limit: trained no further, never kept
    # A re-run resumes the stopped run without training on.
    again = train(model, data, loss_fn, cfg, tmp_path, eval_fn=eval_fn, progress=False)
    assert again.steps == 4 and again.stopped == res.stopped and again.best_step == 2
