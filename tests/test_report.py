"""write_report on synthetic run directories: files written, markdown names them, interpretation follows data."""

import math

import numpy as np
import pytest

from sharpen import runs
from sharpen.errors import SharpenError
from sharpen.metrics import summarize
from sharpen.report.bon import reading, write_report

PLOTS = ("accuracy_vs_n.png", "logprob_hist.png", "selected_logprob_vs_n.png")


def make_run(tmp_path, likely_is_correct=True, n=8, num_prompts=40, seed=0):
    """A run where, per prompt, correctness is tied to log-prob (positively or negatively)."""
    rng = np.random.default_rng(seed)
    samples, greedy = [], []
    for p in range(num_prompts):
        for i in range(n):
            correct = bool(rng.random() < 0.4)
            shift = 10.0 if correct == likely_is_correct else 0.0
            samples.append({"prompt_id": f"p{p}", "index": i, "text": "t", "token_ids": [1, 2],
                            "logprob": float(rng.normal(-30 + shift, 2)), "num_tokens": int(rng.integers(5, 50)),
                            "finish_reason": "eos", "answer": "1" if correct else str(rng.integers(2, 9)),
                            "correct": correct})
        greedy.append({"prompt_id": f"p{p}", "index": 0, "text": "t", "token_ids": [1], "logprob": -15.0,
                       "num_tokens": 20, "finish_reason": "eos", "answer": "1", "correct": p % 5 < 2})
    samples[0]["logprob"] = math.nan  # stored as null, as the run store writes it
    runs.write_jsonl(tmp_path / "samples.jsonl", samples)
    runs.write_jsonl(tmp_path / "greedy.jsonl", greedy)
    runs.atomic_write_json(tmp_path / "config.json", {
        "command": "bon", "identity": {"task": "gsm8k"},
        "options": {"task": "gsm8k", "model": "tiny", "n": n, "seeds": 3, "temperature": 1.0}})
    summary = summarize(runs.load_jsonl(tmp_path / "samples.jsonl"), greedy, n=n, seeds=3)
    summary["task"], summary["model"] = "gsm8k", "tiny"
    runs.atomic_write_json(tmp_path / "summary.json", summary)
    return summary


def test_write_report_writes_markdown_and_plots(tmp_path):
    make_run(tmp_path)
    out = write_report(tmp_path)
    assert out == tmp_path / "report.md"
    md = out.read_text()
    for name in PLOTS:
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert "# Best-of-N with self-reward: gsm8k / tiny" in md
    assert "| logprob | " in md and "| greedy | " in md and "pass@k" in md
    assert "| temperature | `1.0` |" in md
    assert "invalid (NaN/+inf) log-probs: 1" in md
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes left no temp files


def test_reading_says_bon_helps_when_likelihood_tracks_correctness(tmp_path):
    summary = make_run(tmp_path, likely_is_correct=True)
    text = "\n".join(reading(summary))
    assert "vs greedy:** " in text and "better by" in text
    assert "which is what BoN exploits" in text


def test_reading_says_bon_hurts_when_likelihood_points_away(tmp_path):
    summary = make_run(tmp_path, likely_is_correct=False)
    text = "\n".join(reading(summary))
    assert "points *away* from correctness" in text
    assert "random, pass@1):** " in text and "worse by" in text


def test_report_without_greedy_or_config(tmp_path):
    make_run(tmp_path)
    (tmp_path / "config.json").unlink()
    summary = runs.read_json(tmp_path / "summary.json")
    summary["greedy"] = None
    for by_n in summary["selectors"].values():
        for st in by_n.values():
            st["lift_pct_mean"] = None
    runs.atomic_write_json(tmp_path / "summary.json", summary)
    md = write_report(tmp_path).read_text()
    assert "No greedy baseline" in md and "(config.json not found)" in md
    assert all((tmp_path / name).exists() for name in PLOTS)


def test_missing_summary_is_a_user_error(tmp_path):
    with pytest.raises(SharpenError, match="summary.json"):
        write_report(tmp_path)


def test_a_run_directory_written_before_intervals_and_confidences_still_reports(tmp_path):
    """summary.json of an older version: no intervals, no labels, no token budgets, pass@k at the subsampled N only."""
    s = make_run(tmp_path)
    for key in ("pass_at_k_ci", "self_reward_auroc", "adaptive_majority", "sample_accuracy_ci"):
        s.pop(key, None)
    s["pass_at_k"] = {k: v for k, v in s["pass_at_k"].items() if k in {str(n) for n in s["ns"]}}
    for k in ("accuracy_ci", "answer_rate", "response_tokens_per_prompt", "prompt_tokens_per_prompt"):
        s["greedy"].pop(k, None)
    for by_n in s["selectors"].values():
        for st in by_n.values():
            for k in ("accuracy_ci", "vs_greedy", "answer_rate", "response_tokens_per_prompt",
                      "prompt_tokens_per_prompt"):
                st.pop(k, None)
    runs.atomic_write_json(tmp_path / "summary.json", s)
    md = write_report(tmp_path).read_text()
    assert "| logprob | " in md and "n/a" in md and not (tmp_path / "accuracy_vs_tokens.png").exists()
    from sharpen.report.bon import format_table

    assert format_table(s).splitlines()[3].startswith("greedy")
