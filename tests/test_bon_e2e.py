"""One end-to-end `sharpen bon` on the embedded model: files, self-reward consistency, resume."""

import json

import pytest

from sharpen.cli import main
from sharpen.runs import load_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bon") / "run"
    argv = ["bon", "--task", "prontoqa", "--limit", "2", "--n", "3", "--seeds", "4", "--max-new-tokens", "24",
            "--chunk", "1", "--sample-dtype", "float32", "--out", str(out)]
    assert main(argv) == 0
    return out, argv


def test_files_and_fields(run_dir):
    out, _ = run_dir
    for name in ("config.json", "prompts.jsonl", "samples.jsonl", "greedy.jsonl", "summary.json", "report.md"):
        assert (out / name).exists(), name
    samples = load_jsonl(out / "samples.jsonl")
    assert len(samples) == 2 * 3 and len(load_jsonl(out / "greedy.jsonl")) == 2
    for r in samples:
        assert r["num_tokens"] == len(r["token_ids"]) >= 1
        assert r["finish_reason"] in ("eos", "stop", "length")
        assert r["finish_reason"] != "length" or r["num_tokens"] == 24
        assert r["logprob"] < 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["greedy"]["accuracy"] <= 1
    for sel in ("logprob", "logprob_mean", "majority", "random", "oracle"):
        for n in ("1", "2", "3"):
            assert 0 <= summary["selectors"][sel][n]["accuracy_mean"] <= 1
    # Best-of-N with self-reward never selects a less likely response than a single sample on average.
    assert summary["selectors"]["logprob"]["3"]["mean_logprob"] >= summary["selectors"]["random"]["3"]["mean_logprob"]
    for png in ("accuracy_vs_n.png", "logprob_hist.png"):
        assert png in (out / "report.md").read_text()


def test_logprob_is_the_teacher_forced_score(run_dir):
    from sharpen import load_model, score

    out, _ = run_dir
    prompts = {p["id"]: p["prompt_token_ids"] for p in load_jsonl(out / "prompts.jsonl")}
    row = load_jsonl(out / "samples.jsonl")[0]
    per_token = score(load_model(), prompts[row["prompt_id"]], row["token_ids"])
    assert sum(per_token) == pytest.approx(row["logprob"], abs=1e-3)


def test_rerun_recomputes_nothing(run_dir, monkeypatch):
    import sharpen.engine.generate as engine

    out, argv = run_dir
    before = (out / "samples.jsonl").read_bytes()

    def fail(*a, **k):
        raise AssertionError("a finished run sampled again")

    monkeypatch.setattr(engine, "sample", fail)
    monkeypatch.setattr(engine, "greedy", fail)
    assert main(argv) == 0
    assert (out / "samples.jsonl").read_bytes() == before
