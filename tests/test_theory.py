"""Theory lab: the synthetic problem is what the docstring says, and a tiny run writes sane files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sharpen.errors import SharpenError
from sharpen.stages.theory import METHODS, coverage_coefficient, make_prompts, make_theta0, run_theory
from sharpen.train.losses import sharpened_distribution

TINY = dict(n_seeds=2, n_train=16, n_val=8, n_test=32, n_responses=64, budgets=(1, 4, 16, 64),
            xpo_budgets=(2, 4), steps=40, xpo_steps=10)


def test_coverage_coefficient_hand_value():
    uniform = torch.full((3, 4), 0.25).log()
    peaked = torch.tensor([[0.5, 0.25, 0.25]]).log()
    assert coverage_coefficient(uniform) == pytest.approx(4.0)
    assert coverage_coefficient(peaked) == pytest.approx(2.0)


def test_problem_has_a_rare_argmax_with_the_requested_gap():
    gen = torch.Generator().manual_seed(0)
    theta0 = make_theta0(dim=6, spread=0.3, gen=gen)
    prompts = make_prompts(theta0, n_prompts=20, n_responses=100, gap=0.5, max_rank=10, gen=gen)
    logp = prompts.logp(theta0)  # (P, K)
    rows = torch.arange(20)
    assert torch.equal(logp.argmax(-1), prompts.y_star)
    top2 = logp.topk(2, dim=-1).values
    torch.testing.assert_close(top2[:, 0] - top2[:, 1], torch.full((20,), 0.5))
    # the rare feature is on y* only, and without it y* is not the argmax (rank in [1, max_rank))
    rare = prompts.phi[..., -1]
    assert (rare[rows, prompts.y_star] != 0).all() and (rare != 0).sum() == 20
    shared_rank = (prompts.phi[..., :-1] @ theta0[:-1]).argsort(-1, descending=True).argsort(-1)[rows, prompts.y_star]
    assert ((shared_rank >= 1) & (shared_rank < 10)).all()
    # realizability: pi_base^(1+1/beta)/Z is the class member with parameters (1+1/beta) * theta0
    beta = 0.25
    torch.testing.assert_close(sharpened_distribution(logp.exp(), beta), prompts.logp((1 + 1 / beta) * theta0).exp(),
                               atol=1e-5, rtol=1e-4)


def test_tiny_run_writes_json_and_png(tmp_path):
    res = run_theory(tmp_path, **TINY)
    on_disk = json.loads((tmp_path / "theory.json").read_text())
    assert on_disk["summary"] == res["summary"]
    assert (tmp_path / "theory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("config", "seeds", "coverage", "sft_predicted_samples", "base_success", "closed_form_success",
                "methods", "per_seed", "reached_target", "summary", "seconds"):
        assert key in on_disk
    assert on_disk["seeds"] == [0, 1]
    assert on_disk["sft_predicted_samples"] == pytest.approx(on_disk["coverage"] / (1 - on_disk["config"]["target"]))
    assert on_disk["coverage"] > 1
    for key in METHODS:
        for stat in ("mean", "std"):
            for curve in (on_disk["methods"][key][stat], on_disk["methods"][f"{key}_sharpened"][stat]):
                n = len(TINY["xpo_budgets"] if key.startswith("xpo") else TINY["budgets"])
                assert len(curve) == n
                assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in curve)


def test_sft_improves_with_budget_and_summary_follows_the_numbers(tmp_path):
    res = run_theory(tmp_path, **TINY)
    for key in ("sft", "sft_tabular"):
        mean = res["methods"][key]["mean"]
        assert mean[-1] > mean[0] + 0.2, (key, mean)
    # the summary states what the numbers say, whichever way it goes
    for key, label in (("sft", "SFT-Sharpening"), ("xpo", "XPO")):
        reached = res["reached_target"][key]
        text = f"{label} at {reached} samples/prompt" if reached is not None else f"{label} not within"
        assert text in res["summary"]


def test_same_seed_same_numbers(tmp_path):
    a = run_theory(tmp_path / "a", **{**TINY, "n_seeds": 1})
    b = run_theory(tmp_path / "b", **{**TINY, "n_seeds": 1})
    assert a["methods"] == b["methods"]


def test_bad_settings_raise_one_line_errors(tmp_path):
    with pytest.raises(SharpenError, match="even"):
        run_theory(tmp_path, **{**TINY, "xpo_budgets": (3,)})
    with pytest.raises(SharpenError, match="dim"):
        run_theory(tmp_path, **{**TINY, "dim": 1})
