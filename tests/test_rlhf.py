"""RLHF-sharpening (`sharpen dpo` / `sharpen xpo`): pair losses on a LoRA model, the frozen reference, held-out
J_beta, pair construction, options, and both commands end to end on a tiny random model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sharpen.config import DpoConfig, TrainConfig, XpoConfig
from sharpen.engine.models import tiny_model
from sharpen.engine.scoring import collate, sequence_logprobs
from sharpen.errors import SharpenError
from sharpen.generation import base_logprobs
from sharpen.stages.rlhf import held_out_metrics, j_beta_key, make_pair, pair_loss, round_seed, score_pairs, usable
from sharpen.train.loop import train
from sharpen.train.lora import attach_lora
from sharpen.train.losses import j_beta_estimate, logistic_dpo_loss


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _row(tokens: list[int], correct: bool = False) -> dict:
    return {"token_ids": tokens, "text": "t", "correct": correct, "finish_reason": "eos", "logprob": -1.0}


def _pairs(model, k: int = 6) -> list[dict]:
    """k pairs on short prompts, scored under pi_base."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(k):
        prompt = {"id": f"p{i}", "prompt_token_ids": [1, *torch.randint(3, 120, (4,), generator=g).tolist()]}
        y, y2 = (torch.randint(3, 120, (n,), generator=g).tolist() + [2] for n in (3 + i % 3, 5))
        out.append(make_pair(prompt, _row(y), _row(y2), 0))
    return score_pairs(model, out)


def _perturb(model, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("kind", ["square", "logistic", "xpo"])
def test_gradients_reach_only_the_adapter(kind):
    model = attach_lora(tiny_model(), TrainConfig(lora_rank=4))
    _perturb(model)  # with B = 0 the A matrices would get no gradient
    loss, _ = pair_loss(model, _pairs(model, 3), kind=kind, beta=0.1, alpha=0.01)
    loss.backward()
    named = dict(model.module.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all(p.grad is None for n, p in named.items() if n not in lora)  # base weights: frozen
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())


def test_stored_base_logprobs_are_the_policy_at_init_and_the_reference_after_training(tmp_path):
    model = attach_lora(tiny_model(), TrainConfig(lora_rank=4))
    pairs = _pairs(model)
    # At B = 0 the policy is pi_base: the implicit reward is 0, so the square loss is mean (r(y) - r(y'))^2.
    loss, m = pair_loss(model, pairs, kind="square", beta=0.1)
    by, by2 = (torch.tensor([p[k] for p in pairs]) for k in ("base_y", "base_y2"))
    assert abs(m["logratio_y"]) < 1e-4 and abs(m["logratio_y2"]) < 1e-4
    assert float(loss.detach()) == pytest.approx(float((by - by2).square().mean()), rel=1e-4)
    cfg = TrainConfig(lr=3e-2, warmup=0, epochs=5, batch_size=3, lora_rank=4, clip=1.0, eval_every=100)
    train(model, pairs, lambda mo, b: pair_loss(mo, b, kind="square", beta=0.1), cfg, tmp_path, progress=False)
    # The adapter moved the policy, but pi_base (adapter off) is untouched.
    _, m = pair_loss(model, pairs, kind="square", beta=0.1)
    assert abs(m["logratio_y"]) > 1e-2
    fresh = base_logprobs(model, [p["prompt_token_ids"] for p in pairs], [p["y"] for p in pairs])
    assert fresh == pytest.approx(by.tolist(), abs=1e-4)


@pytest.mark.parametrize("kind", ["square", "logistic"])
def test_dpo_loss_decreases_with_training(tmp_path, kind):
    model = attach_lora(tiny_model(), TrainConfig(lora_rank=8))
    pairs = _pairs(model)
    with torch.no_grad():
        before = float(pair_loss(model, pairs, kind=kind, beta=0.5)[0])
    cfg = TrainConfig(lr=2e-2, warmup=0, epochs=15, batch_size=6, lora_rank=8, clip=1.0, eval_every=100)
    train(model, pairs, lambda mo, b: pair_loss(mo, b, kind=kind, beta=0.5), cfg, tmp_path, progress=False)
    with torch.no_grad():
        after = float(pair_loss(model, pairs, kind=kind, beta=0.5)[0])
    assert after < 0.5 * before


def test_logistic_loss_takes_the_higher_self_reward_as_chosen():
    model = attach_lora(tiny_model(), TrainConfig(lora_rank=4))
    _perturb(model)
    pairs = _pairs(model, 4)
    pairs[0]["base_y"], pairs[0]["base_y2"] = -9.0, -3.0  # y' is chosen here
    pairs[1]["base_y"], pairs[1]["base_y2"] = -2.0, -7.0  # y is chosen here
    pairs = pairs[:2]
    loss, _ = pair_loss(model, pairs, kind="logistic", beta=0.7)
    ids, attn, resp = collate(model, [p["prompt_token_ids"] for p in pairs] * 2,
                              [p["y"] for p in pairs] + [p["y2"] for p in pairs])
    with torch.no_grad():
        lp = sequence_logprobs(model.module, ids, attn, resp)
    chosen, rejected = torch.stack([lp[2], lp[1]]), torch.stack([lp[0], lp[3]])
    want = logistic_dpo_loss(chosen, rejected, torch.tensor([-3.0, -2.0]), torch.tensor([-9.0, -7.0]), 0.7)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)


def test_xpo_loss_adds_the_optimism_term():
    model = attach_lora(tiny_model(), TrainConfig(lora_rank=4))
    pairs = _pairs(model, 3)
    sq, m = pair_loss(model, pairs, kind="square", beta=0.2)
    xpo, _ = pair_loss(model, pairs, kind="xpo", beta=0.2, alpha=0.5)
    assert float((xpo - sq).detach()) == pytest.approx(0.5 * m["logprob_y2"], rel=1e-4)
    with pytest.raises(SharpenError):
        pair_loss(model, pairs, kind="hinge", beta=0.2)


def test_held_out_metrics_by_hand():
    rows = [{"prompt_id": "a", "kind": "greedy", "correct": True, "logprob": -2.0, "logprob_base": -2.0,
             "num_tokens": 2, "finish_reason": "eos", "text": "x"},
            {"prompt_id": "a", "kind": "sample", "correct": False, "logprob": -3.0, "logprob_base": -5.0,
             "num_tokens": 3, "finish_reason": "eos", "text": "x"},
            {"prompt_id": "a", "kind": "sample", "correct": True, "logprob": -1.0, "logprob_base": -2.0,
             "num_tokens": 1, "finish_reason": "eos", "text": "x"},
            {"prompt_id": "a", "kind": "sample", "correct": False, "logprob": None, "logprob_base": -9.0,
             "num_tokens": 1, "finish_reason": "invalid", "text": "x"}]  # a broken sample is left out of J_beta
    m = held_out_metrics(rows, beta=0.5)
    # KL = mean(lp - lb) = (2 + 1) / 2; J = mean(lb) - beta * KL = -3.5 - 0.75
    assert m["kl"] == pytest.approx(1.5) and m["j_beta"] == pytest.approx(-4.25)
    assert m["j_beta"] == pytest.approx(float(j_beta_estimate(torch.tensor([-3.0, -1.0]),
                                                              torch.tensor([-5.0, -2.0]), 0.5)))
    assert m["accuracy"] == 1.0 and m["sample_accuracy"] == pytest.approx(1 / 3)
    assert j_beta_key(m) == m["j_beta"] and j_beta_key({"j_beta": None}) == float("-inf")


def test_unusable_pairs_are_kept_on_file_but_not_trained_on():
    assert usable({"base_y": -1.0, "base_y2": -2.0})
    assert not usable({"base_y": None, "base_y2": -2.0})
    assert not usable({"base_y": float("-inf"), "base_y2": -2.0})


def test_round_seeds_differ_from_the_base_samples_seed():
    seeds = {round_seed(0, t) for t in range(1, 50)} | {round_seed(1, t) for t in range(1, 50)}
    assert len(seeds) == 98 and 0 not in seeds and 1 not in seeds


def test_config_validation():
    for cfg in (DpoConfig(n=3), DpoConfig(n=0), DpoConfig(loss="hinge"), DpoConfig(beta=0.0),
                DpoConfig(eval_samples=0), XpoConfig(rounds=0), XpoConfig(alpha=-1.0), XpoConfig(pairs=0),
                XpoConfig(beta=float("nan"))):
        with pytest.raises(SharpenError):
            cfg.validate()
    assert XpoConfig(rounds=3, pairs=2).n == 6


def test_cli_has_every_option():
    from sharpen.cli import _build_parser

    parser = _build_parser()
    args = parser.parse_args(["xpo", "--rounds", "3", "--alpha", "0.01", "--lr", "1e-4"])
    assert (args.rounds, args.alpha, args.lr, args.beta, args.pairs) == (3, 0.01, 1e-4, 0.05, 1)
    args = parser.parse_args(["dpo", "--loss", "logistic", "--n", "4"])
    assert (args.loss, args.n, args.out) == ("logistic", 4, "runs/dpo")
    choices = parser._subparsers._group_actions[0].choices
    for cmd, flags in (("dpo", ["--n", "--loss", "--beta", "--from-run", "--eval-samples", "--epochs"]),
                       ("xpo", ["--rounds", "--pairs", "--alpha", "--beta", "--from-run", "--max-steps"])):
        text = choices[cmd].format_help()
        for f in flags:
            assert f in text, (cmd, f)


def _check_from_run(cfg):
    from sharpen import runs

    return runs.check_source_run(Path(cfg.from_run), "bon", {"task": cfg.task, "model": cfg.model, "chat": cfg.chat},
                                 cfg.n, temperature=1.0)


def test_from_run_checks(tmp_path):
    run = tmp_path / "bon"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    (run / "samples.jsonl").write_text("")
    opts = {"task": "game24", "model": "tiny-random", "chat": False, "n": 4, "temperature": 1.0}
    (run / "config.json").write_text(json.dumps({"command": "bon", "options": {**opts, "temperature": 0.7}}))
    with pytest.raises(SharpenError, match="temperature"):
        _check_from_run(DpoConfig(task="game24", model="tiny-random", from_run=str(run), n=4))
    (run / "config.json").write_text(json.dumps({"command": "bon", "options": opts}))
    with pytest.raises(SharpenError, match="needs 6"):
        _check_from_run(XpoConfig(task="game24", model="tiny-random", from_run=str(run), rounds=3, pairs=2))
    with pytest.raises(SharpenError, match="model"):
        _check_from_run(DpoConfig(task="game24", model="other", from_run=str(run), n=4))
    assert _check_from_run(DpoConfig(task="game24", model="tiny-random", from_run=str(run), n=4)) == opts


DATA = os.environ.get("SHARPEN_DATA_DIR")


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="needs SHARPEN_DATA_DIR")
def test_xpo_end_to_end_resumes_and_samples_from_the_current_policy(tmp_path, monkeypatch):
    import sharpen.stages.rlhf
    from sharpen.cli import main
    from sharpen.engine.scoring import score
    from sharpen.train.lora import load_adapter

    out = tmp_path / "xpo"
    argv = ["xpo", "--task", "game24", "--model", "tiny-random", "--rounds", "2", "--train-limit", "4",
            "--eval-limit", "2", "--max-new-tokens", "8", "--eval-samples", "2", "--epochs", "2",
            "--batch-size", "2", "--lr", "1e-2", "--clip", "1", "--data-dir", DATA, "--val-limit", "4",
            "--out", str(out)]
    # Interrupt round 2's training; the re-run redoes neither round 1 nor round 2's sampling.
    calls = {"n": 0}
    real = sharpen.stages.rlhf.pair_loss

    def crashing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # round 1: 4 steps; round 2 (8 pairs): step 2
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sharpen.stages.rlhf, "pair_loss", crashing)
    assert main(argv) == 130
    stamps = {p: (out / p).stat().st_mtime for p in ("bon/samples.jsonl", "round_1/metrics.jsonl",
                                                       "round_1/adapter/adapter_model.safetensors")}
    data = _lines(out / "xpo_data.jsonl")
    monkeypatch.setattr(sharpen.stages.rlhf, "pair_loss", real)
    assert main(argv) == 0
    assert stamps == {p: (out / p).stat().st_mtime for p in stamps}
    assert _lines(out / "xpo_data.jsonl") == data  # round 2's pairs were not redrawn
    for name in ("adapter/adapter_config.json", "summary.json", "report.md", "training_curves.png",
                 "eval_base.jsonl", "eval_sharpened.jsonl", "rounds.jsonl", "round_2/adapter/adapter_config.json"):
        assert (out / name).exists(), name
    s = json.loads((out / "summary.json").read_text())
    assert s["algorithm"] == "xpo" and [h["round"] for h in s["history"]] == [0, 1, 2]
    assert all(h["j_beta"] is not None for h in s["history"])
    assert s["training"]["best_round"] == max(s["history"], key=lambda h: h["j_beta"])["round"]
    assert [p["round"] for p in s["pairs"]] == [1, 2] and s["num_pairs"] == 8
    assert {"base", "sharpened", "j_beta", "table1"} <= set(s)
    # Round t's y was drawn from pi_t (round t-1's adapter), y' from pi_base: check by re-scoring.
    pool = {(r["prompt_id"], r["index"]): r for r in _lines(out / "bon" / "samples.jsonl")}
    pi_2 = load_adapter(tiny_model(), out / "round_1" / "adapter")
    for p in data:
        assert p["y2"] == pool[(p["prompt_id"], p["round"] - 1)]["token_ids"]
        if p["round"] == 2:
            assert p["logprob_y"] == pytest.approx(sum(score(pi_2, p["prompt_token_ids"], p["y"])), abs=1e-4)
            assert abs(p["logprob_y"] - p["base_y"]) > 1e-3  # ... and pi_2 is not pi_base
    report = (out / "report.md").read_text()
    assert "XPO" in report
    (out / "report.md").unlink()  # `sharpen report` rebuilds a dpo / xpo run's report from its files
    assert main(["report", str(out)]) == 0 and (out / "report.md").read_text() == report
    # The kept adapter evaluates through `sharpen eval` with the same numbers.
    assert main(["eval", "--model", "tiny-random", "--adapter", str(out / "adapter"), "--task", "game24",
                 "--limit", "2", "--max-new-tokens", "8", "--samples", "2", "--data-dir", DATA,
                 "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    for kind in ("greedy", "sample"):
        assert ev[kind]["mean_logprob_base"] == pytest.approx(s["sharpened"][kind]["mean_logprob_base"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="needs SHARPEN_DATA_DIR")
def test_dpo_end_to_end(tmp_path):
    from sharpen.cli import main

    out = tmp_path / "dpo"
    argv = ["dpo", "--task", "game24", "--model", "tiny-random", "--n", "4", "--train-limit", "4",
            "--eval-limit", "2", "--max-new-tokens", "8", "--eval-samples", "2", "--epochs", "2",
            "--batch-size", "4", "--eval-every", "2", "--lr", "1e-2", "--clip", "1", "--data-dir", DATA,
            "--no-valid-only", "--val-limit", "4", "--out", str(out)]
    assert main(argv) == 0
    for name in ("adapter/adapter_config.json", "pairs.jsonl", "summary.json", "report.md", "training_curves.png",
                 "eval_base.jsonl", "eval_sharpened.jsonl", "metrics.jsonl"):
        assert (out / name).exists(), name
    pairs = _lines(out / "pairs.jsonl")
    pool = {(r["prompt_id"], r["index"]): r for r in _lines(out / "bon" / "samples.jsonl")}
    assert len(pairs) == 8  # 4 prompts x n/2 disjoint pairs
    for i, p in enumerate(pairs):
        j = i % 2
        assert (p["y"], p["y2"]) == (pool[(p["prompt_id"], 2 * j)]["token_ids"],
                                     pool[(p["prompt_id"], 2 * j + 1)]["token_ids"])
        # the stored base log-prob is the engine's own (base) log-prob of the sample
        assert p["base_y"] == pytest.approx(pool[(p["prompt_id"], 2 * j)]["logprob"], abs=1e-4)
    s = json.loads((out / "summary.json").read_text())
    assert s["algorithm"] == "dpo" and s["loss"] == "square" and s["training"]["steps"] == 4
    assert [h["step"] for h in s["history"]] == [0, 2, 4]
    assert s["training"]["best_step"] == max(s["history"], key=lambda h: h["j_beta"])["step"]
    mtime = (out / "eval_sharpened.jsonl").stat().st_mtime
    assert main(argv) == 0  # finished: nothing redone
    assert (out / "eval_sharpened.jsonl").stat().st_mtime == mtime
    assert main([*argv[:-1], str(tmp_path / "x"), "--loss", "hinge"]) == 2
    assert main([*argv, "--loss", "logistic"]) == 2  # another loss: refuses to resume the same directory
    # The random control: the same pairs from the same pool, a coin's preference, beta 1, the last step kept
    coin = tmp_path / "coin"
    assert main([*argv[:-1], str(coin), "--from-run", str(out / "bon"), "--reward", "random", "--beta", "auto",
                 "--keep", "last"]) == 0
    flipped = _lines(coin / "pairs.jsonl")
    assert [(p["y"], p["y2"]) for p in flipped] == [(p["y"], p["y2"]) for p in pairs]
    assert all(sorted((p["reward_y"], p["reward_y2"])) == [0.0, 1.0] for p in flipped)
    s = json.loads((coin / "summary.json").read_text())
    assert s["reward"] == "random" and s["beta"] == 1.0 and s["training"]["best_step"] == 4
    assert all(h["j_beta"] == pytest.approx(0.5 - h["kl"]) for h in s["history"])  # E[coin] - beta KL


def test_kept_round_best_or_last():
    from sharpen.stages.rlhf import kept_round
    history = [{"round": 0, "j_beta": 1.0}, {"round": 1, "j_beta": 2.0}, {"round": 2, "j_beta": 2.0},
               {"round": 3, "j_beta": 0.5}, {"round": 4, "j_beta": 9.0, "guard_stop": "empty"}]
    assert kept_round(history, "best") == 1  # ties keep the earlier round; a guarded round never is kept
    assert kept_round(history, "last") == 3
    assert kept_round(history[:1], "last") == 0
