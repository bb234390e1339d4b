"""GRPO: advantages, the clipped objective and its KL term by hand, group rewards, --iterations (the clip acts only
when K > 1; K = 1 is the plain policy gradient; resumable), and tiny-model runs (the reward rises; a killed run
resumes to the same files)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from sharpen.config import GrpoConfig, TrainConfig
from sharpen.errors import SharpenError
from sharpen.train.losses import group_advantages, grpo_loss, k3_kl

DATA = os.environ.get("SHARPEN_DATA_DIR")


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    torch.testing.assert_close(group_advantages(r, "grpo")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4))
    torch.testing.assert_close(group_advantages(r, "mean")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # RLOO: r_i minus the mean of the other three
    torch.testing.assert_close(group_advantages(r, "rloo")[0], torch.tensor([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3]))
    for kind in ("grpo", "mean", "rloo"):  # a unanimous group carries no signal
        assert group_advantages(r, kind)[1].abs().max() == 0
    with pytest.raises(SharpenError):
        group_advantages(torch.zeros(2, 1))
    with pytest.raises(SharpenError):
        group_advantages(r, "ppo")


def test_k3_kl_by_hand():
    pol, base = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.0, -2.0])
    d = base - pol
    torch.testing.assert_close(k3_kl(pol, base), torch.exp(d) - d - 1)
    assert k3_kl(pol, base)[0] == 0 and (k3_kl(pol, base) >= 0).all()
    # unbiased: E_{y ~ pi}[k3] = KL(pi || pi_base) on a two-outcome example
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])
    est = (p * k3_kl(p.log(), q.log())).sum()
    torch.testing.assert_close(est, (p * (p / q).log()).sum())


def test_grpo_loss_clips_the_ratio_and_adds_the_kl_term():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    pol = torch.log(torch.tensor([0.8, 0.8, 0.3, 0.3]))  # ratios 1.6, 1.6, 0.6, 0.6
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # min(rho A, clip(rho) A): 1.2 (clipped), -1.6, 0.6, -0.8 (clipped)
    expected = -torch.tensor([1.2, -1.6, 0.6, -0.8]).mean()
    torch.testing.assert_close(grpo_loss(pol, old, pol.clone(), adv, clip_eps=0.2), expected)
    base = torch.log(torch.tensor([0.4, 0.4, 0.4, 0.4]))
    with_kl = grpo_loss(pol, old, base, adv, clip_eps=0.2, kl_coef=0.5)
    torch.testing.assert_close(with_kl, expected + 0.5 * k3_kl(pol, base).mean())


def test_grpo_loss_at_ratio_one_is_the_policy_gradient():
    """One update per batch (pi_old = pi): the gradient is -mean_t(A grad log pi), the REINFORCE estimator."""
    logits = torch.tensor([0.3, -0.2, 0.1, 0.5], requires_grad=True)
    logp = torch.nn.functional.logsigmoid(logits)
    adv = torch.tensor([1.0, -2.0, 0.5, 0.0])
    (g,) = torch.autograd.grad(grpo_loss(logp, logp.detach(), logp.detach(), adv), logits)
    (ref,) = torch.autograd.grad(-(adv * torch.nn.functional.logsigmoid(logits)).mean(), logits)
    torch.testing.assert_close(g, ref)


def _rows():
    return [{"index": i, "logprob": lp, "num_tokens": 3, "answer": a, "correct": a == "x", "finish_reason": f}
            for i, (lp, a, f) in enumerate([(-4.0, "x", "eos"), (-6.0, "x", "eos"), (-2.0, "y", "eos"),
                                             (-1.0, None, "eos"), (-3.0, "x", "length")])]


def test_group_rewards_by_hand_with_the_invalid_penalty():
    from sharpen.stages.grpo import coin, group_rewards

    rng = np.random.default_rng(0)
    rows = _rows()
    # vote: shares among the group (x: 3 of 5, y: 1 of 5, none: half a vote); rows 3 (no answer) and 4
    # (truncated) are invalid: the lowest valid reward (log 1/5) minus the penalty
    low = math.log(1 / 5)
    np.testing.assert_allclose(group_rewards("vote", rows, rng, True, 2.0),
                               [math.log(3 / 5), math.log(3 / 5), low, low - 2, low - 2])
    np.testing.assert_allclose(group_rewards("vote", rows, rng, False, 2.0),
                               [math.log(3 / 5)] * 2 + [low, math.log(0.5 / 5), math.log(3 / 5)])
    np.testing.assert_allclose(group_rewards("logprob", rows, rng, True, 1.0), [-4.0, -6.0, -2.0, -7.0, -7.0])
    np.testing.assert_allclose(group_rewards("gold", rows, rng, False, 1.0), [1, 1, 0, 0, 1])
    a = group_rewards("random", rows, coin(0, 3, "p1"), False, 1.0)
    assert set(a) <= {0.0, 1.0} and (a == group_rewards("random", rows, coin(0, 3, "p1"), False, 1.0)).all()
    # none valid: every response gets 0 - penalty, so the group carries no signal
    bad = [{**r, "finish_reason": "length"} for r in rows]
    np.testing.assert_allclose(group_rewards("logprob", bad, rng, True, 1.0), [-1.0] * 5)


def test_config_validation():
    GrpoConfig().validate()
    for kw, msg in [({"reward": "oracle"}, "unknown --reward"), ({"group": 1}, "--group"),
                    ({"advantage": "ppo"}, "unknown --advantage"), ({"kl_coef": -1.0}, "--kl-coef"),
                    ({"iterations": 0}, "--iterations")]:
        with pytest.raises(SharpenError, match=msg):
            GrpoConfig(**kw).validate()


def _sharp_tiny(*args, **kwargs):
    """A tiny random model whose next-token distributions are far from uniform (LoRA cannot reach the LM head, and
    a random head at init scale gives nearly uniform distributions that no adapter moves)."""
    from sharpen.engine.models import tiny_model

    m = tiny_model()
    with torch.no_grad():
        m.module.lm_head.weight.mul_(40.0)
    return m


def _train_rows(path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def _grpo_updates(out, clip_eps: float, iterations: int, crash_at: int | None = None):
    """A few GRPO steps through the training core on 2 arith prompts; returns the adapter, the train rows and the
    rollouts. `crash_at`: interrupt the loss's n-th call, then resume the run."""
    from sharpen.engine.models import prompt_token_ids
    from sharpen.stages.grpo import GroupLoss
    from sharpen.tasks import load_task
    from sharpen.train.loop import train
    from sharpen.train.lora import attach_lora

    task = load_task("arith", split="train", limit=2)
    cfg = GrpoConfig(task="arith", group=4, max_new_tokens=4, reward="logprob", kl_coef=0.0, clip_eps=clip_eps,
                     iterations=iterations, valid_only=False)
    tcfg = TrainConfig(lr=1e-2, warmup=0, max_steps=4, batch_size=2, eval_every=2, clip=1.0, lora_rank=4)

    def run(fail: int | None):
        model = attach_lora(_sharp_tiny(), tcfg)
        prompts = [{"id": it.id, "prompt_token_ids": prompt_token_ids(model, it.prompt)} for it in task.items]
        loss, calls = GroupLoss(cfg, task, tcfg.seed, out), {"n": 0}

        def loss_fn(m, batch):
            calls["n"] += 1
            if calls["n"] == fail:
                raise KeyboardInterrupt
            return loss(m, batch)

        train(model, prompts, loss_fn, tcfg, out, progress=False, step_fn=loss.at_step, updates=iterations)
        return model

    if crash_at is not None:
        with pytest.raises(KeyboardInterrupt):
            run(crash_at)
    model = run(None)
    params = {n: p.detach().clone() for n, p in model.module.named_parameters() if "lora_" in n}
    rollouts = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    return params, _train_rows(out / "metrics.jsonl"), rollouts


def test_iterations_make_clip_eps_matter(tmp_path, one_thread):
    """--iterations K > 1: K updates per sampled batch with the ratio to the sampling policy clipped, so a tight
    --clip-eps changes the run; each batch is sampled once."""
    tight, rows_t, roll_t = _grpo_updates(tmp_path / "tight", clip_eps=0.01, iterations=3)
    loose, rows_l, roll_l = _grpo_updates(tmp_path / "loose", clip_eps=100.0, iterations=3)
    assert len(roll_t) == 4 * 2 * 4  # steps x prompts x group: sampled once per step, not per update
    assert [r["text"] for r in roll_t if r["step"] == 1] == [r["text"] for r in roll_l if r["step"] == 1]
    assert max(float((tight[k] - loose[k]).abs().max()) for k in tight) > 1e-3
    # The share of clipped tokens (over the step's updates; the first is never clipped)
    assert all(0 < r["clipped"] < 1 for r in rows_t) and all(r["clipped"] == 0 for r in rows_l)


def test_one_iteration_is_the_plain_policy_gradient_whatever_clip_eps(tmp_path, one_thread):
    """K = 1 (the default, and the only behaviour before --iterations): pi_old is the policy itself, so --clip-eps
    cannot change anything; the run directory's identity has no `iterations` key, so older runs still resume."""
    tight, rows_t, roll_t = _grpo_updates(tmp_path / "tight", clip_eps=0.01, iterations=1)
    loose, rows_l, roll_l = _grpo_updates(tmp_path / "loose", clip_eps=100.0, iterations=1)
    for k in tight:
        assert torch.equal(tight[k], loose[k]), k
    assert roll_t == roll_l and all(r["clipped"] == 0 for r in rows_t)
    more, _, _ = _grpo_updates(tmp_path / "more", clip_eps=100.0, iterations=3)
    assert any(not torch.equal(more[k], loose[k]) for k in more)  # K > 1 takes more updates
    assert "iterations" not in GrpoConfig().identity() and GrpoConfig(iterations=2).identity()["iterations"] == 2
    assert GrpoConfig(iterations=2).options()["iterations"] == 2


def test_a_killed_run_with_iterations_resumes_exactly(tmp_path, one_thread):
    whole, rows_w, roll_w = _grpo_updates(tmp_path / "whole", clip_eps=0.05, iterations=2)
    # call 7: step 4's first update (2 calls a step), after the step-2 checkpoint and step 3's rollouts
    cut, rows_c, roll_c = _grpo_updates(tmp_path / "cut", clip_eps=0.05, iterations=2, crash_at=7)
    for k in whole:
        assert torch.equal(whole[k], cut[k]), k
    assert roll_c == roll_w
    assert [{k: v for k, v in r.items() if k != "grad_norm"} for r in rows_c] == \
        [{k: v for k, v in r.items() if k != "grad_norm"} for r in rows_w]


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="needs SHARPEN_DATA_DIR")
def test_tiny_grpo_run_raises_its_reward(tmp_path, monkeypatch):
    import sharpen.stages.grpo as grpo

    monkeypatch.setattr(grpo, "load_model", _sharp_tiny)
    cfg = GrpoConfig(task="game24", model="tiny-random", train_limit=2, eval_limit=2, max_new_tokens=6,
                     eval_samples=2, group=8, kl_coef=0.0, reward="logprob", valid_only=False, data_dir=DATA,
                     val_limit=2, out=str(tmp_path / "g"))
    s = grpo.run_grpo(cfg, TrainConfig(batch_size=2, max_steps=20, eval_every=10, lr=1e-3, warmup=0, clip=1.0),
                      progress=False)
    rewards = [r["reward"] for r in _train_rows(tmp_path / "g" / "metrics.jsonl")]
    assert len(rewards) == 20
    # log pi_base of the policy's samples rises: the policy sharpens toward what the base finds likely
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 1.0, rewards
    assert s["rollouts"]["last"]["kl"] > 0.01  # it moved away from pi_base
    rollouts = [json.loads(x) for x in (tmp_path / "g" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 20 * 2 * 8 and {r["step"] for r in rollouts} == set(range(1, 21))
    for step in (1, 20):  # the logged reward is the mean of that step's rollouts
        got = np.mean([r["reward"] for r in rollouts if r["step"] == step])
        assert got == pytest.approx(rewards[step - 1])


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="needs SHARPEN_DATA_DIR")
def test_a_killed_grpo_run_resumes_to_the_same_files(tmp_path, monkeypatch):
    import sharpen.stages.grpo as grpo
    from sharpen.cli import main

    monkeypatch.setattr(grpo, "load_model", _sharp_tiny)

    def argv(out):
        return ["grpo", "--task", "game24", "--model", "tiny-random", "--train-limit", "4", "--eval-limit", "2",
                "--max-new-tokens", "6", "--eval-samples", "1", "--group", "4", "--batch-size", "2",
                "--max-steps", "6", "--eval-every", "2", "--lr", "1e-3", "--reward", "vote", "--no-valid-only",
                "--data-dir", DATA, "--val-limit", "2", "--out", str(out)]

    assert main(argv(tmp_path / "whole")) == 0
    real, calls = grpo.grpo_loss, {"n": 0}

    def crashing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # step 4, after the checkpoint of step 2 and step 3's rollouts
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(grpo, "grpo_loss", crashing)
    assert main(argv(tmp_path / "cut")) == 130
    monkeypatch.setattr(grpo, "grpo_loss", real)
    assert main(argv(tmp_path / "cut")) == 0
    for name in ("rollouts.jsonl", "eval_sharpened.jsonl"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    strip = [{k: v for k, v in r.items() if k not in ("grad_norm",)} for r in
             _train_rows(tmp_path / "cut" / "metrics.jsonl")]
    whole = [{k: v for k, v in r.items() if k not in ("grad_norm",)} for r in
             _train_rows(tmp_path / "whole" / "metrics.jsonl")]
    assert strip == whole
    s = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert s["algorithm"] == "grpo" and s["reward"] == "vote" and s["label_free"]
    assert s["training"]["steps"] == 6 and {"base", "sharpened", "table1", "guards", "rollouts"} <= set(s)
    report = (tmp_path / "cut" / "report.md").read_text()
    assert "GRPO" in report and "vote" in report
    (tmp_path / "cut" / "report.md").unlink()  # `sharpen report` rebuilds it from the files
    assert main(["report", str(tmp_path / "cut")]) == 0
    assert (tmp_path / "cut" / "report.md").read_text() == report
    assert main(["compare", str(tmp_path / "cut"), "--out", str(tmp_path / "cmp")]) == 0
    assert "grpo(vote)" in (tmp_path / "cmp" / "compare.md").read_text()
