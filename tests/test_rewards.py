"""Label-free rewards: one set of pure functions for the selectors and for reward-based DPO / XPO."""

from __future__ import annotations

import math

import pytest
import torch

from sharpen.config import DpoConfig, XpoConfig
from sharpen.errors import SharpenError
from sharpen.rows import valid_target as valid
from sharpen.selection import REWARDS, Pool, vote_share
from sharpen.stages.rlhf import add_rewards, usable
from sharpen.train.losses import reward_dpo_loss, xpo_loss


def _rows():
    # answers x, x, y, None; log-probs and lengths chosen so every reward ranks them differently
    return [{"index": i, "logprob": lp, "num_tokens": nt, "answer": a, "correct": a == "x", "finish_reason": f,
             "self_certainty": sc}
            for i, (lp, nt, a, f, sc) in enumerate([(-4.0, 2, "x", "eos", 3.0), (-6.0, 6, "x", "eos", 1.0),
                                                     (-2.0, 1, "y", "eos", 2.0), (-1.0, 1, None, "length", 5.0)])]


def test_rewards_by_hand():
    p = Pool.from_rows(_rows())
    assert REWARDS["logprob"](p).tolist() == [-4.0, -6.0, -2.0, -1.0]
    assert REWARDS["logprob_mean"](p).tolist() == [-2.0, -1.0, -2.0, -1.0]
    assert REWARDS["vote"](p).tolist() == pytest.approx([math.log(2 / 4)] * 2 + [math.log(1 / 4), math.log(0.5 / 4)])
    assert REWARDS["self_certainty"](p).tolist() == [3.0, 1.0, 2.0, 5.0]
    assert vote_share(["a", "b"], "c") == math.log(0.25) and vote_share([], None) == math.log(0.5)


def test_the_selectors_argmax_the_rewards_of_the_same_name():
    from sharpen.selection import select

    rows = _rows()
    for name in ("logprob", "logprob_mean", "self_certainty"):
        scores = REWARDS[name](Pool.from_rows(rows))
        best = max(range(len(rows)), key=lambda i: (scores[i], -i))  # ties: the lowest index
        assert select(name, rows) == best, name


def test_sft_reward_picks_a_maximizer_of_that_reward_on_random_pools():
    """`sft --reward R` trains on the pick of REWARD_SELECTORS[R]: on random pools that pick always has the
    largest reward R among the samples with a valid log-prob (vote: the most shared answer)."""
    import numpy as np

    from sharpen.config import SftConfig
    from sharpen.selection import REWARD_SELECTORS, select

    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 9))
        rows = [{"index": i, "logprob": float(rng.normal(-20, 5)), "num_tokens": int(rng.integers(1, 30)),
                 "answer": rng.choice(["a", "b", "c", None]), "correct": False, "finish_reason": "eos",
                 "self_certainty": float(rng.normal(2, 1))} for i in range(m)]
        for reward, selector in REWARD_SELECTORS.items():
            scores = REWARDS[reward](Pool.from_rows(rows))
            pick = select(selector, rows)
            if reward == "vote" and all(r["answer"] is None for r in rows):
                continue  # nobody answered: majority falls back to logprob
            assert scores[pick] == max(scores), (reward, rows)
    assert SftConfig(reward="vote").target_selector == "majority"
    assert SftConfig().target_selector == "logprob"
    with pytest.raises(SharpenError, match="give one of the two"):
        SftConfig(reward="vote", selector="random").validate()
    with pytest.raises(SharpenError, match="unknown --reward"):
        SftConfig(reward="gold").validate()


def test_losses_take_any_reward_and_default_to_the_self_reward():
    pol_y, pol_y2 = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -1.0])
    base_y, base_y2 = torch.tensor([-2.0, -6.0]), torch.tensor([-3.0, -2.0])
    assert torch.equal(reward_dpo_loss(pol_y, pol_y2, base_y, base_y2, 0.5),
                       reward_dpo_loss(pol_y, pol_y2, base_y, base_y2, 0.5, base_y, base_y2))
    r_y, r_y2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    implicit = 0.5 * (pol_y - base_y) - 0.5 * (pol_y2 - base_y2)
    assert reward_dpo_loss(pol_y, pol_y2, base_y, base_y2, 0.5, r_y, r_y2) == pytest.approx(
        float(((implicit - (r_y - r_y2)) ** 2).mean()))
    assert xpo_loss(pol_y, pol_y2, base_y, base_y2, 0.5, 0.1, r_y, r_y2) == pytest.approx(
        float(((implicit - (r_y - r_y2)) ** 2).mean() + 0.1 * pol_y2.mean()))


def _pair(y: dict, y2: dict) -> dict:
    from sharpen.stages.rlhf import make_pair

    p = make_pair({"id": "p", "prompt_token_ids": [1]}, {**y, "token_ids": [5] * y["num_tokens"], "text": "",
                                                         "correct": False},
                  {**y2, "token_ids": [6] * y2["num_tokens"], "text": "", "correct": False}, 1)
    return {**p, "base_y": y["logprob"], "base_y2": y2["logprob"]}


@pytest.mark.parametrize("reward", ["logprob", "logprob_mean", "vote", "self_certainty"])
def test_pair_rewards_and_the_penalty_for_unfinished_responses(reward):
    rows = _rows()
    pools = {"p": rows}
    cfg = XpoConfig(reward=reward, invalid_penalty=10.0)
    pair = add_rewards([_pair(rows[0], rows[3])], pools, cfg)[0]  # y valid; y2 cut at the token limit, no answer
    want = {"logprob": (-4.0, -1.0), "logprob_mean": (-2.0, -1.0), "vote": (math.log(0.5), math.log(0.125)),
            "self_certainty": (3.0, 5.0)}[reward]
    assert pair["reward_y"] == pytest.approx(want[0]) and pair["reward_y2"] == pytest.approx(want[1] - 10.0)
    assert valid(rows[0]) and not valid(rows[3]) and usable(pair)
    off = add_rewards([_pair(rows[0], rows[3])], pools, XpoConfig(reward=reward, valid_only=False))[0]
    assert off["reward_y2"] == pytest.approx(want[1])  # --no-valid-only: no penalty


def test_a_missing_reward_makes_the_pair_unusable_and_bad_options_are_refused():
    rows = [dict(r, self_certainty=None) for r in _rows()]
    pair = add_rewards([_pair(rows[0], rows[1])], {"p": rows}, XpoConfig(reward="self_certainty"))[0]
    assert pair["reward_y"] is None and not usable(pair)
    with pytest.raises(SharpenError, match="reward"):
        DpoConfig(reward="gold").validate()


def test_auto_beta_is_the_median_reward_gap_of_base_pairs():
    from sharpen.stages.kit import BasePool
    from sharpen.stages.rlhf import auto_beta

    rows = [{"index": i, "logprob": lp, "num_tokens": 2, "answer": "x", "correct": True, "finish_reason": "eos"}
            for i, lp in enumerate([-1.0, -4.0, -2.0, -2.5, -10.0, -3.0])]  # gaps 3, 0.5, 7
    pool = BasePool(dir=None, options={}, prompts=[{"id": "p"}], pools={"p": rows}, sampled=False)
    assert auto_beta(pool, DpoConfig(beta="auto")) == 3.0
    assert auto_beta(pool, DpoConfig(beta="auto", reward="logprob_mean")) == 1.5
    # vote: pairs (x, x) tie and are left out; (x, y) and (x, z) differ by log(6/8) - log(1/8) = log 6
    answers = ["x", "x", "x", "y", "x", "z", "x", "x"]
    rows = [{"index": i, "logprob": -1.0, "num_tokens": 2, "answer": a, "correct": a == "x", "finish_reason": "eos"}
            for i, a in enumerate(answers)]
    pool = BasePool(dir=None, options={}, prompts=[{"id": "p"}], pools={"p": rows}, sampled=False)
    assert auto_beta(pool, DpoConfig(beta="auto", reward="vote")) == pytest.approx(math.log(6 / 1))
    tied = BasePool(dir=None, options={}, prompts=[{"id": "p"}], pools={"p": rows[:2]}, sampled=False)
    with pytest.raises(SharpenError, match="rewards differ"):
        auto_beta(tied, DpoConfig(beta="auto", reward="vote"))
    assert DpoConfig(beta="auto").validate() is None
    with pytest.raises(SharpenError, match="beta"):
        DpoConfig(beta="big").validate()


def test_sft_weight_adds_the_preferred_responses_nll():
    from sharpen.config import TrainConfig
    from sharpen.engine.models import tiny_model
    from sharpen.stages.rlhf import pair_loss
    from sharpen.train.lora import attach_lora

    model = attach_lora(tiny_model(), TrainConfig(lora_rank=2))
    pair = {"prompt_token_ids": [1, 40], "y": [41, 42, 43], "y2": [44], "base_y": -3.0, "base_y2": -9.0}
    plain, m = pair_loss(model, [pair], kind="square", beta=1.0)
    with_sft, _ = pair_loss(model, [pair], kind="square", beta=1.0, sft_weight=2.0)
    # y has the higher reward (log pi_base): its per-token NLL under the policy enters with weight 2
    pol_y = m["logratio_y"] + pair["base_y"]
    assert float((with_sft - plain).detach()) == pytest.approx(2.0 * (-pol_y / 3), rel=1e-4)


def test_held_out_j_beta_uses_the_runs_reward():
    """J_beta = mean r(y) - beta * KL under the reward the run trains on: logprob reads log pi_base; vote the
    answer's share among the base model's samples of the same prompt (the voters), by hand."""
    from sharpen.stages.rlhf import held_out_metrics

    def row(pid, ans, lp, lpb, kind="sample"):
        return {"prompt_id": pid, "index": 0, "answer": ans, "correct": ans == "a", "logprob": lp, "logprob_base": lpb,
                "num_tokens": 2, "finish_reason": "eos", "kind": kind, "text": ""}
    pol = [row("p", "a", -1.0, -2.0), row("p", "b", -3.0, -3.5), row("q", "a", -2.0, -2.0)]
    base = [row("p", "a", 0, 0), row("p", "a", 0, 0), row("p", "a", 0, 0), row("p", "b", 0, 0),
            row("q", "b", 0, 0), row("q", "b", 0, 0), row("p", "b", 0, 0, kind="greedy")]  # greedy rows do not vote
    kl = ((-1.0 + 2.0) + (-3.0 + 3.5) + 0.0) / 3
    lp = held_out_metrics(pol, beta=0.5, reward="logprob")
    assert lp["j_beta"] == pytest.approx((-2.0 - 3.5 - 2.0) / 3 - 0.5 * kl) and lp["kl"] == pytest.approx(kl)
    vote = held_out_metrics(pol, beta=0.5, reward="vote", voters=base)
    shares = [math.log(3 / 4), math.log(1 / 4), math.log(0.5 / 2)]  # "a" unseen among q's voters: half a vote
    assert vote["j_beta"] == pytest.approx(sum(shares) / 3 - 0.5 * kl)
    mean = held_out_metrics(pol, beta=0.5, reward="logprob_mean")
    assert mean["j_beta"] == pytest.approx((-1.0 - 1.75 - 1.0) / 3 - 0.5 * kl)


def test_the_random_control_prefers_one_side_of_each_pair_by_a_replayable_fair_coin():
    """`--reward random` (dpo / xpo): every pair gets rewards [1, 0] or [0, 1], the same on a re-run (keyed by the
    seed and the pair, not by the order pairs come in), independent of log pi_base; its J_beta reads the coin's
    expectation and --beta auto gives 1, the gap of every pair."""
    import numpy as np

    from sharpen.stages.kit import BasePool
    from sharpen.stages.rlhf import auto_beta, coin_rewards, sample_rewards

    rng = np.random.default_rng(0)
    pairs = []
    for i in range(400):
        y = {"index": 0, "logprob": float(rng.normal(-5, 2)), "num_tokens": int(rng.integers(1, 9)), "answer": "x",
             "finish_reason": "eos"}
        y2 = {**y, "logprob": float(rng.normal(-5, 2)), "num_tokens": int(rng.integers(1, 9))}
        pairs.append({**_pair(y, y2), "prompt_id": f"p{i % 40}"})
    pools = {f"p{i}": _rows() for i in range(40)}
    cfg = DpoConfig(reward="random")
    scored = add_rewards(pairs, pools, cfg, seed=3)
    assert all(sorted((p["reward_y"], p["reward_y2"])) == [0.0, 1.0] and usable(p) for p in scored)
    heads = np.array([p["reward_y"] for p in scored])
    assert 0.4 < heads.mean() < 0.6  # a fair coin (400 pairs: 0.5 +- 0.05 is 2 standard deviations)
    agrees = np.array([(p["base_y"] > p["base_y2"]) == (p["reward_y"] > p["reward_y2"]) for p in scored])
    assert 0.4 < agrees.mean() < 0.6  # the coin does not follow the self-reward
    again = add_rewards(pairs[::-1], pools, cfg, seed=3)[::-1]  # another order: the same coins
    assert [p["reward_y"] for p in again] == heads.tolist()
    other = np.array([p["reward_y"] for p in add_rewards(pairs, pools, cfg, seed=4)])
    assert 0.3 < (other != heads).mean() < 0.7  # another seed, other coins
    assert coin_rewards(pairs[0], 3) == [scored[0]["reward_y"], scored[0]["reward_y2"]]
    # J_beta under the coin: E_pi[r] = 1/2 whatever pi is
    rows = [{"prompt_id": "p", "logprob": -1.0, "logprob_base": -3.0, "answer": "x"}] * 3
    assert sample_rewards(rows, "random").tolist() == [0.5] * 3
    pool = BasePool(dir=None, options={}, prompts=[{"id": "p"}], pools={"p": _rows()}, sampled=False)
    assert auto_beta(pool, DpoConfig(beta="auto", reward="random")) == 1.0
    assert XpoConfig(reward="random").validate() is None
    with pytest.raises(SharpenError, match="unknown --reward 'gold'.*random"):
        DpoConfig(reward="gold").validate()
