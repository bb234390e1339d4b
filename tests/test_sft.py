"""SFT-sharpening: training-set construction, base-model scoring through a disabled adapter, Table 1, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sharpen.config import SftConfig, TrainConfig
from sharpen.engine.models import tiny_model
from sharpen.engine.scoring import score
from sharpen.errors import SharpenError
from sharpen.generation import base_logprobs
from sharpen.metrics import summarize_responses, table1
from sharpen.rows import complete_pools
from sharpen.stages.kit import accuracy_key as best_key
from sharpen.stages.sft import agreement, best_responses
from sharpen.train.lora import adapter_is_identity, attach_lora


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sample(pid: str, index: int, logprob: float, correct: bool = False, n_tok: int = 3) -> dict:
    return {"prompt_id": pid, "index": index, "text": f"{pid}-{index}", "token_ids": [10 + index] * n_tok,
            "logprob": logprob, "num_tokens": n_tok, "finish_reason": "eos", "answer": None, "correct": correct}


def test_best_responses_keeps_each_prompts_argmax():
    prompts = [{"id": "a", "prompt_token_ids": [1, 5]}, {"id": "b", "prompt_token_ids": [1, 6]},
               {"id": "c", "prompt_token_ids": [1, 7]}]
    samples = [_sample("a", 0, -5.0), _sample("a", 1, -2.0, True), _sample("a", 2, -1.0),  # index 2 >= n
               _sample("b", 1, -3.0), _sample("b", 0, -3.0),  # tie: the lowest index wins
               _sample("c", 0, -1.0)]  # incomplete pool: left out
    data = best_responses(prompts, complete_pools(samples, 2)[0], selector="logprob")
    assert [(d["prompt_id"], d["index"]) for d in data] == [("a", 1), ("b", 0)]
    assert data[0]["prompt_token_ids"] == [1, 5] and data[0]["token_ids"] == [11, 11, 11]
    assert data[0]["logprob"] == -2.0 and data[0]["correct"] is True


def test_best_responses_length_normalized_selector_differs():
    prompts = [{"id": "a", "prompt_token_ids": [1]}]
    samples = [_sample("a", 0, -4.0, n_tok=2), _sample("a", 1, -6.0, n_tok=6)]
    assert best_responses(prompts, complete_pools(samples, 2)[0], "logprob")[0]["index"] == 0
    assert best_responses(prompts, complete_pools(samples, 2)[0], "logprob_mean")[0]["index"] == 1


def _answered(pid: str, index: int, logprob: float, answer: str | None, text: str | None = None) -> dict:
    r = _sample(pid, index, logprob, correct=answer == "7")
    r["answer"] = answer
    if text is not None:  # same text, same tokens: a duplicate response
        r["text"], r["token_ids"] = text, [ord(c) for c in text]
    return r


def test_best_responses_per_prompt_takes_distinct_paths_of_the_picks_answer():
    prompts = [{"id": "a", "prompt_token_ids": [1]}]
    samples = [_answered("a", 0, -1.0, "5"), _answered("a", 1, -4.0, "7", "x"), _answered("a", 2, -3.0, "7"),
               _answered("a", 3, -2.0, "7", "x"), _answered("a", 4, -6.0, "7"), _answered("a", 5, -0.5, None)]
    pools = complete_pools(samples, 6)[0]
    # vote: the majority answer 7, its paths by the majority selector's order; index 1 duplicates index 3's text
    data = best_responses(prompts, pools, "majority", per_prompt=3)
    assert [d["index"] for d in data] == [3, 2, 4] and all(d["correct"] for d in data)
    assert [d["index"] for d in best_responses(prompts, pools, "majority", per_prompt=9)] == [3, 2, 4]
    # logprob among valid targets: the likeliest answered sample, and its answer has no other path
    assert [d["index"] for d in best_responses(prompts, pools, "logprob", valid_only=True, per_prompt=2)] == [0]
    # a pick without an answer gets no company (no answer is not an answer to share)
    assert [d["index"] for d in best_responses(prompts, pools, "logprob", per_prompt=3)] == [5]
    assert [d["index"] for d in best_responses(prompts, pools, "majority")] == [3]


def test_best_responses_min_agreement_drops_unsure_prompts():
    prompts = [{"id": "a", "prompt_token_ids": [1]}, {"id": "b", "prompt_token_ids": [2]}]
    samples = [_answered("a", i, -1.0 - i, a) for i, a in enumerate(["7", "7", "7", "5"])]
    samples += [_answered("b", i, -1.0 - i, a) for i, a in enumerate(["7", "3", None, None])]
    pools = complete_pools(samples, 4)[0]
    assert agreement(pools["a"]) == 0.75 and agreement(pools["b"]) == 0.25  # shares of all n samples
    assert agreement([_answered("c", 0, -1.0, None)]) == 0.0
    assert [d["prompt_id"] for d in best_responses(prompts, pools, "majority", min_agreement=0.5)] == ["a"]
    assert [d["prompt_id"] for d in best_responses(prompts, pools, "majority", min_agreement=0.25)] == ["a", "b"]
    assert best_responses(prompts, pools, "majority", min_agreement=0.8) == []


def test_sft_per_prompt_options_checked_and_kept_out_of_old_identities():
    with pytest.raises(SharpenError, match="--min-agreement"):
        SftConfig(min_agreement=1.5).validate()
    with pytest.raises(SharpenError, match="per.prompt"):
        SftConfig(per_prompt=0).validate()
    assert "per_prompt" not in SftConfig().identity() and "min_agreement" not in SftConfig().identity()
    assert SftConfig(per_prompt=4, min_agreement=0.5).identity()["per_prompt"] == 4


def test_base_logprobs_switch_the_adapter_off():
    cfg = TrainConfig(lora_rank=4)
    model = attach_lora(tiny_model(), cfg)
    assert adapter_is_identity(model.module)
    with torch.no_grad():
        for n, p in model.module.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    assert not adapter_is_identity(model.module)
    prompts, responses = [[1, 20, 21], [1, 30]], [[40, 41, 2], [50, 2]]
    base = [sum(t) for t in score(tiny_model(), prompts, responses)]
    adapted = [sum(t) for t in score(model, prompts, responses)]
    assert base_logprobs(model, prompts, responses) == pytest.approx(base, abs=1e-5)
    assert all(abs(a - b) > 1e-3 for a, b in zip(adapted, base, strict=True))
    assert base_logprobs(tiny_model(), prompts, responses) == pytest.approx(base, abs=1e-5)


def test_engine_samples_from_the_adapted_model():
    from sharpen.engine.generate import greedy

    model = attach_lora(tiny_model(), TrainConfig(lora_rank=4))
    with torch.no_grad():
        for n, p in model.module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    prompt = [[1, 20, 21, 22]]
    ours = greedy(model, prompt, max_new_tokens=8)[0]
    assert ours.token_ids != greedy(tiny_model(), prompt, max_new_tokens=8)[0].token_ids
    assert ours.logprob == pytest.approx(sum(score(model, prompt[0], ours.token_ids)), abs=1e-4)


def test_summaries_and_table1_by_hand():
    rows = [{"prompt_id": "a", "kind": "greedy", "correct": True, "logprob_base": -2.0, "logprob": -2.0,
             "num_tokens": 4, "finish_reason": "eos", "text": "a"},
            {"prompt_id": "b", "kind": "greedy", "correct": False, "logprob_base": -4.0, "logprob": -4.0,
             "num_tokens": 6, "finish_reason": "length", "text": "b"},
            {"prompt_id": "a", "kind": "sample", "correct": True, "logprob_base": float("-inf"), "logprob": -1.0,
             "num_tokens": 2, "finish_reason": "eos", "text": "c"}]
    st = summarize_responses(rows)
    assert st["greedy"]["accuracy"] == 0.5 and st["greedy"]["mean_logprob_base"] == -3.0
    assert st["greedy"]["truncated_fraction"] == 0.5 and st["sample"]["mean_logprob_base"] is None
    # No "answer" extracted in these rows: the most common answer is None, given by every response.
    assert st["greedy"]["top_answer"] is None and st["greedy"]["top_answer_fraction"] == 1.0
    base = {"greedy": {"accuracy": 0.5, "mean_logprob_base": -3.0}}
    sharp = {"sample": {"accuracy": 0.6, "mean_logprob_base": -1.0},
             "greedy": {"accuracy": 0.4, "mean_logprob_base": -2.5}}
    t = table1(base, sharp)
    assert t["sample"]["accuracy_lift_pct"] == pytest.approx(20.0)
    assert t["sample"]["likelihood_lift"] == pytest.approx(2.0)
    assert t["greedy"]["accuracy_lift_pct"] == pytest.approx(-20.0)
    assert "sample_vs_base_sample" not in t  # no base samples to compare with


def test_top_answer_shows_a_collapse_to_one_answer():
    from sharpen.metrics import top_answer
    from sharpen.report.kit import responses_table

    rows = [{"answer": a} for a in ("True", "True", "False", None, "True")]
    assert top_answer(rows) == {"top_answer": "True", "top_answer_fraction": 0.6}
    st = {"accuracy": 0.5, "mean_logprob_base": -3.0, "mean_num_tokens": 5.0, "truncated_fraction": 0.0,
          "num_prompts": 5, **top_answer(rows)}
    lines = responses_table([("sharpened greedy", st), ("absent", None)])
    # stats without an interval or answer rate (a run made before they were stored) show n/a there
    assert len(lines) == 3 and "| sharpened greedy | 50.0 | n/a | -3.00 | 5.0 | 0.0 | True (60.0%) | 5 |" == lines[2]
    st.update(accuracy_ci=[0.25, 0.75], answer_rate=0.8)
    assert responses_table([("x", st)])[2].startswith("| x | 50.0 [25.0, 75.0] | 80.0 | -3.00 |")


def test_collapse_warnings_name_empty_responses_and_one_answer():
    from sharpen.metrics import summarize_responses
    from sharpen.report.kit import collapse_warnings

    def row(kind, text, answer):
        return {"prompt_id": text + answer if answer else text, "kind": kind, "correct": False, "text": text,
                "answer": answer, "logprob_base": -1.0, "logprob": -1.0, "num_tokens": 1, "finish_reason": "eos"}

    empty = summarize_responses([row("greedy", "", None)] * 3 + [row("greedy", " True.", "True")])
    assert empty["greedy"]["empty_fraction"] == 0.75
    (w,) = collapse_warnings(empty)
    assert "75% of the sharpened greedy responses are empty" in w
    same = summarize_responses([row("sample", " True.", "True")] * 4 + [row("sample", " False", "False")])
    (w,) = collapse_warnings(same)
    assert "80% of the sharpened sample responses give the same answer (True)" in w
    looped = summarize_responses([{**row("greedy", " Every" * 8, None), "finish_reason": "length"}] * 2)
    (w,) = collapse_warnings(looped)
    assert "100% of the sharpened greedy responses hit the token limit" in w
    (w,) = collapse_warnings(summarize_responses([row("greedy", " maybe", None)] * 5))
    assert "100% of the sharpened greedy responses have no answer" in w
    mixed = summarize_responses([row("greedy", " True.", "True"), row("greedy", " False.", "False")])
    assert collapse_warnings(mixed) == []


def test_best_key_prefers_accuracy_then_likelihood():
    a = best_key({"accuracy": 0.5, "logprob_base": -10.0})
    b = best_key({"accuracy": 0.5, "logprob_base": -3.0})
    c = best_key({"accuracy": 0.6, "logprob_base": None})
    assert a < b < c


def test_config_validation():
    for kw in (dict(n=0), dict(selector="best"), dict(train_limit=0), dict(temperature=0.0)):
        with pytest.raises(SharpenError):
            SftConfig(**kw).validate()


def test_cli_has_every_option_with_the_papers_defaults():
    from sharpen.cli import _build_parser

    args = _build_parser().parse_args(["sft", "--task", "prontoqa", "--out", "x"])
    assert (args.n, args.selector, args.lora_rank, args.lr, args.clip, args.batch_size) == \
        (50, "logprob", 16, 3e-4, 0.1, 4)
    assert (args.temperature, args.epochs, args.grad_accum, args.train_on_eval) == (1.0, 30, 1, False)
    flags = ["--n", "--selector", "--train-limit", "--eval-limit", "--epochs", "--batch-size", "--lr",
             "--lora-rank", "--weight-decay", "--max-new-tokens", "--eval-every", "--grad-accum", "--from-run",
             "--train-on-eval", "--merge"]
    help_text = _build_parser()._subparsers._group_actions[0].choices["sft"].format_help()
    for f in flags:
        assert f in help_text, f
    args = _build_parser().parse_args(["eval", "--model", "tiny-random", "--adapter", "a", "--task", "gsm8k"])
    assert args.adapter == "a" and args.samples == 1


def _check(cfg):
    from sharpen import runs

    return runs.check_source_run(Path(cfg.from_run), "bon", {"task": cfg.task, "model": cfg.model, "chat": cfg.chat},
                                 cfg.n)


def test_from_run_refuses_another_models_samples(tmp_path):

    run = tmp_path / "bon"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    (run / "samples.jsonl").write_text("")
    (run / "config.json").write_text(json.dumps({"command": "bon", "options": {
        "task": "prontoqa", "model": "other", "chat": False, "n": 8}}))
    with pytest.raises(SharpenError, match="model"):
        _check(SftConfig(task="prontoqa", model="tiny-random", from_run=str(run), n=4))
    with pytest.raises(SharpenError, match="--n"):
        _check(SftConfig(task="prontoqa", model="other", from_run=str(run), n=16))
    assert _check(SftConfig(task="prontoqa", model="other", from_run=str(run), n=8))["n"] == 8


DATA = os.environ.get("SHARPEN_DATA_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="needs SHARPEN_DATA_DIR")
def test_sft_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    import sharpen.stages.sft
    from sharpen.cli import main

    out = tmp_path / "sft"
    argv = ["sft", "--model", "tiny-random", "--task", "prontoqa", "--n", "4", "--train-limit", "8",
            "--eval-limit", "4", "--epochs", "2", "--max-new-tokens", "24", "--eval-every", "2",
            "--out", str(out), "--data-dir", DATA, "--merge", "--no-valid-only", "--val-limit", "4"]
    # An interruption in step 3 (after the step-2 checkpoint); the re-run resumes without resampling.
    calls = {"n": 0}
    real_loss = sharpen.stages.sft.sft_batch_loss

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_loss(model, batch)

    monkeypatch.setattr(sharpen.stages.sft, "sft_batch_loss", crashing_loss)
    assert main(argv) == 130
    sampled = (out / "bon" / "samples.jsonl").stat().st_mtime
    monkeypatch.setattr(sharpen.stages.sft, "sft_batch_loss", real_loss)
    assert main(argv) == 0
    assert (out / "bon" / "samples.jsonl").stat().st_mtime == sampled
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 2, 3, 4, 4]  # eval at 0, 2, 4 and one row per optimizer step
    for name in ("sft_data.jsonl", "eval_base.jsonl", "eval_sharpened.jsonl", "metrics.jsonl", "summary.json",
                 "report.md", "training_curves.png", "adapter/adapter_config.json", "bon/samples.jsonl",
                 "merged/config.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train_prompts"] == 8 and summary["num_eval_prompts"] == 4
    assert summary["protocol"] == "held-out" and summary["train_eval_overlap"] == 0
    assert summary["training"]["steps"] == 4
    assert set(summary["table1"]) == {"sample", "greedy", "sample_vs_base_sample"}
    data = [json.loads(x) for x in (out / "sft_data.jsonl").read_text().splitlines()]
    samples = [json.loads(x) for x in (out / "bon" / "samples.jsonl").read_text().splitlines()]
    for d in data:  # each target is its prompt's highest-log-prob sample
        pool = [s for s in samples if s["prompt_id"] == d["prompt_id"]]
        assert d["logprob"] == max(s["logprob"] for s in pool)
    report = (out / "report.md").read_text()
    assert "Protocol: held-out" in report and "Table 1" in report and "most common answer" in report
    (out / "report.md").unlink()  # `sharpen report` rebuilds an sft run's report from its files
    assert main(["report", str(out)]) == 0 and (out / "report.md").read_text() == report
    # Re-running the finished command redoes nothing and gives the same summary.
    mtime = (out / "eval_sharpened.jsonl").stat().st_mtime
    assert main(argv) == 0
    assert (out / "eval_sharpened.jsonl").stat().st_mtime == mtime
    assert json.loads((out / "summary.json").read_text())["sharpened"] == summary["sharpened"]
    # The adapter evaluates through `sharpen eval`, and its base log-probs match the run's.
    assert main(["eval", "--model", "tiny-random", "--adapter", str(out / "adapter"), "--task", "prontoqa",
                 "--limit", "4", "--max-new-tokens", "24", "--data-dir", DATA, "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["greedy"]["accuracy"] == summary["sharpened"]["greedy"]["accuracy"]
    assert ev["greedy"]["mean_logprob_base"] == pytest.approx(summary["sharpened"]["greedy"]["mean_logprob_base"],
                                                              abs=1e-3)



def test_base_from_reuses_another_runs_base_rows_and_refuses_another_setting(tmp_path, capsys):
    """--base-from copies the base evaluation rows of a run with the same model, items, evaluation options and
    seed (here a vote-reward run starting from a logprob-reward run), and refuses one that differs."""
    from sharpen.cli import main

    common = ["--model", "tiny-random", "--task", "arith", "--n", "2", "--train-limit", "4", "--eval-limit", "2",
              "--val-limit", "2", "--epochs", "1", "--max-new-tokens", "8", "--no-valid-only", "--eval-samples", "2"]
    first = tmp_path / "first"
    assert main(["sft", *common, "--out", str(first)]) == 0
    # Marked rows: what the second run evaluates shows whether it copied them or computed its own.
    for name in ("eval_base.jsonl", "val_base.jsonl"):
        rows = [json.loads(x) for x in (first / name).read_text().splitlines()]
        (first / name).write_text("".join(json.dumps({**r, "text": "copied " + r["text"]}) + "\n" for r in rows))
    second = tmp_path / "second"
    assert main(["sft", *common, "--reward", "vote", "--keep", "last", "--base-from", str(first),
                 "--out", str(second)]) == 0
    for name in ("eval_base.jsonl", "val_base.jsonl"):
        assert (second / name).read_text() == (first / name).read_text()
    assert all(r["text"].startswith("copied ") for r in map(json.loads, (second / "eval_base.jsonl").open()))
    capsys.readouterr()
    other = [*common[:-1], "3"]  # --eval-samples 3: other base rows
    assert main(["sft", *other, "--base-from", str(first), "--out", str(tmp_path / "third")]) == 2
    err = capsys.readouterr().err
    assert "eval_samples=2" in err and "eval_samples=3" in err and "drop --base-from" in err
    # --min-agreement reaches the training set: no prompt of this random model has an answer both samples give.
    assert main(["sft", *common, "--min-agreement", "1", "--out", str(tmp_path / "unsure")]) == 2
    assert "no training prompt reaches --min-agreement 1.0" in capsys.readouterr().err
    assert not (tmp_path / "third" / "eval_base.jsonl").exists()
    assert main(["sft", *common, "--base-from", str(first / "bon"), "--out", str(tmp_path / "fourth")]) == 2
    assert "not an sft, dpo, xpo or grpo" in capsys.readouterr().err


def test_report_names_the_target_options_only_when_set():
    from sharpen.report.sft import _target_options

    assert _target_options({"per_prompt": 1, "min_agreement": 0.0}) == "" and _target_options({}) == ""
    line = _target_options({"per_prompt": 4, "examples": 230, "min_agreement": 0.5, "prompts_with_target": 63,
                            "prompts_sampled": 128})
    assert "up to 3 more" in line and "230 examples" in line and "63 of 128 prompts" in line and "50%" in line
